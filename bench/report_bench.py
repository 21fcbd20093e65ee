#!/usr/bin/env python3
"""What the whole report (analyze_routes.py) costs on a large all-layer log.

Writes a synthetic schema-3 log of about --gb gigabytes with the real encoder
(24 layers, 60 experts, top-4, like Qwen1.5-MoE-A2.7B): an engine serving 64
requests at a time (prompts of 40-199 tokens prefilled in one pass, then 127
decode passes: the last of 128 tokens is never fed back), token ids drawn by
Zipf's law (exponent 1.1) from a 151,936-token vocabulary, and routes that depend
on the token, the layer and a per-layer skew (so every analysis has something to
find). Then runs analyze_routes.py on it in a child process and
reports its wall time and peak memory (maximum resident set size).

  python3 bench/report_bench.py --gb 1 --dir /tmp
  python3 bench/report_bench.py --gb 1 --keep && python3 bench/report_bench.py --reuse --no-eplb
  python3 bench/report_bench.py --gb 1 --uniform-tokens   # worst case for token_experts
"""

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

from moe_route_log import log_format  # noqa: E402

LAYERS, EXPERTS, TOP_K, VOCAB = 24, 60, 4, 151_936
ACTIVE, OUTPUT = 64, 128


class SyntheticEngine:
    """Requests in flight: each step decodes one token of every running request and
    prefills the prompts of the requests that replace finished ones."""

    def __init__(self, rng: np.random.Generator, uniform_tokens: bool) -> None:
        self.rng, self.uniform = rng, uniform_tokens
        self.preference = rng.normal(0, 1.5, (LAYERS, 997, EXPERTS)).astype(np.float32)
        self.skew = rng.normal(0, 0.8, (LAYERS, EXPERTS)).astype(np.float32)
        self.next_id, self.running = 0, []  # [req_id, prompt_len, next position]
        rank_weights = 1.0 / np.arange(1, VOCAB + 1) ** 1.1  # Zipf's law over the vocabulary
        self.zipf_cdf = np.cumsum(rank_weights) / rank_weights.sum()
        self.id_of_rank = rng.permutation(VOCAB)

    def tokens(self, n: int) -> np.ndarray:
        if self.uniform:
            return self.rng.integers(0, VOCAB, n)
        ranks = np.searchsorted(self.zipf_cdf, self.rng.random(n))
        return self.id_of_rank[np.minimum(ranks, VOCAB - 1)]

    def step(self, step: int) -> bytes:
        new = []
        while len(self.running) < ACTIVE:
            req = [f"{self.next_id}-{self.next_id:08x}", int(self.rng.integers(40, 200)), 0]
            self.next_id += 1
            self.running.append(req)
            new.append(req)
        counts = np.array([r[1] if r[2] == 0 else 1 for r in self.running])
        positions = np.concatenate(
            [np.arange(r[2], r[2] + c) for r, c in zip(self.running, counts, strict=True)]
        )
        toks = self.tokens(len(positions))
        logits = self.preference[:, toks % 997].transpose(1, 0, 2) + self.skew
        logits += self.rng.normal(0, 1.0, logits.shape).astype(np.float32)
        ids = np.argpartition(-logits, TOP_K, axis=2)[:, :, :TOP_K]
        top = np.take_along_axis(logits, ids, axis=2)
        weights = np.exp(top) / np.exp(logits).sum(axis=2, keepdims=True)
        chunk = log_format.request_lines(step, [r[0] for r in new], [r[1] for r in new])
        chunk += log_format.encode_routes(
            step,
            list(range(LAYERS)),
            [r[0] for r in self.running],
            counts,
            positions,
            toks,
            ids.astype(np.int32),
            weights.astype(np.float32),
        )
        for r, c in zip(self.running, counts, strict=True):
            r[2] += c
        self.running = [r for r in self.running if r[2] < r[1] + OUTPUT - 1]
        return chunk


def write_log(path: Path, target_bytes: int, uniform_tokens: bool) -> tuple[int, int]:
    """The synthetic log; returns (bytes, passes)."""
    engine = SyntheticEngine(np.random.default_rng(0), uniform_tokens)
    header = {
        "layers": list(range(LAYERS)),
        "num_layers": LAYERS,
        "num_experts": EXPERTS,
        "top_k": TOP_K,
        "run_id": "report-bench",
        "model_id": "synthetic",
    }
    step = 0
    with open(path, "wb") as f:
        written = f.write(log_format.header_line(header))
        while written < target_bytes:
            step += 1
            written += f.write(engine.step(step))
        written += f.write(log_format.trailer_line({"steps": step}))
    return written, step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gb", type=float, default=1.0, help="log size in GB (default: %(default)s)"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("/tmp"), help="where the log and the report go"
    )
    parser.add_argument(
        "--uniform-tokens",
        action="store_true",
        help="token ids uniform over the vocabulary (the most distinct (expert, token) pairs)",
    )
    parser.add_argument(
        "--no-eplb", action="store_true", help="pass --no-eplb to analyze_routes.py"
    )
    parser.add_argument("--keep", action="store_true", help="keep the log (default: delete it)")
    parser.add_argument(
        "--reuse", action="store_true", help="analyse the log a --keep run left in --dir"
    )
    args = parser.parse_args()
    path = args.dir / "report_bench.jsonl"
    if args.reuse:
        size = path.stat().st_size
    else:
        t0 = time.perf_counter()
        size, passes = write_log(path, int(args.gb * 1e9), args.uniform_tokens)
        seconds = time.perf_counter() - t0
        print(f"wrote {size / 1e9:.2f} GB, {passes:,} passes in {seconds:.1f} s: {path}")
    command = [sys.executable, str(REPO / "analyze_routes.py"), str(path)]
    command += ["--out", str(args.dir / "report_bench")] + (["--no-eplb"] if args.no_eplb else [])
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"report of {size / 1e9:.2f} GB in {seconds:.1f} s = {size / 1e6 / seconds:.0f} MB/s; "
        f"peak RSS of analyze_routes.py {peak_mb:.0f} MB"
    )
    if not (args.keep or args.reuse):
        path.unlink()


if __name__ == "__main__":
    main()
