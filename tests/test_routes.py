"""Reading logs back (moe_profiler/reading/routes.py): schemas, bad lines, several files."""

import fcntl
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import distinct_ids, write_log

from moe_profiler.reading import routes

DATA = Path(__file__).parent / "data"


def read_all(path, **kwargs):
    log = routes.LogFile(Path(path), routes.read_header(Path(path)))
    return log, list(routes.iter_routes(log, **kwargs))


def test_schema1_logs_are_still_read():
    log, got = read_all(DATA / "schema1.jsonl", strict=True)
    assert log.schema == 1 and log.header["req_id"] == "run-a"
    assert [r.experts for r in got] == [[3, 17, 42, 59], [3, 4, 5, 6], [59, 3, 0, 1]]
    assert all(r.req_id is None and r.pos is None and r.request is None for r in got)
    assert log.trailer is None and log.problems == []


def test_bad_lines_are_skipped_with_their_line_numbers(tmp_path):
    path = write_log(
        tmp_path / "a.jsonl", [distinct_ids(np.random.default_rng(0), 3, 2, 2, 8)], trailer=False
    )
    good = path.read_bytes()
    bad = good.splitlines(keepends=True)
    bad[2] = (
        b'{"type":"route","step":1,"token":0,"layer":1,"req_id":"x","pos":0,"tok":5,"experts":[9,1],"weights":[0.5,0.5]}\n'
    )
    bad[3] = b"this is not json\n"
    bad[4] = (
        b'{"type":"route","step":1,"layer":0,"req_id":"x","pos":0,"tok":5,"experts":[1,2],"weights":[1,1]}\n'
    )
    bad.insert(
        5,
        b'{"type":"route","step":1,"token":0,"layer":5,"req_id":"x","pos":0,"tok":5,"experts":[1,2],"weights":[1,1]}\n',
    )
    bad.insert(
        6,
        b'{"type":"route","step":1,"token":0,"layer":0,"req_id":"x","pos":0,"tok":5,"experts":[1,1],"weights":[1,1]}\n',
    )
    bad.append(b'{"type":"route","step":2,"tok')  # killed mid-line
    path.write_bytes(b"".join(bad))
    warnings = []
    log, got = read_all(path, warn=warnings.append)
    assert len(got) == 6 - 3
    assert [p.split(": ", 1)[1] for p in log.problems] == [
        "expert ids [9, 1] are not 2 distinct ids in 0..7",
        "not valid JSON",
        "route line without 'token'",
        "layer 5 is not a logged layer",
        "expert ids [1, 1] are not 2 distinct ids in 0..7",
        "truncated last line",
    ]
    assert [int(p.split(":")[1]) for p in log.problems] == [3, 4, 5, 6, 7, 11]
    assert len(warnings) == 6 and warnings[0].endswith("(skipped)")
    with pytest.raises(routes.RouteLogError, match=r"a.jsonl:3: expert ids \[9, 1\]"):
        read_all(path, strict=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file, no header line"),
        (b"nope\n", ":1: the header line is not JSON"),
        (b'{"type":"route"}\n', ":1: the first line is not a header"),
        (
            b'{"type":"meta","schema":4,"layers":[0],"num_experts":2,"top_k":1}\n',
            "schema 4 is not one",
        ),
        (b'{"type":"meta","schema":2,"layers":[0],"top_k":1}\n', "the header has no 'num_experts'"),
    ],
)
def test_unreadable_headers(tmp_path, content, message):
    path = tmp_path / "h.jsonl"
    path.write_bytes(content)
    with pytest.raises(routes.RouteLogError, match=message):
        routes.read_header(path)


def two_rank_files(tmp_path, **second):
    rng = np.random.default_rng(1)
    a = write_log(
        tmp_path / "r.hostA.dp0-pp0.jsonl",
        [distinct_ids(rng, 4, 2, 2, 8)],
        ranks={"dp": 0, "pp": 0, "tp": 0},
        hostname="hostA",
    )
    b = write_log(
        tmp_path / "r.hostB.dp1-pp0.jsonl",
        [distinct_ids(rng, 5, 2, 2, 8)],
        **{"ranks": {"dp": 1, "pp": 0, "tp": 0}, "hostname": "hostB", **second},
    )
    return a, b


def test_find_and_merge_files_folders_globs(tmp_path):
    a, b = two_rank_files(tmp_path)
    assert routes.find_logs([str(tmp_path)]) == [a.resolve(), b.resolve()]
    assert routes.find_logs([str(tmp_path / "*.dp1-*.jsonl")]) == [b.resolve()]
    assert routes.find_logs([str(a), str(tmp_path)]) == [a.resolve(), b.resolve()]
    logs = routes.open_logs(routes.find_logs([str(tmp_path)]))
    assert sum(len(list(routes.iter_routes(log))) for log in logs) == (4 + 5) * 2
    assert routes.rank_files(tmp_path / "r.jsonl") == [a, b]
    with pytest.raises(routes.RouteLogError, match="no such file"):
        routes.find_logs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(routes.RouteLogError, match="no route logs found"):
        routes.find_logs([str(tmp_path / "*.txt")])


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"run_id": "run-2"}, "different runs \\(run_id 'run-1' != 'run-2'\\)"),
        ({"top_k": 4}, "different runs \\(top_k 2 != 4\\)"),
        ({"ranks": {"dp": 0, "pp": 0, "tp": 0}}, "both hold dp/pp/tp ranks \\(0, 0, 0\\)"),
    ],
)
def test_merge_refuses_files_of_different_runs(tmp_path, second, message):
    two_rank_files(tmp_path, **second)
    with pytest.raises(routes.RouteLogError, match=message):
        routes.open_logs(routes.find_logs([str(tmp_path)]))


def test_merge_refuses_mixed_schemas(tmp_path):
    shutil.copy(DATA / "schema1.jsonl", tmp_path / "old.jsonl")
    write_log(tmp_path / "new.jsonl", [], run_id=None, model_id="Qwen/Qwen1.5-MoE-A2.7B-Chat")
    with pytest.raises(routes.RouteLogError, match=r"\(schema 3\) with .*old.jsonl \(schema 1\)"):
        routes.open_logs(routes.find_logs([str(tmp_path)]))


def test_wait_until_complete_waits_for_the_writers_lock(tmp_path):
    path = write_log(tmp_path / "w.jsonl", [])
    holder = open(path, "rb")  # noqa: SIM115
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.3, holder.close).start()
    t0 = time.monotonic()
    routes.wait_until_complete(path, timeout=10)
    assert time.monotonic() - t0 >= 0.25
    with open(path, "rb") as again:
        fcntl.flock(again, fcntl.LOCK_EX)
        with pytest.raises(routes.RouteLogError, match="still being written"):
            routes.wait_until_complete(path, timeout=0.2)
