#!/usr/bin/env python3
"""Route logger on a GPU: vLLM's own capture as oracle, and the overhead benchmark.

Run on the GPU host with vLLM 0.15.1 patched (apply_hook.py), e.g. the bundle
of ../shared/gpu after `source /tmp/vllm015/env.sh`. The model is the real
Qwen1.5-MoE-A2.7B-Chat config with dummy weights (load_format="dummy").

  gpu_bench.py prepare                        write the model folder (config + tokenizer)
  gpu_bench.py run CONFIG --out DIR           one configuration, this process: DIR/CONFIG-<t>.json
  gpu_bench.py series C1,C2,... --out DIR     each configuration in its own process, in order
  gpu_bench.py table DIR [DIR...]             medians, spread and ratios to "off" (markdown)

Configurations (all with vLLM's defaults: torch.compile + CUDA graphs, unless eager):
  off            patched vLLM, VLLM_LOG_MOE unset            } GSM8K test (1319) x 128 tokens and
  layer0         VLLM_LOG_MOE_LAYER=0                        } the 25 prompts of prompts.txt x 128,
  all            VLLM_LOG_MOE_LAYER=all (24 layers)          } ignore_eos, --reps times each
  oracle_graphs  all layers + enable_return_routed_experts, prefix caching off: every logged
  oracle_eager   (request, position, layer) compared with vLLM's own ids; same with enforce_eager
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import capture_fix  # noqa: E402

from moe_profiler.reading import routes  # noqa: E402
from moe_profiler.running import prompts  # noqa: E402
from moe_profiler.verification import oracle  # noqa: E402

CONFIGS = {
    "off": {"layers": None},
    "layer0": {"layers": "0"},
    "all": {"layers": "all"},
    "oracle_graphs": {"layers": "all", "oracle": True},
    "oracle_eager": {"layers": "all", "oracle": True, "eager": True},
}
DEFAULT_CONFIG_JSON = REPO / ".gpu" / "qwen1.5-moe-a2.7b-chat.config.json"
DEFAULT_GSM8K = REPO / ".gpu" / "gsm8k-test.jsonl"


def card_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def prepare(args) -> None:
    from moe_profiler.running.local_models import build_dummy_model_dir

    questions = prompts.load_questions(1319, args.gsm8k)
    build_dummy_model_dir(args.config_json, args.model_dir, questions)
    print(f"model folder: {args.model_dir}")


def run_config(args) -> dict:
    """One configuration, one engine: the timed workloads or the oracle comparison."""
    config = CONFIGS[args.config]
    questions = prompts.load_questions(args.n_gsm8k, args.gsm8k)
    seed_prompts = prompts.read_prompts(REPO / "prompts.txt")
    log_path = Path(args.log_dir) / f"{args.config}-{os.getpid()}.jsonl"
    for name in [k for k in os.environ if k.startswith("VLLM_LOG_MOE")]:
        del os.environ[name]
    if config["layers"] is not None:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        os.environ.update(
            VLLM_LOG_MOE=str(log_path),
            VLLM_LOG_MOE_LAYER=config["layers"],
            VLLM_LOG_MOE_REQ_ID=f"gpu_bench-{args.config}",
        )
    is_oracle = config.get("oracle", False)
    if is_oracle:
        capture_fix.enable()  # vLLM 0.15.1's own capture returns zeros without it
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(
        model=str(args.model_dir),
        load_format="dummy",
        dtype="bfloat16",
        seed=0,
        enforce_eager=config.get("eager", False),
        gpu_memory_utilization=0.85,
        max_model_len=1024,
        enable_return_routed_experts=is_oracle,
        enable_prefix_caching=not is_oracle,
    )
    result = {
        "config": args.config,
        "card": card_name(),
        "engine_start_s": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": [],
    }
    import vllm

    result["vllm_version"] = vllm.__version__
    outputs_all = []

    def timed(name: str, batch: list[str], max_tokens: int) -> None:
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(batch, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        outputs_all.extend(outs)
        result["runs"].append(
            {
                "workload": name,
                "prompts": len(batch),
                "max_tokens": max_tokens,
                "output_tokens": tokens,
                "seconds": round(seconds, 4),
                "tok_s": round(tokens / seconds, 1),
            }
        )
        print(
            f"{args.config} {name}: {tokens} tokens, {seconds:.2f}s, {tokens / seconds:.0f} tok/s",
            flush=True,
        )

    if is_oracle:
        n, max_tokens = (args.oracle_n_eager, 32) if config.get("eager") else (args.oracle_n, 128)
        timed(f"oracle {n}x{max_tokens}", questions[:n], max_tokens)
    else:
        timed("warmup", questions[:64], 16)
        for _ in range(args.reps):
            timed(f"gsm8k {len(questions)}x128", questions, 128)
            timed("seed 25x128", seed_prompts, 128)
    llm.llm_engine.engine_core.shutdown()
    if config["layers"] is not None:
        t0 = time.perf_counter()
        files = routes.rank_files(log_path)
        for file in files:
            routes.wait_until_complete(file, timeout=900)
        result["log_complete_after_shutdown_s"] = round(time.perf_counter() - t0, 2)
        logs = routes.open_logs(files)
        expected_tokens = sum(map(oracle.logged_tokens, outputs_all))
        layers = logs[0].header["layers"]
        if is_oracle:
            reference = {o.request_id: o.outputs[0].routed_experts[:, layers] for o in outputs_all}
            agreement = oracle.compare(logs, reference, layers)
            result["oracle"] = agreement.as_dict()
            print(f"{args.config}: oracle {agreement.as_dict()}", flush=True)
        trailer = _trailer(files[0])
        result["log"] = {
            "files": [str(f) for f in files],
            "bytes": sum(f.stat().st_size for f in files),
            "layers": len(layers),
            "trailer": trailer,
            "expected_route_lines": expected_tokens * len(layers),
        }
        print(f"{args.config}: log {result['log']}", flush=True)
        if not args.keep_logs:
            for f in files:
                f.unlink()
    out = Path(args.out) / f"{args.config}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _trailer(path: Path) -> dict | None:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        last = f.read().splitlines()[-1]
    record = json.loads(last)
    return record if record.get("type") == "end" else None


def series(args) -> None:
    for config in args.configs.split(","):
        cmd = [
            sys.executable,
            __file__,
            "run",
            config,
            "--out",
            str(args.out),
            "--reps",
            str(args.reps),
            "--model-dir",
            str(args.model_dir),
            "--gsm8k",
            str(args.gsm8k),
            "--log-dir",
            str(args.log_dir),
            "--oracle-n",
            str(args.oracle_n),
            "--oracle-n-eager",
            str(args.oracle_n_eager),
            "--n-gsm8k",
            str(args.n_gsm8k),
        ] + (["--keep-logs"] if args.keep_logs else [])
        status = subprocess.run(cmd).returncode
        print(f"== {config}: exit status {status}", flush=True)


def table(args) -> str:
    """Markdown: per configuration and workload, median tok/s, spread, ratio to off."""
    results = [json.loads(p.read_text()) for d in args.dirs for p in sorted(Path(d).glob("*.json"))]
    samples: dict[tuple[str, str], list[float]] = {}
    for r in results:
        for run in r["runs"]:
            if run["workload"] != "warmup" and not run["workload"].startswith("oracle"):
                samples.setdefault((run["workload"], r["config"]), []).append(run["tok_s"])
    lines = [
        "| workload | config | runs | median tok/s | min-max | median / off |",
        "|---|---|---|---|---|---|",
    ]
    for (workload, config), values in sorted(samples.items()):
        base = samples.get((workload, "off"))
        ratio = statistics.median(values) / statistics.median(base) if base else float("nan")
        lines.append(
            f"| {workload} | {config} | {len(values)} | {statistics.median(values):.0f} | "
            f"{min(values):.0f}-{max(values):.0f} | {ratio:.3f} |"
        )
    cards = sorted({r["card"] for r in results})
    text = "\n".join(lines) + f"\n\ncards: {', '.join(cards)}\n"
    print(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-dir", type=Path, default=Path("/tmp/qwen15-moe-dummy"))
    common.add_argument("--gsm8k", type=Path, default=DEFAULT_GSM8K)
    common.add_argument("--config-json", type=Path, default=DEFAULT_CONFIG_JSON)
    common.add_argument("--out", type=Path, default=Path("bench-results"))
    common.add_argument("--log-dir", type=Path, default=Path("/tmp/bench-logs"))
    common.add_argument("--n-gsm8k", type=int, default=1319, help="GSM8K questions per timed run")
    common.add_argument("--reps", type=int, default=2, help="timed runs per workload per engine")
    common.add_argument(
        "--oracle-n", type=int, default=1319, help="prompts of the CUDA-graph oracle run"
    )
    common.add_argument(
        "--oracle-n-eager", type=int, default=128, help="prompts of the eager oracle run"
    )
    common.add_argument("--keep-logs", action="store_true")
    sub.add_parser("prepare", parents=[common])
    run = sub.add_parser("run", parents=[common])
    run.add_argument("config", choices=CONFIGS)
    ser = sub.add_parser("series", parents=[common])
    ser.add_argument("configs")
    tab = sub.add_parser("table")
    tab.add_argument("dirs", nargs="+", type=Path)
    args = p.parse_args()
    {"prepare": prepare, "run": run_config, "series": series, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
