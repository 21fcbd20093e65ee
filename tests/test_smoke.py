"""./test.sh --smoke: the whole pipeline offline, on real vLLM (CPU build here)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from moe_profiler import routes

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


def test_smoke_pipeline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOG_MOE")}
    env.update(SMOKE_OUT=str(tmp_path), VLLM_CPU_KVCACHE_SPACE="1")
    out = subprocess.run(
        ["bash", "test.sh", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for heading in (
        "checks",
        "tiny model",
        "patch vLLM (apply_hook.py)",
        "generate without the log",
        "generate with the log",
        "histogram (plot_experts.py)",
        "done",
    ):
        assert f"== {heading}" in out.stdout
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert set(timing["runs"]) == {"no_log", "log"}
    assert timing["greedy_outputs_match"] is True
    assert isinstance(timing["log_overhead_pct"], float)
    assert timing["setup"]["prompts"] == 25 and timing["setup"]["max_tokens"] == 16
    summary = json.loads((tmp_path / "expert_summary.json").read_text())
    outputs = [json.loads(line) for line in (tmp_path / "outputs_log.jsonl").open()]
    computed = sum(
        len(o["prompt_token_ids"]) - o["num_cached_tokens"] + len(o["token_ids"]) - 1
        for o in outputs
    )
    log = routes.LogFile(
        tmp_path / "moe_routes.jsonl", routes.read_header(tmp_path / "moe_routes.jsonl")
    )
    timed = {o["request_id"] for o in outputs}
    per_request = [r for r in routes.iter_routes(log) if r.request in timed]
    assert len(per_request) == computed * 2  # 2 layers; prefix-cached prompt tokens excluded
    assert summary["complete"] and list(summary["layers"]) == ["0", "1"]
    assert (tmp_path / "expert_hist.png").stat().st_size > 20_000
    assert "overhead of logging:" in out.stdout
