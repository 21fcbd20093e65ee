#!/usr/bin/env python3
"""Route logger on several GPUs: every token logged once, ids vs vLLM's own, overhead.

For one parallel layout this starts two engines side by side on the same GPUs,
one with logging off and one logging all layers (each at --mem of the memory),
then alternates timed generate calls between them (off, all, all, off, ...), so
both see the same machine state. Afterwards the logging engine's merged log is
checked against its outputs: exactly one route line per (request, position,
layer) of every token that went through the model, and, with --oracle, the same
expert ids as vLLM's own enable_return_routed_experts capture (both engines get
the capture, so that they differ only in logging). Data parallel layouts run one
process per DP rank (VLLM_DP_* variables, as vLLM's offline DP example), each
with its own share of the prompts; each rank's outputs are checked against its
own log file. With --seed-prompts every turn also times the 25 prompts of
prompts.txt (the seed workload) after the GSM8K batch, again in turn.

  parallel_bench.py run LAYOUT [--n 256] [--reps 4] --out DIR    DIR/LAYOUT.json
  parallel_bench.py table DIR                                      markdown table

Layouts: single (1 GPU), tp2, tp2_ep, dp2, dp2_ep, pp2. Run on the GPU host with
the bundle's vLLM patched (apply_hook.py) and the model folder of
`gpu_bench.py prepare`. With the oracle, bench/capture_fix fixes vLLM's capture in every
process (vLLM 0.15.1 returns zeros otherwise).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import capture_fix  # noqa: E402

LAYOUTS = {
    "single": {},
    "tp2": {"tp": 2},
    "tp2_ep": {"tp": 2, "ep": True},
    "dp2": {"dp": 2},
    "dp2_ep": {"dp": 2, "ep": True},
    "pp2": {"pp": 2},
}
GROUPS = ("off", "all")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_process(task: dict, barrier, results) -> None:
    """One engine (one DP rank of one group): start, timed runs in turn, then checks."""
    try:
        results.put(_engine_process(task, barrier))
    except BaseException as e:  # report, then let the others time out
        results.put(
            {
                "group": task["group"],
                "dp": task["dp_rank"],
                "error": repr(e),
                "traceback": traceback.format_exc()[-4000:],
            }
        )
        barrier.abort()
        raise


def _engine_process(task: dict, barrier) -> dict:
    layout, group, rank = LAYOUTS[task["layout"]], task["group"], task["dp_rank"]
    dp = layout.get("dp", 1)
    for name in [k for k in os.environ if k.startswith("VLLM_LOG_MOE")]:
        del os.environ[name]
    if group == "all":
        os.environ.update(
            VLLM_LOG_MOE=task["log"],
            VLLM_LOG_MOE_LAYER=task["layers"],
            VLLM_LOG_MOE_REQ_ID=f"parallel_bench-{task['layout']}",
        )
    if dp > 1:
        os.environ.update(
            VLLM_DP_RANK=str(rank),
            VLLM_DP_RANK_LOCAL=str(rank),
            VLLM_DP_SIZE=str(dp),
            VLLM_DP_MASTER_IP="127.0.0.1",
            VLLM_DP_MASTER_PORT=str(task["port"]),
        )
    from moe_profiler.running import prompts

    questions = prompts.load_questions(task["n"], task["gsm8k"])[rank::dp]
    workloads = [("gsm8k", questions)]
    if task["seed_prompts"]:
        workloads.append(("seed", prompts.read_prompts(REPO / "prompts.txt")[rank::dp]))
    if group == "all":
        barrier.wait(timeout=900)  # the "off" engines start first
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(
        model=task["model_dir"],
        load_format="dummy",
        dtype=task["dtype"],
        seed=0,
        tensor_parallel_size=layout.get("tp", 1),
        pipeline_parallel_size=layout.get("pp", 1),
        enable_expert_parallel=layout.get("ep", False),
        enforce_eager=task["eager"],
        gpu_memory_utilization=task["mem"],
        max_model_len=1024,
        max_num_seqs=task["max_num_seqs"],
        enable_return_routed_experts=task["oracle"],
        enable_prefix_caching=False,  # every token recomputed: exact counts
    )
    start_s = time.perf_counter() - t0
    if group == "off":
        barrier.wait(timeout=900)  # now the "all" engines start
    barrier.wait(timeout=900)  # every engine is up
    params = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    runs, outputs = [], []
    order = [GROUPS if i % 2 == 0 else GROUPS[::-1] for i in range(task["reps"])]

    def timed_generate(batch: list[str]) -> dict:
        began = time.time()
        outs = llm.generate(batch, params, use_tqdm=False)
        outputs.extend(outs)  # the warm-up's tokens are in the log too
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        return {"began": began, "ended": time.time(), "tokens": tokens}

    turns = [(0, GROUPS, [("warmup", questions[:16])])]
    turns += [(i + 1, turn, workloads) for i, turn in enumerate(order)]
    for rep, turn, batches in turns:
        for workload, batch in batches:
            for g in turn:  # the groups take turns: one generates, the other waits
                if g == group:
                    run = timed_generate(batch)
                    if rep > 0:
                        runs.append({"rep": rep, "workload": workload, **run})
                barrier.wait(timeout=900)
    time.sleep(2)  # DP: let every rank leave its step loop before shutdown
    llm.llm_engine.engine_core.shutdown()
    barrier.wait(timeout=900)
    result = {"group": group, "dp": rank, "engine_start_s": round(start_s, 1), "runs": runs}
    if group == "all":
        result["check"] = check_log(task, rank, outputs)
    return result


def check_log(task: dict, rank: int, outputs) -> dict:
    """This rank's files against its outputs: one line per (request, pos, layer), same ids."""
    import numpy as np

    from moe_profiler.reading import routes
    from moe_profiler.verification import oracle

    t0 = time.perf_counter()
    files = routes.rank_files(Path(task["log"]))
    for f in files:
        routes.wait_until_complete(f, timeout=900)
    logs = [log for log in routes.open_logs(files) if log.ranks.get("dp", 0) == rank]
    files = [log.path for log in logs]
    layers = sorted({layer for log in logs for layer in log.header["layers"]})
    top_k = logs[0].header["top_k"]
    if task["oracle"]:
        reference = {o.request_id: o.outputs[0].routed_experts[:, layers] for o in outputs}
    else:  # counts only: ids -1 never agree, but missing/duplicates/unknown are exact
        reference = {
            o.request_id: np.full(
                (len(o.prompt_token_ids) + len(o.outputs[0].token_ids) - 1, len(layers), top_k),
                -1,
            )
            for o in outputs
        }
    agreement = oracle.compare(logs, reference, layers)
    expected_tokens = sum(map(oracle.logged_tokens, outputs))
    lines = sum(log.routes for log in logs)
    check = {
        "files": [f.name for f in files],
        "ranks": [log.header["ranks"] for log in logs],
        "layers": len(layers),
        "expected_route_lines": expected_tokens * len(layers),
        "route_lines": lines,
        "trailers": sum(log.trailer is not None for log in logs),
        "engine_wait_s": sum((log.trailer or {}).get("engine_wait_s", 0.0) for log in logs),
        "bytes": sum(f.stat().st_size for f in files),
        "check_s": round(time.perf_counter() - t0, 1),
        "agreement": agreement.as_dict() | {"oracle": task["oracle"]},
    }
    if not task["keep_logs"]:
        for f in files:
            f.unlink()
    return check


