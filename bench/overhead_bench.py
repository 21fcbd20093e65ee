#!/usr/bin/env python3
"""What logging costs on one GPU: paired, alternating runs of several engines, with CIs.

Every configuration is one vLLM engine (its own process) on the same GPU, with a
fixed KV cache (so all engines start at once without vLLM's memory profiling
seeing each other). They take turns on the same workload: in each rep every
engine runs once, alone, in an order that rotates from rep to rep (and reverses
every other rep), so each sees the same machine state on average. A rep's ratio
is a configuration's tokens/s over its baseline's in that rep; the result is the
median of the per-rep ratios with a bootstrap 95 % confidence interval.

  overhead_bench.py run --model-dir DIR --configs unpatched,off,layer0,all,counts,counts_graph \
      --reps 6 --out results/olmoe.json                       (vLLM 0.15.1, patched)
  overhead_bench.py run --model-dir DIR --plugin-site /tmp/plugin --prefix-caching \
      --configs unplugged,off,all,counts,counts_graph,r3 --reps 6 --out results/olmoe.json
  overhead_bench.py table results/*.json

The logger comes from the patched vLLM, or, with --plugin-site, from this project
pip-installed there (pip install --no-deps --target DIR .): each engine puts DIR on
its path, except the `unplugged` one.

Configurations (vLLM defaults otherwise: torch.compile + CUDA graphs):
  unpatched  pristine vLLM 0.15.1 (--pristine: a folder holding an unpatched `vllm` package)
  unplugged  vLLM without the plugin (with --plugin-site)
  off        the logger installed, VLLM_LOG_MOE unset                (baseline: unpatched/unplugged)
  layer0     routes of the model's first MoE layer                   (baseline: off)
  all        routes of every MoE layer                               (baseline: off)
  counts     VLLM_LOG_MOE_MODE=counts, every MoE layer               (baseline: off)
  counts_graph  counts, counted inside the CUDA graphs (VLLM_LOG_MOE_COUNTS_IN_GRAPH=1;
             the header must say counts_path in_graph)               (baseline: off)
  stopped    routes of every layer, VLLM_LOG_MOE_START=off: never started (baseline: off)
  r3         vLLM's own routed-experts capture, logging off: enable_return_routed_experts
             (it needs --prefix-caching from vLLM 0.2x on)           (baseline: off)
The logging engines' trailers are checked: route lines == tokens x layers, exactly
(tokens: every prompt token not served from the prefix cache, every output but the last).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from parallel_bench import run_processes  # noqa: E402

CONFIGS = {
    "unpatched": ({}, None),
    "unplugged": ({}, None),
    "off": ({}, "vanilla"),  # the one of unpatched/unplugged that runs
    "layer0": ({"VLLM_LOG_MOE_LAYER": "0"}, "off"),
    "all": ({"VLLM_LOG_MOE_LAYER": "all"}, "off"),
    "counts": ({"VLLM_LOG_MOE_LAYER": "all", "VLLM_LOG_MOE_MODE": "counts"}, "off"),
    "stopped": ({"VLLM_LOG_MOE_LAYER": "all", "VLLM_LOG_MOE_START": "off"}, "off"),
    "counts_graph": (
        {
            "VLLM_LOG_MOE_LAYER": "all",
            "VLLM_LOG_MOE_MODE": "counts",
            "VLLM_LOG_MOE_COUNTS_IN_GRAPH": "1",
        },
        "off",
    ),
    "r3": ({}, "off"),
}
VANILLA = ("unpatched", "unplugged")  # vLLM without the logger
LLM_ARGS = {"r3": {"enable_return_routed_experts": True}}
BOOTSTRAP = 10_000


def baseline(config: str, configs: list[str]) -> str | None:
    """The configuration ``config`` is compared with, among those that run."""
    base = CONFIGS[config][1]
    if base == "vanilla":
        return next((c for c in configs if c in VANILLA), None)
    return base


def turn_order(configs: list[str], rep: int) -> list[str]:
    """Rep ``rep``'s order: rotated by the rep, reversed every other rep."""
    k = rep % len(configs)
    order = configs[k:] + configs[:k]
    return order[::-1] if rep % 2 else order


