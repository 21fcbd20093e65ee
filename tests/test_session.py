"""The engine side of a log (session.py) on CPU tensors: counts, windows, start/stop/dump.

The session runs exactly as in an engine process, with a real writer process;
only the model is missing: each test writes routes into the session's buffers
the way the recorder does, then calls ``end_step`` like the model runner.
"""

import json
import time
import types

import numpy as np
import pytest
import torch

from moe_profiler.reading import routes
from moe_route_log import control
from moe_route_log.envs import read_config
from moe_route_log.recorder import LayerRecorder
from moe_route_log.session import RouteLogSession
from moe_route_log.window import prefill_tokens

LAYERS, EXPERTS, TOP_K, ROWS = [3, 5], 8, 2, 32


def make_session(tmp_path, n_real_source=None, **env) -> RouteLogSession:
    config = read_config({"VLLM_LOG_MOE": str(tmp_path / "log.jsonl"), **env})
    meta = {
        "layers": LAYERS,
        "num_layers": 6,
        "num_experts": EXPERTS,
        "top_k": TOP_K,
        "model_name": "test/model",
        "hostname": "host",
        "ranks": {"dp": 0, "pp": 0, "tp": 0},
        "mode": config.mode,
        "sample": config.sample,
    }
    return RouteLogSession(
        config, meta, ROWS, len(LAYERS), TOP_K, EXPERTS, torch.device("cpu"), n_real_source
    )


def run_pass(session, rng, reqs=(("a-1", 5, 0, 7), ("b-2", 1, 40, 12))) -> np.ndarray:
    """One pass: (req_id, tokens, first position, prompt length) per request; its routes."""
    rows = sum(r[1] for r in reqs)
    ids = np.stack([rng.permutation(EXPERTS)[:TOP_K] for _ in range(rows * len(LAYERS))])
    ids = ids.reshape(rows, len(LAYERS), TOP_K)
    session.buffers.expert_ids[:, :rows] = torch.from_numpy(ids.astype(np.int32)).transpose(0, 1)
    session.buffers.weights[:, :rows] = 0.25
    session.buffers.expert_ids[:, rows:] = 7  # padding rows: never counted
    session.end_step(
        [r[0] for r in reqs],
        np.array([r[1] for r in reqs]),
        np.array([r[3] for r in reqs]),
        np.array([r[2] for r in reqs]),
        torch.arange(ROWS, dtype=torch.int32) + 100,
    )
    return ids


def bincount(ids: np.ndarray) -> list[list[int]]:
    return [np.bincount(ids[:, i].ravel(), minlength=EXPERTS).tolist() for i in range(len(LAYERS))]


def lines_of(session, path):
    session.close()
    routes.wait_until_complete(path, timeout=60)
    return [json.loads(line) for line in open(path)]


def test_dump_counts_every_recorded_pass_and_start_resets_them(tmp_path):
    s = make_session(tmp_path)
    rng = np.random.default_rng(0)
    first = np.concatenate([run_pass(s, rng) for _ in range(3)])
    dump = s.dump()
    assert dump["counts"] == bincount(first)
    assert dump["tokens"] == 18 and dump["record_steps"] == 3 and dump["steps"] == 3
    assert dump["prefill_tokens"] == 3 * 5  # request a: positions 0-4 < 7; b: 40 >= 12
    assert dump["weight_sums"] == (np.array(bincount(first)) * 0.25).tolist()
    assert dump["recording"] is True and dump["layers"] == LAYERS
    s.stop()
    run_pass(s, rng)  # stopped: nothing happens
    assert s.dump()["counts"] == bincount(first) and s.status()["recording"] is False
    s.start()
    second = run_pass(s, rng)
    assert s.dump()["counts"] == bincount(second)  # start: the record begins again
    lines = lines_of(s, tmp_path / "log.jsonl")
    route_lines = [r for r in lines if r["type"] == "route"]
    assert [r["step"] for r in route_lines[:: len(LAYERS)]] == [1] * 6 + [2] * 6 + [3] * 6 + [4] * 6
    assert [(r["action"], r["step"]) for r in lines if r["type"] == "control"] == [
        ("stop", 3),
        ("start", 3),
    ]
    assert all(r["tok"] == 100 + r["token"] for r in route_lines)
    assert not [r for r in lines if r["type"] == "counts"], "routes mode writes no counts lines"
    assert lines[-1]["type"] == "end" and lines[-1]["lines"] == 24 * len(LAYERS)


