"""Helpers of the end-to-end tests: run a real vLLM engine in its own process, read its log."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from moe_profiler.reading import routes

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("e2e_driver.py")
NUM_LAYERS, NUM_EXPERTS, TOP_K = 3, 8, 3  # top_k 3: nothing may assume Qwen's 4
# Folders put before the repo on every engine's PYTHONPATH: the pip-installed plugin where
# the logger comes from it (the `patched` fixture of conftest.py sets it).
ENGINE_PATHS: list[str] = []


def engine_pythonpath(*first: str | Path) -> str:
    """PYTHONPATH of an engine process: ``first``, then ENGINE_PATHS, then the repo."""
    return os.pathsep.join([*map(str, first), *ENGINE_PATHS, str(REPO)])


def engine(tmp: Path, spec: dict, log_env: dict | None = None, background=False):
    """Run the driver; returns (records, completed process) or the running Popen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOG_MOE")}
    env.update(
        {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": engine_pythonpath(), **(log_env or {})}
    )
    spec_file, out_file = tmp / f"spec-{time.time_ns()}.json", tmp / f"out-{time.time_ns()}.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, str(DRIVER), str(spec_file), str(out_file)]
    if background:
        return subprocess.Popen(cmd, env=env, cwd=tmp, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=900)
    records = json.loads(out_file.read_text()) if out_file.exists() else None
    return records, proc


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started (vLLM's engine core and workers outlive
    a killed front end on some releases, each holding gigabytes)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in [*children, proc]:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            child.kill()
    proc.wait(timeout=60)


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


def route_totals(got: list[routes.Route], layers: list[int]) -> dict:
    """What counts mode should hold for these route lines: per logged layer and expert,
    tokens and weight sums; tokens and prompt tokens (each token once, at its first layer)."""
    import numpy as np

    counts = np.zeros((len(layers), NUM_EXPERTS), dtype=np.int64)
    sums = np.zeros((len(layers), NUM_EXPERTS))
    for r in got:
        np.add.at(counts[layers.index(r.layer)], r.experts, 1)
        np.add.at(sums[layers.index(r.layer)], r.experts, r.weights)
    first = [r for r in got if r.layer == layers[0]]
    return {
        "counts": counts.tolist(),
        "weight_sums": sums,
        "tokens": len(first),
        "prefill_tokens": sum(bool(r.prefill) for r in first),
    }


def window_totals(path: Path) -> tuple[dict, dict]:
    """A counts-mode log's header, and its windows summed like ``route_totals``."""
    import numpy as np

    routes.wait_until_complete(path, timeout=120)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[-1]["type"] == "end" and not [r for r in lines if r["type"] == "route"]
    windows = [r for r in lines if r["type"] == "counts"]
    assert windows, "no counts window was written"
    return lines[0], {
        "counts": np.sum([w["counts"] for w in windows], axis=0).tolist(),
        "weight_sums": np.sum([w["weight_sums"] for w in windows], axis=0),
        "tokens": sum(w["tokens"] for w in windows),
        "prefill_tokens": sum(w["prefill_tokens"] for w in windows),
    }


def assert_counts_equal_routes(counted: dict, expected: dict) -> None:
    """Counts equal the route lines' token for token; weight sums to the lines' 6 decimals."""
    import numpy as np

    assert counted["counts"] == expected["counts"]
    assert (counted["tokens"], counted["prefill_tokens"]) == (
        expected["tokens"],
        expected["prefill_tokens"],
    )
    assert np.allclose(counted["weight_sums"], expected["weight_sums"], atol=1e-3, rtol=1e-5)