def run_layout(args) -> dict:
    layout = LAYOUTS[args.layout]
    dp = layout.get("dp", 1)
    if args.oracle:
        capture_fix.enable()  # in the engine processes: vLLM 0.15.1's capture returns zeros
    log = Path(args.log_dir) / args.layout / "routes.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2 * dp), ctx.Queue()
    ports = {g: free_port() for g in GROUPS}
    procs = []
    for group in GROUPS:
        for rank in range(dp):
            task = {
                "layout": args.layout,
                "group": group,
                "dp_rank": rank,
                "port": ports[group],
                "log": str(log),
                "n": args.n,
                "reps": args.reps,
                "mem": args.mem,
                "oracle": args.oracle,
                "model_dir": str(args.model_dir),
                "gsm8k": str(args.gsm8k),
                "keep_logs": args.keep_logs,
                "dtype": args.dtype,
                "layers": args.layers,
                "eager": args.eager,
                "max_num_seqs": args.max_num_seqs,
                "seed_prompts": args.seed_prompts,
            }
            procs.append(ctx.Process(target=engine_process, args=(task, barrier, results)))
    began = time.time()
    parts = run_processes(procs, results, limit_s=3000)
    from gpu_bench import card_name

    result = {
        "layout": args.layout,
        "parallel": layout,
        "card": card_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "prompts": args.n,
        "max_tokens": 128,
        "reps": args.reps,
        "mem_per_engine": args.mem,
        "max_num_seqs": args.max_num_seqs,
        "oracle": args.oracle,
        "logged_layers": args.layers,
        "wall_s": round(time.time() - began, 1),
        "parts": parts,
        "throughput": throughput(parts),
    }
    out = Path(args.out) / f"{args.layout}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(summary_line(result), flush=True)
    if len(parts) < len(procs) or any("error" in part for part in parts):
        sys.exit(f"{args.layout}: failed, see {out}")
    return result


