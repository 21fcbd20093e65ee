"""The writer process, driven through its real handle (writer.WriterProcess).

Ordering, back-pressure, flush at end of stream, and I/O errors (disk full).
"""

import json
import os
import resource
import threading
import time

import numpy as np
import pytest

from moe_profiler.reading import routes
from moe_route_log import wire
from moe_route_log.writer import WriterProcess, WriterStartError

META = {"layers": [0, 2], "num_experts": 16, "top_k": 2, "run_id": "t"}


def frame(step, tokens, rng=None, layers=2, top_k=2):
    rng = rng or np.random.default_rng(step)
    ids = np.stack([rng.permutation(16)[:top_k] for _ in range(tokens * layers)]).astype(np.int32)
    ids = ids.reshape(tokens, layers, top_k)
    weights = rng.random((tokens, layers, top_k)).astype(np.float32)
    counts = np.array([tokens])
    return wire.routes_frame(
        step,
        [f"r{step}-x"],
        counts,
        np.array([tokens // 2]),
        np.arange(tokens),
        np.arange(tokens, dtype=np.int32) + 100,
        wire.pack_routes(ids, weights),
        (tokens, layers, top_k),
    )


def read_lines(path):
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def test_frames_become_lines_in_order_with_trailer(tmp_path):
    path = tmp_path / "log.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20)
    w.send(wire.json_frame(wire.HEADER, META))
    sizes = [1, 7, 300, 2, 64] * 10
    for step, n in enumerate(sizes, start=1):
        w.send(frame(step, n))
    w.send(wire.json_frame(wire.CLOSE, {"steps": len(sizes), "engine_wait_s": 0.5}))
    w.close()
    routes.wait_until_complete(path, timeout=60)
    lines = read_lines(path)
    assert lines[0] == {"type": "meta", "schema": 3, **META}
    requests = [r for r in lines[1:-1] if r["type"] == "request"]
    body, trailer = [r for r in lines[1:-1] if r["type"] == "route"], lines[-1]
    # each pass has a request the pass before did not have: one request line each
    assert requests == [
        {"type": "request", "step": s, "req_id": f"r{s}-x", "prompt_len": n // 2}
        for s, n in enumerate(sizes, 1)
    ]
    assert [r["tok"] for r in body[::2]] == [t + 100 for n in sizes for t in range(n)]
    assert len(body) == 2 * sum(sizes)
    order = [(r["step"], r["token"], r["layer"]) for r in body]
    assert order == sorted(order)
    assert [r["step"] for r in body[::2]] == [s for s, n in enumerate(sizes, 1) for _ in range(n)]
    assert trailer["type"] == "end" and trailer["lines"] == 2 * sum(sizes)
    assert trailer["tokens"] == sum(sizes) and trailer["engine_wait_s"] == 0.5
    assert not w.reported_failure(timeout=0.5)


def test_back_pressure_blocks_the_sender_and_loses_nothing(tmp_path):
    """A slow reader (a FIFO read 4 KiB at a time) and a 1-byte writer buffer."""
    fifo = tmp_path / "slow.jsonl"
    os.mkfifo(fifo)
    received = bytearray()

    def slow_reader():
        with open(fifo, "rb") as f:
            while chunk := f.read(4096):
                received.extend(chunk)
                time.sleep(0.002)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    w = WriterProcess(str(fifo), buffer_bytes=1)
    w.send(wire.json_frame(wire.HEADER, META))
    blocked = 0.0
    for step in range(1, 41):
        t0 = time.perf_counter()
        w.send(frame(step, 200))
        blocked += time.perf_counter() - t0
    w.send(wire.json_frame(wire.CLOSE, {"steps": 40}))
    w.close()
    reader.join(timeout=120)
    lines = [json.loads(x) for x in received.splitlines()]
    assert len(lines) == 1 + 40 * (200 * 2 + 1) + 1  # a request line per pass
    assert lines[-1]["lines"] == 40 * 200 * 2
    assert lines[-1]["writer_buffer_full_waits"] > 0  # the writer's queue was full ...
    assert blocked > 0.2  # ... and the sender waited for it, instead of anything being dropped


def test_end_of_stream_without_close_keeps_every_line(tmp_path, capfd):
    path = tmp_path / "log.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20)
    w.send(wire.json_frame(wire.HEADER, META))
    for step in (1, 2, 3):
        w.send(frame(step, 5))
    w.close()  # what the kernel does when the engine process is killed
    routes.wait_until_complete(path, timeout=60)
    lines = read_lines(path)
    assert len(lines) == 1 + 3 * (1 + 10) and lines[-1]["type"] == "route"
    assert "the engine went away (it exited)" in capfd.readouterr().err


def test_engine_killed_inside_a_frame(tmp_path, capfd):
    path = tmp_path / "log.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20)
    w.send(wire.json_frame(wire.HEADER, META))
    w.send(frame(1, 4))
    head, *rest = frame(2, 4)
    w.send([head, rest[0]])  # half a frame, then the pipe closes
    w.close()
    routes.wait_until_complete(path, timeout=60)
    assert len(read_lines(path)) == 1 + 1 + 8  # header, request line, 4 tokens x 2 layers
    assert "its pipe broke" in capfd.readouterr().err


def test_disk_full_at_once_is_reported_once(capfd):
    w = WriterProcess("/dev/full", buffer_bytes=1 << 20)  # every write: ENOSPC
    w.send(wire.json_frame(wire.HEADER, META))
    assert w.reported_failure()
    with pytest.raises(BrokenPipeError):
        for step in range(1, 200):
            w.send(frame(step, 50))
    err = capfd.readouterr().err
    assert err.count("VLLM_LOG_MOE:") == 1
    assert "writing /dev/full failed (No space left on device)" in err


def test_file_size_limit_mid_run_stops_logging_once(tmp_path, capfd):
    """A real write error after some lines: RLIMIT_FSIZE set on the running writer."""
    path = tmp_path / "log.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20)
    w.send(wire.json_frame(wire.HEADER, META))
    w.send(frame(1, 10))
    deadline = time.time() + 30
    while path.stat().st_size < 500 and time.time() < deadline:
        time.sleep(0.01)
    limit = path.stat().st_size + 2000
    resource.prlimit(w.pid, resource.RLIMIT_FSIZE, (limit, limit))
    with pytest.raises(BrokenPipeError):
        for step in range(2, 2000):
            w.send(frame(step, 50))
    assert w.reported_failure()
    routes.wait_until_complete(path, timeout=60)
    err = capfd.readouterr().err
    assert err.count("VLLM_LOG_MOE:") == 1 and "File too large" in err
    with open(path, "rb") as f:  # every complete line still parses
        complete = [line for line in f if line.endswith(b"\n")]
    assert len(complete) > 10 and all(json.loads(line) for line in complete)


def test_unopenable_log_fails_at_start(tmp_path, capfd):
    with pytest.raises(WriterStartError, match="did not start"):
        WriterProcess(str(tmp_path / "no-dir" / "log.jsonl"), buffer_bytes=1)
    assert "cannot open" in capfd.readouterr().err


def test_writer_leaves_the_engine_process_tree(tmp_path):
    """vLLM SIGKILLs its engine's descendants on a slow shutdown: the writer must not be one."""
    path = tmp_path / "log.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20)
    with open(f"/proc/{w.pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    assert parent != os.getpid()
    w.close()
    routes.wait_until_complete(path, timeout=60)


def wait_for_exit(w, timeout=60):
    """Until the writer process (a grandchild: no waitpid) has finished every file."""
    deadline = time.time() + timeout
    while os.path.exists(f"/proc/{w.pid}") and time.time() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{w.pid}"), "the writer did not finish"


def multi_request_frame(step, req_ids, tokens_each=3, layers=2, top_k=2):
    n = tokens_each * len(req_ids)
    ids = np.tile(np.arange(top_k, dtype=np.int32), (n, layers, 1))
    weights = np.full((n, layers, top_k), 0.5, dtype=np.float32)
    return wire.routes_frame(
        step,
        req_ids,
        np.full(len(req_ids), tokens_each),
        np.full(len(req_ids), 1),
        np.tile(np.arange(tokens_each), len(req_ids)),
        np.arange(n, dtype=np.int32),
        wire.pack_routes(ids, weights),
        (n, layers, top_k),
    )


def test_rotation_writes_complete_parts_and_keeps_the_newest(tmp_path):
    path = tmp_path / "log.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20, max_bytes=20_000, keep=3)
    w.send(wire.json_frame(wire.HEADER, META))
    for step in range(1, 41):  # 40 passes x 30 tokens x 2 layers, ~150 bytes a line
        w.send(frame(step, 30))
    w.send(wire.json_frame(wire.CLOSE, {"steps": 40}))
    w.close()
    wait_for_exit(w)
    parts = sorted(tmp_path.glob("log.p*.jsonl"))
    assert not path.exists()
    numbers = [int(p.name.split(".")[1][1:]) for p in parts]
    assert len(parts) == 3 and numbers == list(range(numbers[0], numbers[0] + 3))
    assert numbers[0] > 0, "older parts were deleted"
    for number, part in zip(numbers, parts, strict=True):
        lines = read_lines(part)
        assert lines[0]["type"] == "meta" and lines[0]["part"] == number
        assert lines[0]["log_path"] == str(part) and lines[0]["layers"] == META["layers"]
        routes_ = [r for r in lines if r["type"] == "route"]
        assert lines[-1]["type"] == "end" and lines[-1]["lines"] == len(routes_)
        assert lines[1]["type"] == "request", "each part names its requests' prompt lengths"
        if number != numbers[-1]:
            assert lines[-1]["reason"] == "rotated" and part.stat().st_size >= 20_000
    assert read_lines(parts[-1])[-1]["steps"] == 40  # the engine's trailer closes the last part


def test_rotation_without_keep_loses_nothing(tmp_path):
    path = tmp_path / "r.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20, max_bytes=10_000)
    w.send(wire.json_frame(wire.HEADER, META))
    for step in range(1, 21):
        w.send(frame(step, 10))
    w.send(wire.json_frame(wire.CLOSE, {"steps": 20}))
    w.close()
    wait_for_exit(w)
    parts = sorted(tmp_path.glob("r.p*.jsonl"))
    assert [p.name for p in parts] == [f"r.p{i:05d}.jsonl" for i in range(len(parts))]
    assert len(parts) > 2
    lines = [r for p in parts for r in read_lines(p) if r["type"] == "route"]
    assert [(r["step"], r["token"], r["layer"]) for r in lines] == [
        (s, t, layer) for s in range(1, 21) for t in range(10) for layer in (0, 2)
    ]


def test_sampling_keeps_whole_requests_by_id(tmp_path):
    from moe_route_log.log_format import is_sampled

    path = tmp_path / "s.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20)
    w.send(wire.json_frame(wire.HEADER, {**META, "sample": 0.3}))
    req_ids = [f"cmpl-{i}-0-{i:08x}" for i in range(40)]
    for step in (1, 2):
        w.send(multi_request_frame(step, req_ids))
    w.send(wire.json_frame(wire.CLOSE, {"steps": 2}))
    w.close()
    routes.wait_until_complete(path, timeout=60)
    lines = read_lines(path)
    kept = [r for r in req_ids if is_sampled(r, 0.3)]
    assert 4 < len(kept) < 25  # about 30 % of 40
    got = [r for r in lines if r["type"] == "route"]
    assert sorted({r["req_id"] for r in got}) == sorted(kept)
    assert len(got) == len(kept) * 3 * 2 * 2  # every token (3) of both passes, 2 layers
    index = {r: i for i, r in enumerate(req_ids)}
    # the token field keeps the row in the full pass, the tok field the token id of that row
    assert all(r["token"] == index[r["req_id"]] * 3 + r["pos"] == r["tok"] for r in got)
    assert lines[-1]["lines"] == len(got)
    # the same ids are in or out whatever the random suffix vLLM adds
    assert is_sampled("cmpl-7-0-aaaaaaaa", 0.3) == is_sampled("cmpl-7-0-bbbbbbbb", 0.3)
    assert all(is_sampled(r, 1.0) for r in req_ids)


def test_line_frames_are_written_as_they_are(tmp_path):
    path = tmp_path / "c.jsonl"
    w = WriterProcess(str(path), buffer_bytes=1 << 20)
    w.send(wire.json_frame(wire.HEADER, {**META, "mode": "counts"}))
    window = {"type": "counts", "t_start": 1.5, "t_end": 2.5, "counts": [[1, 2], [3, 4]]}
    w.send(wire.json_frame(wire.LINE, window))
    w.send(wire.json_frame(wire.LINE, {"type": "control", "action": "stop", "t": 3.0, "step": 9}))
    w.send(wire.json_frame(wire.CLOSE, {"steps": 9}))
    w.close()
    routes.wait_until_complete(path, timeout=60)
    lines = read_lines(path)
    assert lines[1:3] == [window, {"type": "control", "action": "stop", "t": 3.0, "step": 9}]
    assert lines[-1]["type"] == "end" and lines[-1]["lines"] == 0


@pytest.mark.parametrize("encoders", [2, 3])
def test_encoder_processes_write_the_same_log(tmp_path, encoders):
    """A pool of encoder processes: the same bytes as one, rotation and sampling included."""
    logs = {}
    for n in (1, encoders):
        path = tmp_path / f"e{n}" / "log.jsonl"
        path.parent.mkdir()
        w = WriterProcess(str(path), buffer_bytes=1 << 20, max_bytes=10_000, encoders=n)
        w.send(wire.json_frame(wire.HEADER, {**META, "sample": 0.5}))
        for step in range(1, 31):
            req_ids = [f"r{step % 4}-{i}-x" for i in range(step % 5 + 1)]
            w.send(multi_request_frame(step, req_ids, tokens_each=6))
            if step == 17:
                w.send(wire.json_frame(wire.LINE, {"type": "control", "action": "stop"}))
        w.send(wire.json_frame(wire.CLOSE, {"steps": 30}))
        w.close()
        wait_for_exit(w)
        logs[n] = [
            p.read_bytes().replace(str(path.parent).encode(), b"DIR")
            for p in sorted(path.parent.glob("log.p*.jsonl"))
        ]
    assert len(logs[1]) > 2 and logs[encoders][:-1] == logs[1][:-1]
    last_1, last_n = (
        [json.loads(x) for x in b.splitlines()] for b in (logs[1][-1], logs[encoders][-1])
    )
    assert last_1[:-1] == last_n[:-1]  # the trailers differ in writer_encoders and CPU time
    assert last_n[-1]["writer_encoders"] == encoders and last_1[-1]["lines"] == last_n[-1]["lines"]
