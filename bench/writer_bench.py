#!/usr/bin/env python3
"""The writer's ceiling: route lines per second it turns into JSONL, by encoder processes.

Feeds a real writer process (moe_route_log/writer.py, through its pipe, as an
engine does) passes of a 48-layer, top-8, 128-expert model (Qwen3-30B-A3B's
shape) as fast as it takes them, and times it from the first pass to the last
byte on disk. Divided by the layers, that is the token rate up to which an
all-layer log keeps up; above it the engine waits (back-pressure).

  python3 bench/writer_bench.py --encoders 1,2,4 --seconds 20 --dir /tmp
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
import sys  # noqa: E402

sys.path.append(str(REPO))

from moe_route_log import wire  # noqa: E402
from moe_route_log.writer import WriterProcess  # noqa: E402

LAYERS, TOP_K, EXPERTS = 48, 8, 128


def make_pass(rng, tokens: int, requests: int) -> tuple[list, int]:
    """One pass of ``tokens`` rows (a mix of decode and prefill requests) as a ROUTES frame."""
    ids = np.argsort(rng.random((tokens, LAYERS, EXPERTS)), axis=-1)[:, :, :TOP_K]
    weights = rng.dirichlet(np.ones(EXPERTS), (tokens, LAYERS))[:, :, :TOP_K]
    per_req = np.full(requests, tokens // requests)
    per_req[0] += tokens - per_req.sum()
    req_ids = [f"cmpl-{i:016x}-0-{i * 7919 % 16**8:08x}" for i in range(requests)]
    positions = np.concatenate([np.arange(n) + 200 for n in per_req])
    frame = wire.routes_frame(
        1,
        req_ids,
        per_req,
        np.full(requests, 150),
        positions,
        rng.integers(0, 151_000, tokens).astype(np.int32),
        wire.pack_routes(ids, weights),
        (tokens, LAYERS, TOP_K),
    )
    return frame, tokens


def measure(encoders: int, seconds: float, directory: Path, tokens: int) -> dict:
    """Lines, bytes and seconds for one writer with ``encoders`` encoder processes."""
    rng = np.random.default_rng(0)
    frames = [make_pass(rng, tokens, requests=64) for _ in range(4)]
    path = directory / f"writer_bench_{encoders}.jsonl"
    writer = WriterProcess(str(path), 256 * 2**20, encoders=encoders)
    meta = {"layers": list(range(LAYERS)), "num_experts": EXPERTS, "top_k": TOP_K}
    writer.send(wire.json_frame(wire.HEADER, meta))
    began, sent = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        frame, _ = frames[sent % len(frames)]
        writer.send(frame)
        sent += 1
    writer.send(wire.json_frame(wire.CLOSE, {"steps": sent}))
    writer.close()
    while os.path.exists(f"/proc/{writer.pid}"):  # until its last byte is on disk
        time.sleep(0.01)
    elapsed = time.perf_counter() - began
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        trailer = json.loads(f.read().splitlines()[-1])
    size = path.stat().st_size
    path.unlink()
    lines = trailer["lines"]
    return {
        "encoders": encoders,
        "passes": sent,
        "lines": lines,
        "seconds": round(elapsed, 2),
        "lines_per_s": round(lines / elapsed),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "bytes_per_line": round(size / lines, 1),
        "tokens_per_s_all_48_layers": round(lines / elapsed / LAYERS),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--encoders", default="1,2", help="comma list of encoder process counts")
    p.add_argument("--seconds", type=float, default=15.0, help="how long to send per count")
    p.add_argument("--tokens", type=int, default=512, help="tokens per pass")
    p.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the log is written")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    results = []
    for n in (int(x) for x in args.encoders.split(",")):
        results.append(measure(n, args.seconds, args.dir, args.tokens))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        cpus = os.cpu_count()
        args.out.write_text(json.dumps({"cpus": cpus, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