def run_processes(procs, results, limit_s: float) -> list[dict]:
    """Start ``procs``, collect one result each from ``results`` (fewer when one fails or
    ``limit_s`` passes), then stop whatever is left, children included."""
    began = time.time()
    for p in procs:
        p.start()
    parts: list[dict] = []
    while len(parts) < len(procs):
        try:
            parts.append(results.get(timeout=5))
        except Exception:
            if any(p.exitcode not in (None, 0) for p in procs) or time.time() - began > limit_s:
                break
        if any("error" in part for part in parts):
            break
    _stop(procs)
    return parts


def _stop(procs) -> None:
    """Wait a little for the engine processes, then kill what is left with its children."""
    import psutil

    deadline = time.time() + 60
    for p in procs:
        p.join(max(0.1, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            for child in psutil.Process(p.pid).children(recursive=True):
                child.kill()
            p.kill()


def throughput(parts: list[dict]) -> dict:
    """Per workload and group: output tokens/s of each rep (DP: all ranks' tokens over the span)."""
    reps: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for part in parts:
        for run in part.get("runs", []):
            key = (run.get("workload", "gsm8k"), part["group"])
            reps.setdefault(key, {}).setdefault(run["rep"], []).append(run)
    result: dict[str, dict[str, list[float]]] = {}
    for (workload, group), by_rep in sorted(reps.items()):
        result.setdefault(workload, {})[group] = [
            round(
                sum(r["tokens"] for r in rs)
                / (max(r["ended"] for r in rs) - min(r["began"] for r in rs)),
                1,
            )
            for _, rs in sorted(by_rep.items())
        ]
    return result


def by_workload(result: dict) -> dict[str, dict[str, list[float]]]:
    """The throughput of a result file; files written before workloads were named hold GSM8K."""
    tp = result["throughput"]
    return {"gsm8k": tp} if "off" in tp or "all" in tp else tp


def ratios(tp: dict[str, list[float]]) -> tuple[float, list[float]]:
    """Median logging / median off, and the ratio of each rep (its two runs ran back to back).

    Per-rep ratios only when both groups have every rep: otherwise none, rather
    than pair runs of different reps.
    """
    off, on = tp["off"], tp["all"]
    per_rep = [a / b for a, b in zip(on, off, strict=True)] if len(on) == len(off) else []
    return statistics.median(on) / statistics.median(off), per_rep


def _median_text(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "n/a (a rep failed)"


def summary_line(result: dict) -> str:
    checks = [p["check"] for p in result["parts"] if "check" in p]
    errors = [p["error"] for p in result["parts"] if "error" in p]
    text = result["layout"]
    for workload, tp in by_workload(result).items():
        text += f"\n  {workload}: off {tp.get('off')} all {tp.get('all')} tok/s"
        if tp.get("off") and tp.get("all"):
            ratio, per_rep = ratios(tp)
            text += f" ratio {ratio:.3f} per rep {[round(r, 3) for r in per_rep]}"
    for c in checks:
        a = c["agreement"]
        text += (
            f"\n  {c['files']}: lines {c['route_lines']}/{c['expected_route_lines']}"
            f" missing {a['missing']} dup {a['duplicates']} unknown {a['unknown']}"
            f" agreement {a['agreement']:.6f} (oracle {a['oracle']}) trailers {c['trailers']}"
            f" engine wait {c['engine_wait_s']} s"
        )
    return text + "".join(f"\n  ERROR {e}" for e in errors)


def table(args) -> str:
    """Markdown: per layout and workload, tok/s off and logging, ratios, counts, agreement."""
    lines = [
        "| layout | workload | runs | off tok/s (median, min-max) | logging tok/s "
        "| logging / off (medians; per rep median) | route lines / expected "
        "| missing, duplicates | ids equal to vLLM's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(Path(args.dir).glob("*.json")):
        r = json.loads(path.read_text())
        checks = [p["check"] for p in r["parts"] if "check" in p]
        name = r["layout"] + (
            f" (layers {r['logged_layers']})" if r.get("logged_layers", "all") != "all" else ""
        )
        got = sum(c["route_lines"] for c in checks)  # the log holds every workload
        want = sum(c["expected_route_lines"] for c in checks)
        miss = sum(c["agreement"]["missing"] for c in checks)
        dups = sum(c["agreement"]["duplicates"] for c in checks)
        pairs = sum(c["agreement"]["pairs"] for c in checks)
        same = sum(c["agreement"]["identical"] for c in checks)
        ids = f"{same / pairs:.4%} of {pairs:,}" if r["oracle"] and pairs else "not compared"
        for workload, tp in by_workload(r).items():
            off, on = tp.get("off", []), tp.get("all", [])
            if not (off and on and checks):
                lines.append(f"| {name} | {workload} | failed: see {path.name} |||||||")
                continue
            ratio, per_rep = ratios(tp)
            lines.append(
                f"| {name} | {workload} | {len(off)}+{len(on)} | {statistics.median(off):.0f} "
                f"({min(off):.0f}-{max(off):.0f}) | {statistics.median(on):.0f} "
                f"({min(on):.0f}-{max(on):.0f}) | {ratio:.3f}; {_median_text(per_rep)}"
                f" | {got:,} / {want:,} | {miss}, {dups} | {ids} |"
            )
    cards = sorted({json.loads(p.read_text())["card"] for p in Path(args.dir).glob("*.json")})
    text = "\n".join(lines) + f"\n\ncards: {', '.join(cards)}; route lines and ids: all workloads\n"
    print(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one layout: two engines, alternating timed runs, checks")
    run.add_argument("layout", choices=LAYOUTS)
    run.add_argument("--n", type=int, default=256, help="GSM8K questions per timed run")
    run.add_argument("--reps", type=int, default=4, help="timed runs per engine")
    run.add_argument("--mem", type=float, default=0.42, help="gpu_memory_utilization per engine")
    run.add_argument(
        "--layers", default="all", help="VLLM_LOG_MOE_LAYER of the logging engine (group 'all')"
    )
    run.add_argument(
        "--no-oracle",
        dest="oracle",
        action="store_false",
        help="without enable_return_routed_experts (token counts only)",
    )
    run.add_argument("--dtype", default="bfloat16", help="model dtype (float32 for CPU trials)")
    run.add_argument("--eager", action="store_true", help="enforce_eager (default: CUDA graphs)")
    run.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="vLLM max_num_seqs (default: vLLM's); small enough that the KV cache never preempts",
    )
    run.add_argument(
        "--seed-prompts",
        action="store_true",
        help="also time the 25 prompts of prompts.txt in every turn (the seed workload)",
    )
    run.add_argument("--model-dir", type=Path, default=Path("/tmp/qwen15-moe-dummy"))
    run.add_argument("--gsm8k", type=Path, default=REPO / ".gpu" / "gsm8k-test.jsonl")
    run.add_argument("--log-dir", type=Path, default=Path("/tmp/parallel-bench-logs"))
    run.add_argument("--out", type=Path, default=Path("bench-results"))
    run.add_argument(
        "--keep-logs", action="store_true", help="keep the route logs after the checks"
    )
    tab = sub.add_parser("table", help="markdown table of a results folder")
    tab.add_argument("dir", type=Path)
    args = p.parse_args()
    {"run": run_layout, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
