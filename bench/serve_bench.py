#!/usr/bin/env python3
"""What the production modes cost under ``vllm serve``: vLLM's own ``vllm bench serve``.

Starts one ``vllm serve`` per configuration on the same GPU (fixed KV cache, so
they start side by side), then, rep after rep and in a rotating order, points
``vllm bench serve`` at each in turn: once at a fixed request rate and once at
saturation (every request at once). Each configuration's output tokens/s over
logging-off's in the same rep gives a ratio; the result is the median of the
per-rep ratios with a bootstrap 95 % interval (as bench/overhead_bench.py).

  serve_bench.py run --model-dir /tmp/olmoe-dummy --configs off,counts,stopped \
      --reps 4 --rate 20 --out results/serve.json
  serve_bench.py table results/serve.json

Configurations: off (VLLM_LOG_MOE unset), counts (VLLM_LOG_MOE_MODE=counts, every
layer), stopped (routes of every layer, VLLM_LOG_MOE_START=off), routes (every
layer, recording). The GPU bundle has no console scripts: the CLI is started as
``python3 -m vllm.entrypoints.cli.main``. The logger comes from the patched vLLM or,
with --plugin-site DIR, from this project pip-installed in DIR (every server gets DIR
first on its PYTHONPATH, so `off` is the plugin installed with logging off).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead_bench import median_ci, turn_order

CLI = [sys.executable, "-m", "vllm.entrypoints.cli.main"]
CONFIGS = {
    "off": {},
    "counts": {"VLLM_LOG_MOE_LAYER": "all", "VLLM_LOG_MOE_MODE": "counts"},
    "counts_graph": {
        "VLLM_LOG_MOE_LAYER": "all",
        "VLLM_LOG_MOE_MODE": "counts",
        "VLLM_LOG_MOE_COUNTS_IN_GRAPH": "1",
    },
    "stopped": {"VLLM_LOG_MOE_LAYER": "all", "VLLM_LOG_MOE_START": "off"},
    "routes": {"VLLM_LOG_MOE_LAYER": "all"},
}


def start_server(config: str, port: int, args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOG_MOE")}
    if args.plugin_site:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(args.plugin_site), env.get("PYTHONPATH", "")) if p
        )
    if CONFIGS[config]:
        env.update(VLLM_LOG_MOE=str(args.log_dir / f"{config}.jsonl"), **CONFIGS[config])
    cmd = [
        *CLI,
        "serve",
        str(args.model_dir),
        "--port",
        str(port),
        "--load-format",
        "dummy",
        "--gpu-memory-utilization",
        str(args.mem),
        "--kv-cache-memory-bytes",
        str(int(args.kv_gib * 2**30)),
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--max-model-len",
        "1024",
        "--no-enable-prefix-caching",
    ]
    log = open(args.log_dir / f"server-{config}.txt", "w")  # noqa: SIM115 (the server's life)
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"server on port {port} not healthy after {timeout:.0f} s")


def bench(port: int, rate: str, args, name: str) -> dict:
    """One ``vllm bench serve`` run (its own code, in this process); its result's metrics.

    The CLI is vLLM's ``vllm.benchmarks.serve.main`` behind an argument parser; calling it
    here with the same arguments saves a Python start and vLLM import per run.
    """
    from vllm.benchmarks import serve as vllm_bench_serve

    result = args.log_dir / f"{name}.json"
    argv = [
        "--backend",
        "vllm",
        "--base-url",
        f"http://127.0.0.1:{port}",
        "--model",
        str(args.model_dir),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--num-prompts",
        str(args.num_prompts),
        "--request-rate",
        rate,
        "--ignore-eos",
        "--seed",
        "0",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(result.parent),
        "--result-filename",
        result.name,
    ]
    parser = argparse.ArgumentParser()
    vllm_bench_serve.add_cli_args(parser)
    data = vllm_bench_serve.main(parser.parse_args(argv))
    return {key: data.get(key) for key in METRICS}


METRICS = (
    "output_throughput",
    "request_throughput",
    "mean_ttft_ms",
    "mean_tpot_ms",
    "median_itl_ms",
    "completed",
)


def trailer(log: Path) -> dict:
    """The self-profile in a log's trailer (bench/overhead_bench.py's fields), or {}."""
    from overhead_bench import self_profile

    if not log.exists():
        return {}
    last = log.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    record = json.loads(last)
    return self_profile(record) if record.get("type") == "end" else {}


def summarize(runs: dict[str, dict[str, list[dict]]]) -> dict:
    """Per rate and configuration: median output tok/s and the paired ratios to off."""
    out: dict = {}
    for rate, by_config in runs.items():
        off = [r["output_throughput"] for r in by_config["off"]]
        for config, results in by_config.items():
            tok = [r["output_throughput"] for r in results]
            entry = {"output_tok_s": tok, "median_tok_s": statistics.median(tok)}
            if config != "off":
                per_rep = [a / b for a, b in zip(tok, off, strict=True)]
                median, low, high = median_ci(per_rep)
                entry.update(
                    per_rep=[round(r, 4) for r in per_rep],
                    median_ratio=round(median, 4),
                    ci95=[round(low, 4), round(high, 4)],
                )
                tpot = [r.get("mean_tpot_ms") for r in results]
                off_tpot = [r.get("mean_tpot_ms") for r in by_config["off"]]
                if None not in tpot + off_tpot:  # time per output token: lower is better
                    tpot_ratio = [a / b for a, b in zip(tpot, off_tpot, strict=True)]
                    median, low, high = median_ci(tpot_ratio)
                    entry.update(
                        tpot_median_ratio=round(median, 4),
                        tpot_ci95=[round(low, 4), round(high, 4)],
                    )
            out.setdefault(rate, {})[config] = entry
    return out


def run(args) -> None:
    configs = args.configs.split(",")
    if "off" not in configs:
        sys.exit("the configurations must include 'off' (every ratio is to it)")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    ports = {c: 8100 + i for i, c in enumerate(configs)}
    procs = {c: start_server(c, ports[c], args) for c in configs}
    try:
        for c in configs:
            wait_healthy(ports[c], procs[c], timeout=900)
        for c in configs:  # warm-up, not timed
            bench(
                ports[c],
                "inf",
                argparse.Namespace(**{**vars(args), "num_prompts": 32}),
                f"warm-{c}",
            )
        runs: dict[str, dict[str, list[dict]]] = {}
        for rep in range(args.reps):
            for c in turn_order(configs, rep):
                for rate in (str(args.rate), "inf"):
                    prompts = args.num_prompts if rate != "inf" else args.saturation_prompts
                    run_args = argparse.Namespace(**{**vars(args), "num_prompts": prompts})
                    result = bench(ports[c], rate, run_args, f"{c}-{rate}-{rep}")
                    runs.setdefault(rate, {}).setdefault(c, []).append(result)
                    print(c, rate, rep, result, flush=True)
    finally:
        for p in procs.values():
            p.terminate()  # SIGTERM: the logging servers write their trailers
        for p in procs.values():
            p.wait(timeout=120)
    profiles = {c: trailer(args.log_dir / f"{c}.jsonl") for c in configs if CONFIGS[c]}
    from gpu_bench import card_name

    result = {
        "card": card_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "logger": "plugin" if args.plugin_site else "patch",
        "model": args.model_dir.name,
        "workload": f"random {args.input_len} in / {args.output_len} out, "
        f"{args.num_prompts} prompts at {args.rate}/s, {args.saturation_prompts} at saturation",
        "reps": args.reps,
        "runs": runs,
        "summary": summarize(runs),
        "self_profile": profiles,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


def table(args) -> None:
    print(
        "| rate | configuration | reps | output tok/s (median) | vs off: median of per-rep "
        "ratios [95 % CI] | time per output token vs off [95 % CI] | end_step per pass |\n"
        "|---|---|---|---|---|---|---|"
    )
    for path in args.results:
        result = json.loads(Path(path).read_text())
        profiles = result.get("self_profile", {})
        for rate, by_config in result["summary"].items():
            for config, e in by_config.items():
                ratio = (
                    f"**{e['median_ratio']:.4f}** [{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]"
                    if "median_ratio" in e
                    else "-"
                )
                tpot = (
                    f"{e['tpot_median_ratio']:.4f} [{e['tpot_ci95'][0]:.4f}, "
                    f"{e['tpot_ci95'][1]:.4f}]"
                    if "tpot_median_ratio" in e
                    else "-"
                )
                us = profiles.get(config, {}).get("end_step_us_per_pass")
                rate_text = "saturation" if rate == "inf" else f"{rate} req/s"
                print(
                    f"| {rate_text} | {config} | {len(e['output_tok_s'])} "
                    f"| {e['median_tok_s']:.0f} | {ratio} | {tpot} "
                    f"| {'-' if us is None else f'{us:.0f} us'} |"
                )
        print(f"<!-- {path}: {result['card']}, {result['date']}, {result['workload']} -->")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="servers side by side, vllm bench serve against each in turn")
    r.add_argument("--model-dir", type=Path, required=True, help="config + tokenizer folder")
    r.add_argument("--configs", default="off,counts,stopped", help="comma list (see above)")
    r.add_argument("--reps", type=int, default=4, help="bench runs per server and rate")
    r.add_argument("--rate", type=float, default=20.0, help="the fixed request rate (req/s)")
    r.add_argument("--num-prompts", type=int, default=400, help="requests per fixed-rate run")
    r.add_argument(
        "--saturation-prompts", type=int, default=1000, help="requests per saturation run"
    )
    r.add_argument("--input-len", type=int, default=128, help="random prompt tokens")
    r.add_argument("--output-len", type=int, default=128, help="output tokens (ignore_eos)")
    r.add_argument("--mem", type=float, default=0.2, help="gpu_memory_utilization per server")
    r.add_argument("--kv-gib", type=float, default=5.0, help="KV cache per server (GiB)")
    r.add_argument("--max-num-seqs", type=int, default=128, help="vLLM max_num_seqs")
    r.add_argument("--log-dir", type=Path, default=Path("/tmp/serve-bench"))
    r.add_argument("--plugin-site", type=Path, help="the logger from the plugin pip-installed here")
    r.add_argument("--out", type=Path, required=True, help="result JSON")
    t = sub.add_parser("table", help="markdown table of result files")
    t.add_argument("results", nargs="+", help="result JSON files")
    args = p.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
