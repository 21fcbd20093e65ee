"""The columnar reader (routes.iter_blocks, iter_counts): columns, blocks, phases, line types."""

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import distinct_ids, write_log

from moe_profiler.analysis import usage_summary
from moe_profiler.reading import routes
from moe_profiler.reading.columns import DECODE, PREFILL, UNKNOWN_PHASE, RouteBlock
from moe_route_log import log_format


def open_one(path) -> routes.LogFile:
    return routes.open_logs([Path(path)])[0]


def columns(blocks: list[RouteBlock]) -> dict:
    whole = RouteBlock.concat(blocks)
    named = {
        name: getattr(whole, name).tolist()
        for name in ("step", "token", "layer", "pos", "tok", "phase", "experts", "weights")
    }
    named["req_id"] = [whole.requests[r] if r >= 0 else None for r in whole.request]
    return named


def three_requests(tmp_path) -> tuple[Path, dict]:
    """A log of 3 steps (3 requests: 5, 1 and 4 tokens, 3 layers) and the columns it must give."""
    rng = np.random.default_rng(11)
    sizes, layers = (5, 1, 4), (2, 5, 9)
    steps = [distinct_ids(rng, n, len(layers), 3, 16) for n in sizes]
    requests = [("7-aaaa0001", 0), ("8-bbbb0002", 3), ("7-aaaa0001", 5)]
    path = write_log(
        tmp_path / "three.jsonl",
        steps,
        layers=layers,
        num_experts=16,
        top_k=3,
        requests=requests,
        prompt_len=4,
    )
    expected = {name: [] for name in ("step", "token", "layer", "pos", "tok", "phase", "req_id")}
    expected["experts"], expected["weights"] = [], []
    for s, (ids, (req, first)) in enumerate(zip(steps, requests, strict=True)):
        for t in range(len(ids)):
            for col, layer in enumerate(layers):
                pos = first + t
                expected["step"].append(s + 1)
                expected["token"].append(t)
                expected["layer"].append(layer)
                expected["req_id"].append(req)
                expected["pos"].append(pos)
                expected["tok"].append(1000 + pos)
                expected["phase"].append(PREFILL if pos < 4 else DECODE)
                expected["experts"].append(ids[t, col].tolist())
                expected["weights"].append([pytest.approx(1 / 3, abs=1e-6)] * 3)
    return path, expected


@pytest.mark.parametrize("block_bytes", [100, 700, 3000, 1 << 20])
def test_blocks_hold_every_line_and_never_split_a_token(tmp_path, block_bytes):
    path, expected = three_requests(tmp_path)
    log = open_one(path)
    blocks = list(routes.iter_blocks([log], strict=True, block_bytes=block_bytes))
    assert columns(blocks) == expected
    assert log.routes == 30 and log.trailer == {"type": "end", "steps": 3}
    assert all(b.source == 0 and b.requests == ["7-aaaa0001", "8-bbbb0002"] for b in blocks)
    for a, b in itertools.pairwise(blocks):
        assert (a.step[-1], a.token[-1]) != (b.step[0], b.token[0])
    if block_bytes == 700:
        assert len(blocks) > 3  # several blocks, so the test means something
    assert {b.experts.dtype.name for b in blocks} == {"int32"}
    assert {b.weights.dtype.name for b in blocks} == {"float32"}


def test_route_lines_are_the_same_per_line_view(tmp_path):
    path, expected = three_requests(tmp_path)
    got = list(routes.iter_routes(open_one(path)))
    assert [r.req_id for r in got] == expected["req_id"]
    assert [r.request for r in got][:3] == ["7"] * 3
    assert [r.prefill for r in got] == [p == PREFILL for p in expected["phase"]]
    assert [r.experts for r in got] == expected["experts"]


