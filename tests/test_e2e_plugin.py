"""vLLM 0.15.1 two ways: the patched vLLM and the pip-installed plugin on a pristine copy of
the same vLLM write the same log for the same run (vLLM's defaults: torch.compile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_helpers import NUM_LAYERS, engine, engine_pythonpath

pytestmark = pytest.mark.e2e

# header fields that differ between any two runs, whoever logs
PER_RUN = ("created", "pid", "writer_pid", "log_path")
# trailer fields that time the run or count its passes (batching varies from run to run)
TIMINGS = ("steps", "engine_wait_s", "end_step_s", "drain_cpu_s", "writer_cpu_s",
           "writer_buffer_peak_mb")  # fmt: skip


def log_content(path: Path) -> dict:
    """What a log says about a run, whatever its batching: the header and trailer but for
    what differs from run to run, each request's prompt length, and each (request, position,
    layer)'s token id, experts and weights. Request ids lose the random suffix vLLM adds;
    how tokens were batched into passes (``step``, ``token``) is the scheduler's, not the
    logger's, and differs between two runs of the same prompts."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    header, trailer = lines[0], lines[-1]
    routes, prompt_lens = {}, {}
    for line in lines[1:-1]:
        request = line["req_id"].rsplit("-", 1)[0]
        if line["type"] == "request":
            prompt_lens[request] = line["prompt_len"]
        else:
            key = (request, line["pos"], line["layer"])
            assert key not in routes, f"{key} logged twice"
            routes[key] = (line["tok"], line["experts"], line["weights"])
    return {
        "header": {k: v for k, v in header.items() if k not in PER_RUN},
        "trailer": {k: v for k, v in trailer.items() if k not in TIMINGS},
        "prompt_lens": prompt_lens,
        "routes": routes,
    }


def test_the_patch_and_the_plugin_write_the_same_log_for_the_same_run(
    tiny_model, questions, tmp_path, patched, pristine_vllm, plugin_site
):
    spec = {"model": str(tiny_model), "prompts": questions[:6], "max_tokens": 8}
    env = {"VLLM_LOG_MOE_LAYER": "all", "VLLM_LOG_MOE_REQ_ID": "same-run"}
    logs, records = {}, {}
    for name, first in (("patch", []), ("plugin", [pristine_vllm])):
        (tmp_path / name).mkdir()
        logs[name] = tmp_path / name / "moe.jsonl"
        # the plugin is installed in both runs: on the patched vLLM it must stand aside
        pythonpath = engine_pythonpath(*first, plugin_site)
        records[name], proc = engine(
            tmp_path / name,
            spec,
            {**env, "VLLM_LOG_MOE": str(logs[name]), "PYTHONPATH": pythonpath},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    patch, plugin = log_content(logs["patch"]), log_content(logs["plugin"])
    tokens = sum(len(r["prompt_token_ids"]) + len(r["token_ids"]) - 1 for r in records["patch"])
    assert len(patch["routes"]) == tokens * NUM_LAYERS
    assert patch["trailer"] == {**patch["trailer"], "type": "end", "lines": tokens * NUM_LAYERS}
    assert [r["token_ids"] for r in records["plugin"]] == [r["token_ids"] for r in records["patch"]]
    for part in ("header", "trailer", "prompt_lens"):
        assert plugin[part] == patch[part]
    assert plugin["routes"].keys() == patch["routes"].keys()
    for key, (tok, experts, weights) in patch["routes"].items():
        other_tok, other_experts, other_weights = plugin["routes"][key]
        assert (other_tok, other_experts) == (tok, experts), key
        # float32 matmuls of other batch shapes (the two engines' schedulers batch the same
        # prompts differently) move the 6th decimal at most (seen: 9 of 1,947 lines)
        assert max(abs(a - b) for a, b in zip(weights, other_weights, strict=True)) <= 1.01e-6
