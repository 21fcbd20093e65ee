#!/usr/bin/env python3
"""How long plot_experts.py takes on a large log (target: 1 GB in under a minute).

Writes a synthetic schema-2 log of about --gb gigabytes with the real encoder
(24 layers, 60 experts, top-4, like Qwen1.5-MoE-A2.7B), then times the whole
analysis (parse, count, metrics, PNG, summary) and reports peak memory.

  python3 bench/parse_bench.py --gb 1 --dir /tmp
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "vllm_overlay/vllm/model_executor/layers/fused_moe"))

from moe_route_log import log_format  # noqa: E402

from moe_profiler import report  # noqa: E402


def write_log(path: Path, target_bytes: int) -> int:
    rng = np.random.default_rng(0)
    layers, experts, top_k, tokens_per_step = list(range(24)), 60, 4, 512
    written, step = 0, 0
    with open(path, "wb") as f:
        header = {
            "layers": layers,
            "num_experts": experts,
            "top_k": top_k,
            "run_id": "bench",
            "model_id": "synthetic",
        }
        written += f.write(log_format.header_line(header))
        while written < target_bytes:
            step += 1
            ids = np.argsort(rng.random((tokens_per_step, 24, experts)), axis=-1)[:, :, :top_k]
            weights = rng.random((tokens_per_step, 24, top_k)).astype(np.float32) / 4
            reqs = [f"{step}-{i}-0123abcd" for i in range(16)]
            counts = np.full(16, tokens_per_step // 16)
            positions = np.tile(np.arange(tokens_per_step // 16), 16) + step
            toks = rng.integers(0, 150_000, tokens_per_step)
            written += f.write(
                log_format.request_lines(step, reqs, counts)
                + log_format.encode_routes(
                    step, layers, reqs, counts, positions, toks, ids.astype(np.int32), weights
                )
            )
        written += f.write(log_format.trailer_line({"steps": step}))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gb", type=float, default=1.0, help="log size in GB (default: %(default)s)"
    )
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the log goes")
    args = parser.parse_args()
    path = args.dir / "parse_bench.jsonl"
    t0 = time.perf_counter()
    size = write_log(path, int(args.gb * 1e9))
    print(f"wrote {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s: {path}")
    t0 = time.perf_counter()
    summary = report.analyze(
        [str(path)], args.dir / "parse_bench.png", args.dir / "parse_bench.json"
    )
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"analysed {summary['route_lines']:,} route lines ({size / 1e9:.2f} GB) in {seconds:.1f} s "
        f"= {size / 1e6 / seconds:.0f} MB/s; peak RSS {peak_mb:.0f} MB"
    )
    path.unlink()


if __name__ == "__main__":
    main()
