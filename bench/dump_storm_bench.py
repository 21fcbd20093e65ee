#!/usr/bin/env python3
"""Does a storm of dump calls stall the engine? A real CPU ``vllm serve``, with and without one.

One ``vllm serve`` of the tests' tiny MoE (CPU build, routes of every layer, the
heaviest mode for a dump: it waits for the drain thread). In each rep, in a
rotating order, the same traffic runs once quietly and once under each storm:
``--concurrency`` requests at a time through the ``openai`` client, ``--requests``
requests of ``--max-tokens`` output tokens (``ignore_eos``). During a storm,
``--dumpers`` clients call ``/dump_expert_distribution_record`` back to back
(``storm``: each writes its file, so pruning runs too; ``storm_nofile``:
``?file=0``). Per phase: output tokens/s, passes/s (the recorder's step count,
read before and after), dumps/s and their median latency. The result is the
median over reps of each storm's ratio to the quiet phase of the same rep, with a
bootstrap 95 % interval (as bench/overhead_bench.py).

  python bench/dump_storm_bench.py --reps 7 --out bench/results/cpu-dump-storm.json

Needs the CPU test environment; it installs this checkout's logger (as ``apply_hook.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # moe_profiler
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the server helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead_bench import median_ci, turn_order
from serve_helpers import REPO, Server

from moe_profiler.running import prompts

GSM8K = REPO.parent / "shared/data/gsm8k/test.jsonl"
DUMP = "/dump_expert_distribution_record"
# storm_health: as many calls of an endpoint that asks the engine nothing (HTTP and CPU alone)
STORMS = {"storm": DUMP, "storm_nofile": DUMP + "?file=0", "storm_health": "/health"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7, help="reps of every phase (default 7)")
    p.add_argument("--requests", type=int, default=32, help="requests per phase (default 32)")
    p.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight at once (default 8)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=64, help="output tokens per request (default 64)"
    )
    p.add_argument(
        "--dumpers", type=int, default=4, help="clients calling the dump back to back (default 4)"
    )
    p.add_argument(
        "--phases",
        default="quiet,storm,storm_nofile,storm_health",
        help="comma list of quiet, storm, storm_nofile, storm_health (default all)",
    )
    p.add_argument("--out", type=Path, help="write the runs and the summary here (JSON)")
    return p.parse_args()


async def traffic(server: Server, prompts: list[str], args) -> int:
    """Run the requests, ``concurrency`` at a time; the output tokens they got."""
    gate = asyncio.Semaphore(args.concurrency)
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none") as client:

        async def one(prompt: str) -> int:
            async with gate:
                r = await client.completions.create(
                    model=str(server.model),
                    prompt=prompt,
                    max_tokens=args.max_tokens,
                    temperature=0.0,
                    extra_body={"ignore_eos": True},
                )
                return r.usage.completion_tokens

        return sum(await asyncio.gather(*(one(p) for p in prompts)))


async def storm(server: Server, path: str, dumpers: int, done: asyncio.Event) -> list[float]:
    """Dump back to back from ``dumpers`` clients until ``done``; each dump's latency."""
    latencies: list[float] = []

    async def dumper(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            began = time.perf_counter()
            r = await client.request("GET" if path == "/health" else "POST", server.url + path)
            r.raise_for_status()
            latencies.append(time.perf_counter() - began)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(dumper(client) for _ in range(dumpers)))
    return latencies


def passes(server: Server) -> int:
    return sum(server.json("/expert_distribution_status")["last_step"])


async def phase(server: Server, name: str, prompts: list[str], args) -> dict:
    before = passes(server)
    done = asyncio.Event()
    began = time.perf_counter()
    dumping = (
        asyncio.ensure_future(storm(server, STORMS[name], args.dumpers, done))
        if name in STORMS
        else None
    )
    tokens = await traffic(server, prompts, args)
    wall = time.perf_counter() - began
    done.set()
    latencies = await dumping if dumping else []
    return {
        "phase": name,
        "wall_s": wall,
        "output_tok_s": tokens / wall,
        "passes_s": (passes(server) - before) / wall,
        "dumps_s": len(latencies) / wall,
        "dump_latency_ms": 1e3 * statistics.median(latencies) if latencies else None,
    }


def summarize(runs: list[dict], phases: list[str]) -> dict:
    """Per storm: the median of its per-rep ratios to the quiet phase, with a 95 % CI."""
    by_rep: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_rep.setdefault(r["rep"], {})[r["phase"]] = r
    summary = {}
    for name in phases:
        rows = [rep[name] for rep in by_rep.values()]
        summary[name] = {
            key: statistics.median(r[key] for r in rows)
            for key in ("output_tok_s", "passes_s", "dumps_s")
        }
        if name != "quiet":
            for key in ("output_tok_s", "passes_s"):
                ratios = [rep[name][key] / rep["quiet"][key] for rep in by_rep.values()]
                summary[name][f"{key}_vs_quiet"] = median_ci(ratios)
            summary[name]["dump_latency_ms"] = statistics.median(r["dump_latency_ms"] for r in rows)
    return summary


def print_table(summary: dict) -> None:
    print("| phase | output tok/s | passes/s | vs quiet (tok/s) [95% CI] | dumps/s | dump ms |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        ratio = s.get("output_tok_s_vs_quiet")
        shown = f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]" if ratio else ""
        latency = s.get("dump_latency_ms")
        print(
            f"| {name} | {s['output_tok_s']:.0f} | {s['passes_s']:.1f} | {shown} | "
            f"{s['dumps_s']:.1f} | {'' if latency is None else f'{latency:.1f}'} |"
        )


def start_this_checkouts_server(model: Path, log: Path) -> Server:
    """A server running this checkout's logger: the test environment's vLLM is shared, and
    another checkout may install its own logger while this one starts."""
    from moe_profiler import patching

    vllm = patching.Installed.find()
    patching.apply(vllm)  # as apply_hook.py does
    server = Server.start(model, log, {"VLLM_LOG_MOE_LAYER": "all"})
    if patching.check(vllm).state != patching.PATCHED:
        server.kill()
        sys.exit("another checkout's logger was installed while the server started: run again")
    return server


def machine() -> str:
    """CPU model, cores and load: the numbers mean little without them."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), model)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load} at the end"


def main() -> None:
    args = parse_args()
    phases = args.phases.split(",")
    if "quiet" not in phases or not set(phases) <= {"quiet", *STORMS}:
        sys.exit(f"--phases {args.phases!r}: quiet and any of {', '.join(STORMS)}")
    from e2e_helpers import NUM_EXPERTS, NUM_LAYERS, TOP_K

    from moe_profiler.running.local_models import build_tiny_moe

    texts = prompts.load_questions(400 + args.requests, GSM8K)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_moe(
            Path(tmp) / "tiny-moe",
            texts[:400],
            num_layers=NUM_LAYERS,
            num_experts=NUM_EXPERTS,
            top_k=TOP_K,
        )
        server = start_this_checkouts_server(model, Path(tmp) / "routes.jsonl")
        try:
            asyncio.run(traffic(server, texts[400:], args))  # warm-up
            runs = []
            for rep in range(args.reps):
                for name in turn_order(phases, rep):
                    run = asyncio.run(phase(server, name, texts[400:], args))
                    runs.append({"rep": rep, **run})
                    print(json.dumps(runs[-1]), flush=True)
        finally:
            server.kill()
    summary = summarize(runs, phases)
    print_table(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv}
        meta["machine"] = machine()
        args.out.write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
