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
# trailer fields that time the run
TIMINGS = ("engine_wait_s", "end_step_s", "drain_cpu_s", "writer_cpu_s", "writer_buffer_peak_mb")


def normalised_lines(path: Path) -> list[dict]:
    """The log's lines with what differs between two identical runs taken out: the fields
    above, and the random suffix vLLM adds to each request id."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        if "req_id" in line and line["type"] != "meta":
            line["req_id"] = line["req_id"].rsplit("-", 1)[0]
        for field in PER_RUN if line["type"] == "meta" else TIMINGS:
            line.pop(field, None)
    return lines


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
    patch, plugin = normalised_lines(logs["patch"]), normalised_lines(logs["plugin"])
    tokens = sum(len(r["prompt_token_ids"]) + len(r["token_ids"]) - 1 for r in records["patch"])
    assert sum(line["type"] == "route" for line in patch) == tokens * NUM_LAYERS
    assert patch[-1] == {**patch[-1], "type": "end", "lines": tokens * NUM_LAYERS}
    assert [r["token_ids"] for r in records["plugin"]] == [r["token_ids"] for r in records["patch"]]
    assert plugin == patch
