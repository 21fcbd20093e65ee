"""The JSONL writer side (log_format.py) read back by the reader side (routes.py)."""

import json

import numpy as np
import pytest

from moe_profiler.reading import routes
from moe_route_log import log_format


def random_step(rng, tokens=37, layers=(0, 3, 7), top_k=4, experts=60):
    ids = np.stack([rng.permutation(experts)[:top_k] for _ in range(tokens * len(layers))])
    ids = ids.reshape(tokens, len(layers), top_k).astype(np.int32)
    weights = rng.random((tokens, len(layers), top_k)).astype(np.float32)
    counts = np.array([10, 1, 26])
    positions = np.concatenate([np.arange(c) + 5 * i for i, c in enumerate(counts)])
    return ids, weights, counts, positions


def test_route_lines_are_exact_json(tmp_path):
    rng = np.random.default_rng(1)
    ids, weights, counts, positions = random_step(rng)
    weights[0, 0] = [1.0, 0.25, 0.0, 2.5]  # exact values, and > 1 (scaled routing)
    weights[0, 1] = [1e-7, 0.1234565, 12345.5, 0.5]
    req_ids = ["0-abc", 'quote"and\\slash-1', "uni-é"]
    toks = rng.integers(0, 150_000, 37)
    text = log_format.encode_routes(9, [0, 3, 7], req_ids, counts, positions, toks, ids, weights)
    lines = text.decode().splitlines()
    assert len(lines) == 37 * 3 and text.endswith(b"\n")
    owner = np.repeat(np.arange(3), counts)
    for i, line in enumerate(lines):
        rec = json.loads(line)
        t, col = divmod(i, 3)
        assert list(rec) == [
            "type",
            "step",
            "token",
            "layer",
            "req_id",
            "pos",
            "tok",
            "experts",
            "weights",
        ]
        assert rec["type"] == "route" and rec["step"] == 9 and rec["token"] == t
        assert rec["layer"] == [0, 3, 7][col]
        assert rec["req_id"] == req_ids[owner[t]] and rec["pos"] == positions[t]
        assert rec["tok"] == toks[t]
        assert rec["experts"] == ids[t, col].tolist()
        expected = np.round(weights[t, col].astype(np.float64), log_format.WEIGHT_DECIMALS)
        assert rec["weights"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert json.loads(lines[0])["weights"] == [1.0, 0.25, 0.0, 2.5]
    assert json.loads(lines[1])["weights"] == [0.0, 0.123457, 12345.5, 0.5]
    assert '"weights":[1.0,0.25,0.0,2.5]' in lines[0]  # shortest form, no trailing zeros


def test_large_steps_are_encoded_in_blocks():
    rng = np.random.default_rng(2)
    n = log_format._LINES_PER_BLOCK // 2 + 5  # two blocks with 2 layers
    ids = rng.integers(0, 8, (n, 2, 2)).astype(np.int32)
    weights = rng.random((n, 2, 2)).astype(np.float32)
    text = log_format.encode_routes(
        1, [4, 5], ["r-1"], np.array([n]), np.arange(n), np.arange(n), ids, weights
    )
    lines = text.splitlines()
    assert len(lines) == 2 * n
    assert json.loads(lines[-1])["token"] == n - 1 and json.loads(lines[-1])["pos"] == n - 1


def test_negative_and_non_finite_weights():
    ids = np.array([[[0, 1]]], dtype=np.int32)
    neg = log_format.encode_routes(
        1,
        [0],
        ["r"],
        np.array([1]),
        np.array([0]),
        np.array([7]),
        ids,
        np.array([[[-0.5, -1e-9]]], dtype=np.float32),
    )
    assert json.loads(neg)["weights"] == [-0.5, 0.0]
    with pytest.raises(ValueError, match="non-finite"):
        log_format.encode_routes(
            1,
            [0],
            ["r"],
            np.array([1]),
            np.array([0]),
            np.array([7]),
            ids,
            np.array([[[np.nan, 1.0]]], dtype=np.float32),
        )


def test_shape_mismatches_are_refused():
    ids = np.zeros((2, 1, 2), dtype=np.int32)
    w = np.zeros((2, 1, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="does not add up"):
        log_format.encode_routes(1, [0], ["r"], np.array([3]), np.arange(2), np.arange(2), ids, w)
    with pytest.raises(ValueError, match="do not match"):
        log_format.encode_routes(
            1, [0, 1], ["r"], np.array([2]), np.arange(2), np.arange(2), ids, w
        )
    assert (
        log_format.encode_routes(
            1, [0], [], np.array([], dtype=int), np.arange(0), np.arange(0), ids[:0], w[:0]
        )
        == b""
    )


def test_header_and_trailer_round_trip_through_the_reader(tmp_path):
    rng = np.random.default_rng(3)
    ids, weights, counts, positions = random_step(rng, layers=(1, 2))
    meta = {"layers": [1, 2], "num_experts": 60, "top_k": 4, "run_id": "x"}
    path = tmp_path / "log.jsonl"
    toks = np.arange(37) * 3
    path.write_bytes(
        log_format.header_line(meta)
        + log_format.request_lines(1, ["a-1", "b-2", "c-3"], [12, 0, 30])
        + log_format.encode_routes(
            1, [1, 2], ["a-1", "b-2", "c-3"], counts, positions, toks, ids, weights
        )
        + log_format.trailer_line({"steps": 1})
    )
    header = routes.read_header(path)
    assert header == {"type": "meta", "schema": log_format.SCHEMA_VERSION, **meta}
    log = routes.LogFile(path, header)
    got = list(routes.iter_routes(log, strict=True))
    assert len(got) == 37 * 2 and log.routes == 74
    assert log.trailer == {"type": "end", "steps": 1}
    assert got[0].request == "a" and got[-1].req_id == "c-3"
    assert [r.experts for r in got] == ids.reshape(-1, 4).tolist()
    assert [r.tok for r in got[::2]] == toks.tolist()
    prompt_len = {"a-1": 12, "b-2": 0, "c-3": 30}
    assert [r.prefill for r in got] == [r.pos < prompt_len[r.req_id] for r in got]
    assert {r.prefill for r in got} == {True, False}


def test_request_lines():
    text = log_format.request_lines(4, ["0-ab", 'q"-1'], np.array([17, 3], dtype=np.int32))
    assert [json.loads(line) for line in text.splitlines()] == [
        {"type": "request", "step": 4, "req_id": "0-ab", "prompt_len": 17},
        {"type": "request", "step": 4, "req_id": 'q"-1', "prompt_len": 3},
    ]


def test_header_fields_put_the_runs_facts_in_the_header_order():
    ranks = log_format.Ranks(
        dp=1, dp_size=2, pp=0, pp_size=1, tp_size=4, ep=3, ep_size=8, eplb=True
    )
    run = log_format.RunFacts(
        vllm_version="0.15.1",
        model_id="/models/tiny-moe/",
        seed=7,
        run_label=None,
        run_id="run-1",
        layers=[0, 2],
        layer_choice="VLLM_LOG_MOE_LAYER='0,2'",
        num_layers=4,
        moe_layers=[0, 1, 2, 3],
        num_experts=8,
        top_k=2,
        routing={"scoring": "softmax"},
        ranks=ranks,
        hostname="node-a",
        platform="cuda",
        enforce_eager=False,
        prefix_caching=True,
        log_path="/logs/r.node-a.dp1-pp0.jsonl",
        mode="counts",
        counts_path="in_graph",
        sample=0.5,
        pid=4321,
        created="2026-12-06T20:00:00Z",
    )
    assert list(log_format.header_fields(run).items()) == [
        ("vllm_version", "0.15.1"),
        ("model_id", "/models/tiny-moe/"),
        ("model_name", "tiny-moe"),
        ("seed", 7),
        ("req_id", None),
        ("run_id", "run-1"),
        ("layers", [0, 2]),
        ("layer_choice", "VLLM_LOG_MOE_LAYER='0,2'"),
        ("num_layers", 4),
        ("moe_layers", [0, 1, 2, 3]),
        ("num_experts", 8),
        ("top_k", 2),
        ("routing", {"scoring": "softmax"}),
        ("expert_ids", "logical"),
        ("weights_decimals", 6),
        (
            "ranks",
            {
                "dp": 1,
                "dp_size": 2,
                "pp": 0,
                "pp_size": 1,
                "tp": 0,
                "tp_size": 4,
                "ep": 3,
                "ep_size": 8,
                "eplb": True,
            },
        ),
        ("hostname", "node-a"),
        ("pid", 4321),
        ("created", "2026-12-06T20:00:00Z"),
        ("platform", "cuda"),
        ("enforce_eager", False),
        ("prefix_caching", True),
        ("log_path", "/logs/r.node-a.dp1-pp0.jsonl"),
        ("mode", "counts"),
        ("counts_path", "in_graph"),
        ("sample", 0.5),
    ]


def test_counts_and_control_lines_round_times_and_sums_to_six_decimals():
    line = log_format.counts_line(
        t_start=1.23456789,
        t_end=2.5,
        steps=3,
        tokens=10,
        prefill_tokens=4,
        layers=[5],
        counts=np.array([[7, 0, 3]]),
        weight_sums=np.array([[1.00000049, 0.0, 2.1234567]]),
    )
    assert log_format.json_line(line) == (
        b'{"type":"counts","t_start":1.234568,"t_end":2.5,"steps":3,"tokens":10,'
        b'"prefill_tokens":4,"layers":[5],"counts":[[7,0,3]],"weight_sums":[[1.0,0.0,2.123457]]}\n'
    )
    assert log_format.json_line(log_format.control_line("stop", 12.5, 9)) == (
        b'{"type":"control","action":"stop","t":12.5,"step":9}\n'
    )


def test_trailer_has_the_engines_fields_then_the_writers():
    engine = log_format.trailer_engine_fields(
        steps=12, wait_s=0.0123456789, waits=2, end_step_s=1.5, drain_cpu_s=0.25
    )
    fields = dict(lines=30, tokens=10, buffer_peak_bytes=3 * 2**19, buffer_full_waits=1)
    assert log_format.trailer_line(
        log_format.trailer_fields(engine, **fields, encoders=2, cpu_s=0.98765)
    ) == (
        b'{"type":"end","steps":12,"engine_wait_s":0.012346,"engine_waits":2,"end_step_s":1.5,'
        b'"drain_cpu_s":0.25,"lines":30,"tokens":10,"writer_buffer_peak_mb":1.5,'
        b'"writer_buffer_full_waits":1,"writer_encoders":2,"writer_cpu_s":0.988}\n'
    )
    last_part = log_format.trailer_fields(engine, **fields, encoders=1, cpu_s=0.0, part=3)
    assert list(last_part)[-1] == "part" and last_part["part"] == 3
    assert log_format.rotated_trailer_fields(2, 40, 20) == {
        "reason": "rotated",
        "part": 2,
        "lines": 40,
        "tokens": 20,
    }