def median_ci(ratios: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median of ``ratios`` and its bootstrap 95 % interval (percentiles of resampled medians)."""
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(BOOTSTRAP)
    )
    return (
        statistics.median(ratios),
        medians[int(0.025 * BOOTSTRAP)],
        medians[int(0.975 * BOOTSTRAP) - 1],
    )


def compare(runs: dict[str, list[float]], config: str, baseline: str | None) -> dict | None:
    """``config`` against ``baseline``, rep by rep (both lists are tokens/s per rep)."""
    if baseline not in runs or config not in runs:
        return None
    per_rep = [a / b for a, b in zip(runs[config], runs[baseline], strict=True)]
    median, low, high = median_ci(per_rep)
    return {
        "baseline": baseline,
        "per_rep": [round(r, 4) for r in per_rep],
        "median": round(median, 4),
        "ci95": [round(low, 4), round(high, 4)],
    }


def engine(task: dict, barrier, results) -> None:
    """One configuration's engine: start, take its turns, check its log."""
    try:
        results.put(_engine(task, barrier))
    except BaseException as e:
        results.put({"config": task["config"], "error": repr(e), "tb": traceback.format_exc()})
        barrier.abort()
        raise


def _engine(task: dict, barrier) -> dict:
    config = task["config"]
    for name in [k for k in os.environ if k.startswith("VLLM_LOG_MOE")]:
        del os.environ[name]
    env, _ = CONFIGS[config]
    log = Path(task["log_dir"]) / f"{config}.jsonl"
    if env:
        os.environ.update(VLLM_LOG_MOE=str(log), **env)
    first = []  # put first on this process's path and the engine core's it spawns
    if config == "unpatched":
        first.append(task["pristine"])  # pristine vllm
    elif task["plugin_site"] and config != "unplugged":
        first.append(task["plugin_site"])  # the plugin: vLLM finds its entry point there
    for folder in reversed(first):
        sys.path.insert(0, folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (*first, os.environ.get("PYTHONPATH", "")) if p
    )
    from moe_profiler.running import prompts

    questions = prompts.load_questions(task["n"], Path(task["gsm8k"]))
    import vllm
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(
        model=task["model_dir"],
        load_format="dummy",
        dtype="bfloat16",
        seed=0,
        gpu_memory_utilization=task["mem"],
        kv_cache_memory_bytes=int(task["kv_gib"] * 2**30),
        max_model_len=1024,
        max_num_seqs=task["max_num_seqs"],
        enable_prefix_caching=task["prefix_caching"],
        **LLM_ARGS.get(config, {}),
    )
    start_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    warmup = llm.generate(questions[:16], params, use_tqdm=False)
    computed = _computed_tokens(warmup)  # every token that went through the model
    barrier.wait(timeout=1200)
    runs = []
    # negative reps: whole workloads in turn, not timed (the first full-size run of an
    # engine ran ~15 % slow on the H100, in whichever engine went first)
    for rep in range(-task["warmup_reps"], task["reps"]):
        for turn in turn_order(task["configs"], rep):
            if turn == config:
                began = time.perf_counter()
                outs = llm.generate(questions, params, use_tqdm=False)
                seconds = time.perf_counter() - began
                if rep >= 0:
                    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
                    runs.append(round(tokens / seconds, 1))
                computed += _computed_tokens(outs)
            barrier.wait(timeout=1200)
    llm.llm_engine.engine_core.shutdown()
    result = {
        "config": config,
        "vllm_file": vllm.__file__,
        "engine_start_s": round(start_s, 1),
        "tok_s": runs,
    }
    if env:
        in_graph = env.get("VLLM_LOG_MOE_COUNTS_IN_GRAPH") == "1"
        result["check"] = check_log(
            log, 0 if config == "stopped" else computed, "in_graph" if in_graph else None
        )
    return result


def _computed_tokens(outputs) -> int:
    """Tokens through the model: each prompt but its prefix-cache hits, and every output
    token but the last."""
    from moe_profiler.verification import oracle

    return sum(map(oracle.logged_tokens, outputs))


def check_log(log: Path, expected_tokens: int, counts_path: str | None = None) -> dict:
    """The log's own account (trailer; counts windows) against the tokens it should hold;
    ``counts_path``: the header's ``counts_path`` must be that (the path being measured)."""
    from moe_profiler.reading import routes

    routes.wait_until_complete(log, timeout=600)
    header = trailer = None
    window_tokens = 0
    with open(log, "rb") as f:
        for line in f:
            if line.startswith(b'{"type":"route"') or line.startswith(b'{"type":"request"'):
                continue  # counted by the trailer
            rec = json.loads(line)
            if rec["type"] == "meta":
                header = rec
            elif rec["type"] == "counts":
                window_tokens += rec["tokens"]
            elif rec["type"] == "end":
                trailer = rec
    layers = len(header["layers"])
    logged = window_tokens if header.get("mode") == "counts" else (trailer or {}).get("tokens")
    lines = (trailer or {}).get("lines")
    path = header.get("counts_path")
    recomputed = {}
    if header.get("mode") != "counts" and lines and lines > expected_tokens * layers:
        recomputed = distinct_tokens(log, expected_tokens, layers)
    return {
        "mode": header.get("mode", "routes"),
        "counts_path": path,
        "layers": layers,
        "expected_tokens": expected_tokens,
        "logged_tokens": logged,
        "route_lines": lines,
        "exact": trailer is not None
        and logged == expected_tokens
        and lines == (0 if header.get("mode") == "counts" else expected_tokens * layers)
        and (counts_path is None or path == counts_path),
        "engine_waits": (trailer or {}).get("engine_waits"),
        "engine_wait_s": (trailer or {}).get("engine_wait_s"),
        "writer_encoders": (trailer or {}).get("writer_encoders"),
        **recomputed,
        **self_profile(trailer or {}),
    }


def distinct_tokens(log: Path, expected_tokens: int, layers: int) -> dict:
    """A log with more route lines than tokens x layers: vLLM preempted requests and ran
    their tokens again (each run is logged: docs/log-format.md, Preemption). Count the
    distinct (request, position) of each layer: exact when each is the expected tokens."""
    import numpy as np

    from moe_profiler.reading import routes

    seen: dict[int, set] = {}
    for block in routes.iter_blocks(routes.open_logs([log])):
        keys = block.request.astype(np.int64) << 32 | block.pos
        for layer in np.unique(block.layer):
            seen.setdefault(int(layer), set()).update(keys[block.layer == layer].tolist())
    per_layer = sorted({len(s) for s in seen.values()})
    return {
        "distinct_tokens_per_layer": per_layer,
        "distinct_exact": len(seen) == layers and per_layer == [expected_tokens],
    }


def self_profile(trailer: dict) -> dict:
    """The trailer's self-profile: the engine thread's time in end_step per pass, the drain
    thread's CPU time (fields absent from logs older than schema 3's trailer)."""
    steps, end_step_s = trailer.get("steps"), trailer.get("end_step_s")
    return {
        "steps": steps,
        "end_step_s": end_step_s,
        "end_step_us_per_pass": round(1e6 * end_step_s / steps, 1)
        if steps and end_step_s is not None
        else None,
        "drain_cpu_s": trailer.get("drain_cpu_s"),
    }


def run(args) -> dict:
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if "unpatched" in configs and not (Path(args.pristine) / "vllm").is_dir():
        sys.exit(f"--pristine {args.pristine} holds no vllm package")
    if "unplugged" in configs and not args.plugin_site:
        sys.exit("the unplugged configuration compares with the plugin: give --plugin-site")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(configs)), ctx.Queue()
    procs = []
    for config in configs:
        task = {
            "config": config,
            "configs": configs,
            "model_dir": str(args.model_dir),
            "gsm8k": str(args.gsm8k),
            "n": args.n,
            "reps": args.reps,
            "warmup_reps": args.warmup_reps,
            "mem": args.mem,
            "kv_gib": args.kv_gib,
            "max_num_seqs": args.max_num_seqs,
            "log_dir": str(args.log_dir),
            "pristine": str(args.pristine),
            "plugin_site": str(args.plugin_site) if args.plugin_site else "",
            "prefix_caching": args.prefix_caching,
        }
        procs.append(ctx.Process(target=engine, args=(task, barrier, results)))
    began = time.time()
    parts = run_processes(procs, results, limit_s=3000)
    from gpu_bench import card_name

    runs = {p["config"]: p["tok_s"] for p in parts if "tok_s" in p}
    result = {
        "card": card_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model_dir.name,
        "workload": f"{args.n} GSM8K x 128 tokens, ignore_eos, greedy",
        "reps": args.reps,
        "warmup_reps": args.warmup_reps,
        "max_num_seqs": args.max_num_seqs,
        "kv_gib": args.kv_gib,
        "wall_s": round(time.time() - began, 1),
        "parts": parts,
        "logger": "plugin" if args.plugin_site else "patch",
        "prefix_caching": args.prefix_caching,
        "comparisons": {
            c: compare(runs, c, baseline(c, configs))
            for c in configs
            if baseline(c, configs) in runs
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table_rows(result))
    errors = [p for p in parts if "error" in p]
    if errors or len(parts) < len(procs):
        sys.exit(f"failed: {[e.get('error') for e in errors]}; see {args.out}")
    return result


def check_text(part: dict) -> str:
    """The log check in a few words."""
    c = part.get("check")
    if c is None:
        return ""
    what = "route lines" if c["mode"] == "routes" else "counted tokens"
    verdict = "exact" if c["exact"] else "MISMATCH"
    text = (
        f"{verdict}: {c['logged_tokens']:,} tokens ({what}) of {c['expected_tokens']:,}; "
        f"engine waits {c['engine_waits']}"
    )
    if "distinct_exact" in c:  # more lines than tokens: preempted tokens logged again
        verdict = "exact" if c["distinct_exact"] else "MISMATCH"
        text += f"; distinct (request, position) per layer {verdict} (recomputed tokens)"
    if c.get("end_step_us_per_pass") is not None:
        text += f"; end_step {c['end_step_us_per_pass']:.0f} us/pass"
    if c["mode"] == "counts" and c.get("counts_path"):
        text += f"; counted {c['counts_path'].replace('_', ' ')}"
    return text


def table_rows(result: dict) -> str:
    """Markdown rows: configuration, baseline, tok/s, median ratio and CI, per-rep ratios."""
    runs = {p["config"]: p["tok_s"] for p in result["parts"] if "tok_s" in p}
    checks = {p["config"]: check_text(p) for p in result["parts"] if "tok_s" in p}
    lines = []
    for config, c in result["comparisons"].items():
        if c is None:
            continue
        tok = statistics.median(runs[config])
        base = statistics.median(runs[c["baseline"]])
        lines.append(
            f"| {result['model']} | {config} vs {c['baseline']} | {len(c['per_rep'])} "
            f"| {base:.0f} | {tok:.0f} | **{c['median']:.4f}** [{c['ci95'][0]:.4f}, "
            f"{c['ci95'][1]:.4f}] | {', '.join(f'{r:.3f}' for r in c['per_rep'])} "
            f"| {checks[config]} |"
        )
    return "\n".join(lines)


def table(args) -> None:
    print(
        "| model | comparison | reps | baseline tok/s (median) | tok/s (median) "
        "| median of per-rep ratios [95 % CI] | per-rep ratios | log check |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for path in args.results:
        result = json.loads(Path(path).read_text())
        print(table_rows(result))
        print(f"<!-- {path}: {result['card']}, {result['date']} -->")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the engines of --configs, alternating, on one GPU")
    r.add_argument("--model-dir", type=Path, required=True, help="config + tokenizer folder")
    r.add_argument("--configs", default="off,all", help="comma list (see above)")
    r.add_argument("--n", type=int, default=1319, help="GSM8K questions per run")
    r.add_argument("--reps", type=int, default=6, help="timed runs per engine")
    r.add_argument(
        "--warmup-reps",
        type=int,
        default=1,
        help="untimed whole-workload runs per engine first, in turns (0: none)",
    )
    r.add_argument("--mem", type=float, default=0.15, help="gpu_memory_utilization per engine")
    r.add_argument("--kv-gib", type=float, default=5.0, help="KV cache per engine (GiB)")
    r.add_argument(
        "--max-num-seqs", type=int, default=128, help="vLLM max_num_seqs (keep it preemption-free)"
    )
    r.add_argument("--gsm8k", type=Path, default=REPO / ".gpu" / "gsm8k-test.jsonl")
    r.add_argument("--pristine", type=Path, default=Path("/tmp/vllm-pristine"))
    r.add_argument("--plugin-site", type=Path, help="the logger from the plugin pip-installed here")
    r.add_argument(
        "--prefix-caching",
        action="store_true",
        help="prefix caching on in every engine (vLLM's capture, r3, needs it from 0.2x on)",
    )
    r.add_argument("--log-dir", type=Path, default=Path("/tmp/overhead-logs"))
    r.add_argument("--out", type=Path, required=True, help="result JSON")
    t = sub.add_parser("table", help="markdown table of result files")
    t.add_argument("results", nargs="+", help="result JSON files")
    args = p.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