def test_phase_is_unknown_until_the_request_line(tmp_path):
    ids = distinct_ids(np.random.default_rng(2), 3, 1, 2, 8)
    w = np.full(ids.shape, 0.5, dtype=np.float32)
    header = {"layers": [0], "num_experts": 8, "top_k": 2, "run_id": "r", "model_id": "m"}

    def step(n: int, req: str, pos: list[int]) -> bytes:
        return log_format.encode_routes(
            n,
            [0],
            [req],
            np.array([len(pos)]),
            np.array(pos),
            np.array(pos),
            ids[: len(pos)],
            w[: len(pos)],
        )

    path = tmp_path / "p.jsonl"
    path.write_bytes(
        log_format.header_line(header)
        + step(1, "a-1", [0, 1])  # no request line yet: unknown
        + log_format.request_lines(2, ["a-1", "b-2"], [2, 1])
        + step(2, "a-1", [2])  # decode (2 >= 2)
        + step(2, "b-2", [0, 1, 2])  # prefill, decode, decode
        + step(3, "a-1", [1])  # prefill (1 < 2)
    )
    blocks = list(routes.iter_blocks([open_one(path)], strict=True))
    assert columns(blocks)["phase"] == [
        UNKNOWN_PHASE,
        UNKNOWN_PHASE,
        DECODE,
        PREFILL,
        DECODE,
        DECODE,
        PREFILL,
    ]


def test_schema2_and_schema1_leave_unknown_fields_at_minus_one(tmp_path):
    lines = [
        b'{"type":"meta","schema":2,"layers":[0],"num_experts":4,"top_k":2}\n',
        b'{"type":"route","step":1,"token":0,"layer":0,"req_id":"x-1","pos":3,'
        b'"experts":[1,2],"weights":[0.5,0.25]}\n',
    ]
    (tmp_path / "s2.jsonl").write_bytes(b"".join(lines))
    got = columns(list(routes.iter_blocks([open_one(tmp_path / "s2.jsonl")], strict=True)))
    assert (got["req_id"], got["pos"], got["tok"], got["phase"]) == (["x-1"], [3], [-1], [-1])
    schema1 = Path(__file__).parent / "data/schema1.jsonl"
    got = columns(list(routes.iter_blocks([open_one(schema1)], strict=True)))
    assert got["req_id"] == [None] * 3 and got["pos"] == [-1] * 3 and got["phase"] == [-1] * 3
    assert got["experts"] == [[3, 17, 42, 59], [3, 4, 5, 6], [59, 3, 0, 1]]


def test_fields_a_later_schema_adds_are_ignored(tmp_path):
    path, expected = three_requests(tmp_path)
    text = path.read_bytes().replace(b'"tok":', b'"future":{"a":[1,"x"]},"tok":')
    path.write_bytes(text)
    assert columns(list(routes.iter_blocks([open_one(path)], strict=True))) == expected


def test_bad_lines_keep_their_numbers_across_small_blocks(tmp_path):
    path = three_requests(tmp_path)[0]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[14] = b"\n"  # blank line (Arrow alone would skip it silently)
    lines[20] = lines[20].replace(b'"layer":', b'"layer":"')  # broken JSON
    lines[25] = lines[25].replace(b'"pos":', b'"pos":-')  # negative position
    lines[27] = lines[27].replace(b'"weights":[', b'"weights":[0.5,')  # 4 weights
    lines[29] = lines[29].replace(b'"step":3', b'"step":"3"')  # wrong type
    lines.insert(31, b'{"type":"control","action":"stop","t":1764000000.5,"step":3}\n')
    path.write_bytes(b"".join(lines))
    for block_bytes in (400, 1 << 20):
        log = open_one(path)
        warned = []
        got = list(routes.iter_blocks([log], warn=warned.append, block_bytes=block_bytes))
        assert sum(map(len, got)) == 30 - 5 and log.routes == 25
        assert [p.split(":", 2)[1:] for p in log.problems] == [
            ["15", " empty line"],
            ["21", " not valid JSON"],
            ["26", " negative pos -6"],
            ["28", " 3 experts / 4 weights, not top_k=3"],
            ["30", " a field has the wrong type (Column(/step) changed from number to string)"],
        ]
        assert len(warned) == 5
        assert log.controls == [{"type": "control", "action": "stop", "t": 1764000000.5, "step": 3}]