def test_counts_mode_writes_windows_and_no_routes(tmp_path):
    s = make_session(tmp_path, VLLM_LOG_MOE_MODE="counts", VLLM_LOG_MOE_INTERVAL_S="0.2")
    rng = np.random.default_rng(1)
    ids = [run_pass(s, rng)]
    time.sleep(0.25)
    ids.append(run_pass(s, rng))  # this pass closes the first window
    ids.append(run_pass(s, rng))
    ids.append(run_pass(s, rng))
    totals = s.dump()["counts"]
    lines = lines_of(s, tmp_path / "log.jsonl")
    windows = [r for r in lines if r["type"] == "counts"]
    assert not [r for r in lines if r["type"] in ("route", "request")]
    assert [w["steps"] for w in windows] == [2, 2]  # cut by the interval, then at close
    assert windows[0]["counts"] == bincount(np.concatenate(ids[:2]))
    assert windows[1]["counts"] == bincount(np.concatenate(ids[2:]))
    assert totals == bincount(np.concatenate(ids))
    assert [w["tokens"] for w in windows] == [12, 12] and windows[0]["prefill_tokens"] == 10
    assert windows[0]["layers"] == LAYERS and windows[0]["t_end"] <= windows[1]["t_start"] + 1e-6
    assert windows[0]["weight_sums"] == (np.array(windows[0]["counts"]) * 0.25).tolist()


def test_start_off_records_nothing_until_started(tmp_path):
    s = make_session(tmp_path, VLLM_LOG_MOE_START="off")
    rng = np.random.default_rng(2)
    assert s.recording is False
    run_pass(s, rng)
    assert s.dump()["counts"] == [[0] * EXPERTS] * len(LAYERS)
    s.start()
    ids = run_pass(s, rng)
    assert s.dump()["counts"] == bincount(ids)
    lines = lines_of(s, tmp_path / "log.jsonl")
    assert {r["step"] for r in lines if r["type"] == "route"} == {1}


def test_vllm_log_moe_encoders_sets_the_writers_encoder_processes(tmp_path):
    s = make_session(tmp_path, VLLM_LOG_MOE_ENCODERS="2")
    ids = np.concatenate([run_pass(s, np.random.default_rng(6)) for _ in range(3)])
    lines = lines_of(s, tmp_path / "log.jsonl")
    assert lines[-1]["type"] == "end" and lines[-1]["writer_encoders"] == 2
    route_lines = [r for r in lines if r["type"] == "route"]
    assert len(route_lines) == lines[-1]["lines"] == len(ids) * len(LAYERS)
    assert [r["experts"] for r in route_lines] == ids.reshape(-1, TOP_K).tolist()


def in_graph_pass(
    session, counter, source, rng, reqs=(("a-1", 5, 0, 7), ("b-2", 1, 40, 12)), dummy=False
):
    """A pass counted in the graph: each layer counts its padded rows (ROWS), masked to
    the real ones by the device token count; then the runner's end_step (not for the
    dummy passes of the warm-up, which vLLM runs outside execute_model)."""
    rows = sum(r[1] for r in reqs)
    source[-1] = rows  # what _prepare_inputs writes before every real pass
    ids = np.stack([rng.permutation(EXPERTS)[:TOP_K] for _ in range(ROWS * len(LAYERS))])
    ids = ids.reshape(ROWS, len(LAYERS), TOP_K)
    for slot in range(len(LAYERS)):
        counter.count(
            torch.from_numpy(ids[:, slot]).int(), torch.full((ROWS, TOP_K), 0.25), slot, 0
        )
    if dummy:
        return ids[:rows]
    runner_end_step(session, reqs)
    return ids[:rows]


def runner_end_step(session, reqs) -> None:
    """What the model runner hands ``end_step`` after a pass of ``reqs``."""
    session.end_step(
        [r[0] for r in reqs],
        np.array([r[1] for r in reqs]),
        np.array([r[3] for r in reqs]),
        np.array([r[2] for r in reqs]),
        torch.arange(ROWS, dtype=torch.int32),
    )


def test_in_graph_counts_windows_dump_and_stop_start(tmp_path):
    source = torch.zeros(5, dtype=torch.int32)
    s = make_session(tmp_path, source, VLLM_LOG_MOE_MODE="counts", VLLM_LOG_MOE_COUNTS_IN_GRAPH="1")
    counter = s.counter
    rng = np.random.default_rng(4)
    in_graph_pass(s, counter, source, rng, dummy=True)  # warm-up: forgotten
    s.warm_up_done()
    first = np.concatenate([in_graph_pass(s, counter, source, rng) for _ in range(2)])
    dump = s.dump()
    assert dump["counts"] == bincount(first) and dump["tokens"] == 12
    assert dump["weight_sums"] == (np.array(bincount(first)) * 0.25).tolist()
    s.stop()
    in_graph_pass(s, counter, source, rng)  # stopped: the layers count, start forgets it
    s.start()
    second = in_graph_pass(s, counter, source, rng, reqs=(("c-3", 3, 0, 3),))
    assert s.dump()["counts"] == bincount(second) and s.dump()["prefill_tokens"] == 3
    lines = lines_of(s, tmp_path / "log.jsonl")
    windows = [r for r in lines if r["type"] == "counts"]
    assert [w["counts"] for w in windows] == [bincount(first), bincount(second)]
    assert [w["steps"] for w in windows] == [2, 1] and lines[-1]["steps"] == 3


