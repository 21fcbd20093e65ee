"""./test.sh --smoke as a newcomer runs it: a clean copy of the repo, no vLLM on PATH.

The copy holds exactly the files git tracks (what a clone holds). The test runs it
with a PATH stripped of the test environment, so ``python3`` is the machine's own
interpreter without vLLM: test.sh must find the cached CPU environment itself
(tools/cpu_env.sh, the one bash .ci/run just built) and do the whole job.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe_profiler.reading import routes

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


def clean_copy(dest: Path) -> Path:
    """The tracked files of the working tree (with their uncommitted edits), as a clone has."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


def newcomer_env() -> dict[str, str]:
    """The environment minus the test venv: python3 is the machine's, without vLLM."""
    venv = os.environ.get("VIRTUAL_ENV") or sys.prefix
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(venv)]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VLLM_LOG_MOE", "PYTHON", "VIRTUAL_ENV", "SMOKE_OUT"))
    }
    env.update(PATH=os.pathsep.join(path), VLLM_CPU_KVCACHE_SPACE="1")
    return env


def test_smoke_from_a_clean_copy_without_vllm(tmp_path):
    repo = clean_copy(tmp_path / "clone")
    env = newcomer_env()
    probe = subprocess.run(
        ["python3", "-c", "import vllm"], env=env, capture_output=True, cwd=tmp_path
    )
    assert probe.returncode != 0, "python3 on the stripped PATH still imports vLLM"
    out = subprocess.run(
        ["./test.sh", "--smoke"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "using the cached CPU environment that bash .ci/run uses" in out.stdout
    for heading in (
        "checks",
        "CPU environment (tools/cpu_env.sh)",
        "tiny model",
        "patch vLLM (apply_hook.py)",
        "generate without the log",
        "generate with the log",
        "histogram (plot_experts.py)",
        "done",
    ):
        assert f"== {heading}" in out.stdout
    smoke = repo / "smoke-out"
    timing = json.loads((smoke / "timing.json").read_text())
    assert set(timing["runs"]) == {"no_log", "log"}
    assert timing["greedy_outputs_match"] is True
    assert isinstance(timing["log_overhead_pct"], float)
    assert timing["setup"]["prompts"] == 25 and timing["setup"]["max_tokens"] == 16
    summary = json.loads((smoke / "expert_summary.json").read_text())
    assert summary["model_name"] == "tiny-moe"  # the figure's title: never a local path
    outputs = [json.loads(line) for line in (smoke / "outputs_log.jsonl").open()]
    computed = sum(
        len(o["prompt_token_ids"]) - o["num_cached_tokens"] + len(o["token_ids"]) - 1
        for o in outputs
    )
    log_path = smoke / "moe_routes.jsonl"
    log = routes.LogFile(log_path, routes.read_header(log_path))
    timed = {o["request_id"] for o in outputs}
    per_request = [r for r in routes.iter_routes(log) if r.request in timed]
    assert len(per_request) == computed * 2  # 2 layers; prefix-cached prompt tokens excluded
    assert summary["complete"] and list(summary["layers"]) == ["0", "1"]
    assert (smoke / "expert_hist.png").stat().st_size > 20_000
    assert "overhead of logging:" in out.stdout