def test_non_finite_weights_and_nulls_are_bad_lines(tmp_path):
    header = b'{"type":"meta","schema":3,"layers":[0],"num_experts":4,"top_k":2}\n'
    route = (
        b'{"type":"route","step":1,"token":%d,"layer":0,"req_id":"a-1","pos":%d,"tok":1,'
        b'"experts":%s,"weights":%s}\n'
    )
    body = [
        route % (0, 0, b"[1,2]", b"[NaN,0.5]"),
        route % (1, 1, b"[1,null]", b"[0.5,0.5]"),
        route % (2, 2, b"[1,2]", b"[0.5,0.5]"),
        route.replace(b'"tok":1,', b'"tok":null,') % (3, 3, b"[1,2]", b"[0.5,0.5]"),
        b'{"type":"request","step":1,"req_id":"a-1"}\n',
        b"[1,2]\n",
        b'{"type":"end"}\n',
        b'{"type":"end"}\n',
    ]
    path = tmp_path / "n.jsonl"
    path.write_bytes(header + b"".join(body))
    log = open_one(path)
    assert sum(map(len, routes.iter_blocks([log], warn=lambda m: None))) == 1
    assert [p.split(": ", 1)[1] for p in log.problems] == [
        "router weights [nan, 0.5] are not numbers",
        "expert ids [1, None] are not 2 distinct ids in 0..3",
        "route line without 'tok'",
        "request line without 'prompt_len'",
        "not a JSON object",
        "line after the end-of-log trailer",
    ]
    assert log.trailer == {"type": "end"}


def test_a_reader_stopped_early_leaves_no_thread_behind(tmp_path):
    path = three_requests(tmp_path)[0]
    blocks = routes.iter_blocks([open_one(path)], block_bytes=100)
    next(blocks)
    assert any(t.name.startswith("jsonl") for t in threading.enumerate())
    blocks.close()
    assert not any(t.name.startswith("jsonl") for t in threading.enumerate())


COUNTS_HEADER = {
    "mode": "counts",
    "layers": [0, 2],
    "num_experts": 3,
    "top_k": 2,
    "run_id": "run-c",
    "model_id": "m",
}


def counts_line(t: float, layers: list[int], counts: list, sums: list | None = None) -> bytes:
    record = {
        "type": "counts",
        "t_start": t,
        "t_end": t + 10,
        "steps": 4,
        "tokens": sum(map(sum, counts)) // 2,
        "prefill_tokens": 1,
        "layers": layers,
        "counts": counts,
        "weight_sums": sums if sums is not None else [[0.5] * 3 for _ in layers],
    }
    return (json.dumps(record) + "\n").encode()


def write_counts_log(path: Path, **header) -> Path:
    path.write_bytes(
        log_format.header_line({**COUNTS_HEADER, **header})
        + counts_line(1764000000.5, [0, 2], [[5, 10, 5], [8, 8, 4]])
        + b'{"type":"control","action":"stop","t":1764000011.0,"step":4}\n'
        + b'{"type":"control","action":"start","t":1764000020.0,"step":5}\n'
        + counts_line(1764000020.5, [2], [[1, 0, 1]], [[0.25, 0.0, 0.75]])
        + counts_line(1764000030.5, [0], [[1, 1]])  # 2 experts, not 3
        + counts_line(1764000040.5, [1], [[1, 1, 0]])  # layer 1 is not logged
        + log_format.trailer_line({"steps": 9})
    )
    return path


def test_counts_logs_give_their_windows(tmp_path):
    log = open_one(write_counts_log(tmp_path / "c.jsonl"))
    assert log.mode == "counts"
    windows = list(routes.iter_counts([log], warn=lambda m: None))
    assert [w.t_start for w in windows] == [1764000000.5, 1764000020.5]
    assert windows[0].counts.tolist() == [[5, 10, 5], [8, 8, 4]]
    assert windows[0].layers.tolist() == [0, 2] and windows[0].tokens == 20
    assert windows[1].weight_sums.tolist() == [[0.25, 0.0, 0.75]]
    assert [c["action"] for c in log.controls] == ["stop", "start"]
    assert [p.split(":", 2)[1:] for p in log.problems] == [
        ["6", " counts is not 1 layers x 3 experts"],
        ["7", " layers [1] are not all logged layers"],
    ]
    assert log.windows == 2 and log.trailer == {"type": "end", "steps": 9}
    with pytest.raises(routes.RouteLogError, match="is a counts log: read it with iter_counts"):
        next(routes.iter_blocks([log]))


def test_plot_on_counts_logs_sums_the_windows(tmp_path):
    write_counts_log(tmp_path / "c.h.dp0-pp0.jsonl", ranks={"dp": 0, "pp": 0, "tp": 0})
    write_counts_log(tmp_path / "c.h.dp1-pp0.jsonl", ranks={"dp": 1, "pp": 0, "tp": 0})
    summary = usage_summary.summarize_expert_usage([str(tmp_path)], None, None)
    assert summary["mode"] == "counts" and summary["count_windows"] == 4
    assert summary["layers"]["0"]["counts"] == [10, 20, 10]
    assert summary["layers"]["2"]["counts"] == [18, 16, 10]
    assert summary["layers"]["2"]["mean_weight"] == [
        round((0.5 + 0.25) * 2 / 18, 6),
        round(1.0 / 16, 6),
        round((0.5 + 0.75) * 2 / 10, 6),
    ]
    assert usage_summary.usage_table(summary).startswith(
        "2 file(s), ranks dp0-pp0-tp0, dp1-pp0-tp0: 4 count"
    )