def test_in_graph_counts_leave_passes_outside_graphs_to_the_end_of_pass_kernel(
    tmp_path, monkeypatch
):
    """On CUDA a pass no graph runs (vLLM runs large passes eagerly) must not pay one
    count launch per layer: its layers store their routes and end_step counts them;
    passes inside graphs count in the layers. Each pass is counted once, either way."""
    source = torch.zeros(5, dtype=torch.int32)
    s = make_session(tmp_path, source, VLLM_LOG_MOE_MODE="counts", VLLM_LOG_MOE_COUNTS_IN_GRAPH="1")
    counter = s.counter
    counter.defer_outside_graphs = True  # as on CUDA
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    layer = types.SimpleNamespace(eplb=False)  # what the recorder reads of its layer
    recorders = [LayerRecorder(layer, s.buffers, i, 0, 1.0, counter) for i in range(len(LAYERS))]
    rng = np.random.default_rng(5)

    def eager_pass(reqs=(("a-1", 5, 0, 7), ("b-2", 1, 40, 12)), end_step=True):
        rows = sum(r[1] for r in reqs)
        source[-1] = rows
        ids = np.stack([rng.permutation(EXPERTS)[:TOP_K] for _ in range(rows * len(LAYERS))])
        ids = ids.reshape(rows, len(LAYERS), TOP_K)
        for slot, recorder in enumerate(recorders):
            topk_ids = torch.from_numpy(ids[:, slot]).int()
            recorder.record(None, None, torch.full((rows, TOP_K), 0.25), topk_ids)
        if end_step:
            runner_end_step(s, reqs)
        return ids

    capturing[0] = True  # graph capture of the warm-up: counted in the layers, then forgotten
    eager_pass(end_step=False)
    capturing[0] = False
    eager_pass(end_step=False)  # an eager dummy pass of the warm-up: forgotten too
    s.warm_up_done()
    graph = in_graph_pass(s, counter, source, rng)  # a graph replays: counted inside
    eager = eager_pass()  # outside the graphs: stored, counted at the end of the pass
    stored = s.buffers.expert_ids[:, : len(eager)].transpose(0, 1).numpy()
    assert (stored == eager).all(), "the layers stored the eager pass instead of counting it"
    graph_again = in_graph_pass(s, counter, source, rng)
    dump = s.dump()
    assert dump["counts"] == bincount(np.concatenate([graph, eager, graph_again]))
    assert dump["tokens"] == 18 and dump["weight_sums"] == (np.array(dump["counts"]) / 4).tolist()
    s.stop()
    eager_pass()  # stopped: stored, not counted; start forgets it
    s.start()
    graph = in_graph_pass(s, counter, source, rng)
    assert s.dump()["counts"] == bincount(graph)
    s.close()


def test_merged_answers_are_sglang_logical_counts(tmp_path):
    s = make_session(tmp_path)
    ids = run_pass(s, np.random.default_rng(3))
    answer = {**s.identity, **s.dump()}
    merged = control.merge([None, answer])  # a tensor-parallel peer answers None
    assert len(merged["logical_count"]) == 6 and len(merged["logical_count"][0]) == EXPERTS
    assert merged["logical_count"][3] == bincount(ids)[0]
    assert merged["logical_count"][5] == bincount(ids)[1]
    assert merged["logical_count"][0] == [0] * EXPERTS  # a layer nobody logged
    assert merged["tokens"] == 6 and merged["processes"] == ["host:dp0-pp0"]
    second_stage = {**answer, "ranks": {"dp": 0, "pp": 1, "tp": 0}, "layers": [0]}
    both = control.merge([answer, second_stage])
    assert both["tokens"] == 6, "pipeline stages see the same tokens: counted once"
    assert both["logical_count"][0] == bincount(ids)[0]
    with pytest.raises(control.NotLoggingError, match="set VLLM_LOG_MOE"):
        control.merge([None, None])
    s.close()


def test_prefill_tokens_of_a_pass():
    # request 1: positions 5..9 of a 7-token prompt (2 prefill); request 2: decode; 3: all prompt
    assert prefill_tokens(np.array([5, 1, 3]), np.array([7, 4, 10]), np.array([5, 30, 0])) == 2 + 3
    assert prefill_tokens(np.array([], dtype=int), np.array([], dtype=int), np.array([])) == 0
    # requests without rows this pass (first, middle, last) count nothing
    tokens, prompts = np.array([0, 2, 0, 1, 0]), np.array([9, 5, 9, 3, 9])
    assert prefill_tokens(tokens, prompts, np.array([1, 3, 2, 4, 8])) == 2 + 0
