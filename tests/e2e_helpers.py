"""Helpers of the end-to-end tests: run a real vLLM engine in its own process, read its log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from moe_profiler import routes

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("e2e_driver.py")
NUM_LAYERS, NUM_EXPERTS, TOP_K = 3, 8, 3  # top_k 3: nothing may assume Qwen's 4


def engine(tmp: Path, spec: dict, log_env: dict | None = None, background=False):
    """Run the driver; returns (records, completed process) or the running Popen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOG_MOE")}
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO), **(log_env or {})})
    spec_file, out_file = tmp / f"spec-{time.time_ns()}.json", tmp / f"out-{time.time_ns()}.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, str(DRIVER), str(spec_file), str(out_file)]
    if background:
        return subprocess.Popen(cmd, env=env, cwd=tmp, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=900)
    records = json.loads(out_file.read_text()) if out_file.exists() else None
    return records, proc


def read_log(path: Path) -> tuple[routes.LogFile, list[routes.Route]]:
    routes.wait_until_complete(path, timeout=120)
    log = routes.LogFile(path, routes.read_header(path))
    return log, list(routes.iter_routes(log, strict=True))


def expected_positions(record: dict) -> list[int]:
    """Positions that went through the model: prompt (minus cached) and all outputs but the last."""
    total = len(record["prompt_token_ids"]) + len(record["token_ids"]) - 1
    return list(range(record["num_cached_tokens"], total))


def assert_one_line_per_token_and_layer(
    records, got, layers, top_k: int = TOP_K, num_experts: int = NUM_EXPERTS
):
    seen = Counter((r.request, r.pos, r.layer) for r in got)
    expected = Counter(
        (rec["request_id"], pos, layer)
        for rec in records
        for pos in expected_positions(rec)
        for layer in layers
    )
    assert seen == expected
    for r in got:
        assert len(r.experts) == top_k == len(set(r.experts))
        assert all(0 <= e < num_experts for e in r.experts)


def hf_router_topk(model_dir: Path, records: list[dict]) -> tuple[dict, dict]:
    """Top-k expert ids and softmax weights of transformers' router logits, per request."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids, weights = {}, {}
    with torch.no_grad():
        for rec in records:
            out = model(torch.tensor([rec["prompt_token_ids"]]), output_router_logits=True)
            logits = torch.stack([x.reshape(-1, NUM_EXPERTS) for x in out.router_logits], dim=1)
            probs = torch.softmax(logits.float(), dim=-1)
            top = torch.topk(probs, TOP_K, dim=-1)
            ids[rec["request_id"]] = top.indices.numpy()
            weights[rec["request_id"]] = top.values.numpy()
    return ids, weights