def test_merge_refuses_a_counts_log_with_a_routes_log(tmp_path):
    write_counts_log(tmp_path / "c.jsonl", run_id="run-1", ranks={"dp": 1})
    write_log(tmp_path / "r.jsonl", [])
    with pytest.raises(
        routes.RouteLogError, match=r"\(mode counts\) with .*r.jsonl \(mode routes\)"
    ):
        routes.open_logs(routes.find_logs([str(tmp_path)]))


def rotated(tmp_path, name: str, part: int, rank: int = 0) -> Path:
    ids = distinct_ids(np.random.default_rng(part + 10 * rank), 2, 2, 2, 8)
    return write_log(
        tmp_path / name,
        [ids],
        requests=[(f"{part}-{rank}-abcd", 0)],
        part=part,
        ranks={"dp": rank, "pp": 0, "tp": 0},
    )


def test_parts_of_rotated_logs_are_found_and_merged(tmp_path):
    single = [rotated(tmp_path, f"r.p{k:05d}.jsonl", k) for k in (0, 2, 3)]  # part 1 deleted
    ranked = [rotated(tmp_path, f"r.gpu-1.dp1-pp0.p{k:05d}.jsonl", k, rank=1) for k in (4, 5)]
    (tmp_path / "r.p00001.txt").write_text("not a log")
    (tmp_path / "rx.p00001.jsonl").write_text("another run's name")
    assert routes.rank_files(tmp_path / "r.jsonl") == sorted(ranked) + single
    logs = routes.open_logs(routes.rank_files(tmp_path / "r.jsonl"))
    assert [log.rank_key() for log in logs] == [(1, 0, 0, 4), (1, 0, 0, 5)] + [
        (0, 0, 0, k) for k in (0, 2, 3)
    ]
    blocks = list(routes.iter_blocks(logs, strict=True))
    assert sum(map(len, blocks)) == 5 * 2 * 2 and {b.source for b in blocks} == set(range(5))


def test_the_same_part_twice_is_refused(tmp_path):
    rotated(tmp_path, "r.p00000.jsonl", 0)
    rotated(tmp_path, "copy.p00000.jsonl", 0)
    with pytest.raises(routes.RouteLogError, match=r"ranks \(0, 0, 0\), part 0, of one run"):
        routes.open_logs(routes.find_logs([str(tmp_path)]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mode": "sometimes"}, "mode 'sometimes' is not 'routes' or 'counts'"),
        ({"part": -1}, "part -1 is not a part number"),
    ],
)
def test_headers_with_an_unknown_mode_or_part(tmp_path, extra, message):
    path = write_log(tmp_path / "x.jsonl", [], **extra)
    with pytest.raises(routes.RouteLogError, match=message):
        routes.read_header(path)


def test_a_blank_line_and_two_objects_on_one_line_do_not_shift_line_numbers(tmp_path):
    path = three_requests(tmp_path)[0]
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = b"\n"  # one row fewer ...
    lines[6] = lines[6].rstrip(b"\n") + lines[7]  # ... and one more: the count alone matches
    del lines[7]
    lines[10] = lines[10].replace(b'"req_id":"7-aaaa0001"', b'"req_id":"7}{-aaaa0001"')
    path.write_bytes(b"".join(lines))
    log = open_one(path)
    got = columns(list(routes.iter_blocks([log], warn=lambda m: None)))
    assert [p.split(": ", 1)[1] for p in log.problems] == ["empty line", "not valid JSON"]
    assert [int(p.split(":")[1]) for p in log.problems] == [5, 7]
    assert len(got["step"]) == 30 - 3 and "7}{-aaaa0001" in got["req_id"]


def test_crlf_and_trailing_spaces_are_read(tmp_path):
    path, expected = three_requests(tmp_path)
    text = path.read_bytes().replace(b"}\n", b"}  \r\n")
    path.write_bytes(text)
    log = open_one(path)
    assert columns(list(routes.iter_blocks([log], strict=True, block_bytes=1000))) == expected
