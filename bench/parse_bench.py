#!/usr/bin/env python3
"""How fast plot_experts.py reads a large all-layer log (target: >= 150 MB/s, < 1 GB RSS).

Writes a synthetic schema-3 log of about --gb gigabytes with the real encoder, shaped
like an all-layer Qwen1.5-MoE-A2.7B log (24 layers, 60 experts, top-4, request lines
for 16 requests of 32 tokens per step), then runs plot_experts.py on it in a child
process (parse, count, metrics, PNG, summary: everything it does) --runs times and
reports, per run, MB/s and route lines/s of wall time, CPU seconds and the child's
peak RSS, with the machine's load average before and after (other people's work
on a shared machine shows there).

  python3 bench/parse_bench.py --gb 1 --dir /tmp
  python3 bench/parse_bench.py --log /tmp/parse_bench.jsonl --runs 3   # an existing log
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

from moe_route_log import log_format  # noqa: E402

LAYERS, EXPERTS, TOP_K, TOKENS_PER_STEP, REQUESTS = list(range(24)), 60, 4, 512, 16


def write_log(path: Path, target_bytes: int) -> int:
    """A log of about ``target_bytes``; returns its size."""
    rng = np.random.default_rng(0)
    written, step = 0, 0
    per_request = TOKENS_PER_STEP // REQUESTS
    with open(path, "wb") as f:
        header = {
            "layers": LAYERS,
            "num_experts": EXPERTS,
            "top_k": TOP_K,
            "run_id": "bench",
            "model_id": "synthetic",
        }
        written += f.write(log_format.header_line(header))
        while written < target_bytes:
            step += 1
            shape = (TOKENS_PER_STEP, len(LAYERS), EXPERTS)
            ids = np.argsort(rng.random(shape), axis=-1)[:, :, :TOP_K].astype(np.int32)
            weights = rng.random((TOKENS_PER_STEP, len(LAYERS), TOP_K)).astype(np.float32) / 4
            reqs = [f"{step}-{i}-0123abcd" for i in range(REQUESTS)]
            counts = np.full(REQUESTS, per_request)
            positions = np.tile(np.arange(per_request), REQUESTS)
            toks = rng.integers(0, 150_000, TOKENS_PER_STEP)
            written += f.write(
                log_format.request_lines(step, reqs, np.full(REQUESTS, per_request // 2))
                + log_format.encode_routes(
                    step, LAYERS, reqs, counts, positions, toks, ids, weights
                )
            )
        written += f.write(log_format.trailer_line({"steps": step}))
    return written


def time_plot_experts(log: Path, out_dir: Path) -> dict:
    """One run of plot_experts.py in a child process: wall, CPU, peak RSS, lines."""
    summary = out_dir / "parse_bench.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(REPO / "plot_experts.py"),
            str(log),
            *("--out", str(out_dir / "parse_bench.png"), "--summary", str(summary)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    size = log.stat().st_size
    lines = json.loads(summary.read_text())["route_lines"]
    return {
        "bytes": size,
        "route_lines": lines,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
        ),
        "mb_per_s": round(size / 1e6 / seconds, 1),
        "lines_per_s": round(lines / seconds),
        "peak_rss_mb": round(after.ru_maxrss / 1024),  # the largest child so far
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gb", type=float, default=1.0, help="size of the log to write, GB (default: %(default)s)"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("/tmp"), help="where the log and outputs go"
    )
    parser.add_argument(
        "--log", type=Path, default=None, help="time this existing log instead of writing one"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="runs of plot_experts.py (default: %(default)s)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the written log (default: delete it)"
    )
    args = parser.parse_args()
    log = args.log
    if log is None:
        log = args.dir / "parse_bench.jsonl"
        t0 = time.perf_counter()
        size = write_log(log, int(args.gb * 1e9))
        print(f"wrote {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s: {log}")
    print(f"{os.cpu_count()} CPUs; plot_experts.py on {log}:")
    for _ in range(args.runs):
        r = time_plot_experts(log, args.dir)
        print(
            f"  {r['route_lines']:,} route lines, {r['bytes'] / 1e9:.2f} GB in {r['seconds']} s "
            f"= {r['mb_per_s']} MB/s, {r['lines_per_s']:,} lines/s; CPU {r['cpu_seconds']} s; "
            f"peak RSS {r['peak_rss_mb']} MB; load {r['load_before']} -> {r['load_after']}"
        )
        print("  " + json.dumps(r))
    if args.log is None and not args.keep:
        log.unlink()


if __name__ == "__main__":
    main()
