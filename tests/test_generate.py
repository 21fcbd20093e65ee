"""run_generate.py's pieces that need no engine: the environment it sets, timing.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from moe_profiler.running.generate import RunOptions, merge_timing, set_log_environment

SETUP = {"model": "m", "prompts": 2, "max_tokens": 4}


def write_outputs(path: Path, token_ids: list[list[int]]) -> Path:
    path.write_text("".join(json.dumps({"token_ids": t}) + "\n" for t in token_ids))
    return path


def test_log_mode_sets_every_variable_and_no_log_clears_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLLM_LOG_MOE_LAYER", "7")  # left over from an earlier run
    opts = RunOptions(model="org/model", seed=3, log_path=Path("x.jsonl"), log_layers="all")
    opts.run_label = "label-1"
    env = set_log_environment("log", opts)
    assert env == {
        "VLLM_LOG_MOE": str(tmp_path / "x.jsonl"),
        "VLLM_LOG_MOE_LAYER": "all",
        "VLLM_LOG_MOE_SEED": "3",
        "VLLM_LOG_MOE_MODEL_ID": "org/model",
        "VLLM_LOG_MOE_REQ_ID": "label-1",
    }
    assert {k: v for k, v in os.environ.items() if k.startswith("VLLM_LOG_MOE")} == env
    assert set_log_environment("no_log", opts) == {}
    assert not [k for k in os.environ if k.startswith("VLLM_LOG_MOE")]


def test_without_layers_the_logger_chooses_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_LOG_MOE_LAYER", "7")
    env = set_log_environment("log", RunOptions(model="m", log_path=tmp_path / "x.jsonl"))
    assert "VLLM_LOG_MOE_LAYER" not in env and "VLLM_LOG_MOE_LAYER" not in os.environ


def test_timing_gets_the_overhead_once_both_modes_ran(tmp_path):
    timing = tmp_path / "timing.json"
    same = [[1, 2], [3]]
    a = write_outputs(tmp_path / "a.jsonl", same)
    b = write_outputs(tmp_path / "b.jsonl", same)
    first = merge_timing(timing, "no_log", SETUP, {"output_tok_per_s": 100.0}, a)
    assert "log_overhead_pct" not in first and set(first["runs"]) == {"no_log"}
    both = merge_timing(timing, "log", SETUP, {"output_tok_per_s": 80.0}, b)
    assert both["log_overhead_pct"] == 25.0  # 100 / 80 - 1: a quarter more time per token
    assert both["greedy_outputs_match"] is True
    assert json.loads(timing.read_text()) == both


def test_different_outputs_are_reported_and_a_new_setup_starts_afresh(tmp_path):
    timing = tmp_path / "timing.json"
    a = write_outputs(tmp_path / "a.jsonl", [[1, 2]])
    b = write_outputs(tmp_path / "b.jsonl", [[1, 9]])
    merge_timing(timing, "no_log", SETUP, {"output_tok_per_s": 50.0}, a)
    both = merge_timing(timing, "log", SETUP, {"output_tok_per_s": 50.0}, b)
    assert both["greedy_outputs_match"] is False and both["log_overhead_pct"] == 0.0
    other = {**SETUP, "max_tokens": 8}
    fresh = merge_timing(timing, "log", other, {"output_tok_per_s": 40.0}, b)
    assert fresh["setup"] == other and set(fresh["runs"]) == {"log"}
    assert "log_overhead_pct" not in fresh


def test_output_folders_are_made_when_missing(tmp_path):
    from moe_profiler.running.generate import write_records

    out = write_records([{"request_id": "0", "token_ids": [1, 2]}], tmp_path / "new" / "o.jsonl")
    assert out.read_text() == '{"request_id": "0", "token_ids": [1, 2]}\n'
    timing = tmp_path / "other" / "deeper" / "timing.json"
    merge_timing(timing, "log", SETUP, {"output_tok_per_s": 10.0}, out)
    assert timing.exists()
