#!/usr/bin/env python3
"""Timed greedy generation with vLLM: without (no_log) or with (log) the route log.

Reads prompts.txt (one prompt per line, see make_prompts.py), builds vllm.LLM,
warms it up with one short request, then times a single generate() over all
prompts (temperature 0). Writes the outputs to outputs_<mode>.jsonl and merges
the numbers into timing.json: wall seconds, prompt/output tokens, output
tokens/s, what it ran on; once both modes have run with the same setup, the
log/no_log overhead in percent and whether the greedy outputs are identical.

log mode sets VLLM_LOG_MOE (= --log-path), VLLM_LOG_MOE_LAYER (= --layers),
VLLM_LOG_MOE_SEED, VLLM_LOG_MOE_MODEL_ID and VLLM_LOG_MOE_REQ_ID before the
engine starts, and refuses to run on a vLLM that apply_hook.py has not patched.
The warm-up request is logged too (request id "0"; the timed ones follow).

  python3 run_generate.py no_log
  python3 run_generate.py log --layers all
  python3 run_generate.py log --model /path/to/model --load-format dummy --eager
"""

import argparse
import sys
from pathlib import Path

from moe_profiler import patching
from moe_profiler.running import generate, prompts


def parse_args() -> tuple[str, generate.RunOptions]:
    d = generate.RunOptions()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "mode", choices=generate.MODES, help="no_log: plain vLLM; log: with VLLM_LOG_MOE set"
    )
    p.add_argument("--model", default=d.model, help="hub id or local folder (default: %(default)s)")
    p.add_argument(
        "--prompts", type=Path, default=d.prompts, help="prompts file (default: %(default)s)"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=d.max_tokens,
        help="tokens per prompt (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="engine seed (default: %(default)s)")
    p.add_argument(
        "--tp",
        type=int,
        default=d.tensor_parallel_size,
        dest="tensor_parallel_size",
        help="tensor parallel size (default: %(default)s)",
    )
    p.add_argument(
        "--eager",
        action="store_true",
        help="enforce_eager: no torch.compile, no CUDA graphs (slower decode)",
    )
    p.add_argument(
        "--load-format",
        default=d.load_format,
        help="'dummy': random weights; only config and tokenizer are read (default: %(default)s)",
    )
    chat = p.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="wrap prompts in the tokenizer's chat template (default: if it has one)",
    )
    chat.add_argument(
        "--no-chat", dest="chat", action="store_false", help="send the questions as they are"
    )
    p.add_argument("--dtype", default=d.dtype, help="model dtype (default: %(default)s)")
    p.add_argument(
        "--max-model-len", type=int, default=None, help="context length cap (default: the model's)"
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=d.gpu_memory_utilization,
        help="share of GPU memory vLLM may take (default: %(default)s)",
    )
    p.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="recompute shared prompt prefixes (cached tokens have no route lines)",
    )
    p.add_argument(
        "--log-path",
        type=Path,
        default=d.log_path,
        help="route log, log mode (default: %(default)s)",
    )
    p.add_argument(
        "--layers",
        default=d.log_layers,
        dest="log_layers",
        help="layers to log: 0, 0,5,23 or all (default: the model's first MoE layer)",
    )
    p.add_argument(
        "--run-label", default=None, help="VLLM_LOG_MOE_REQ_ID (default: run_generate-<time>)"
    )
    p.add_argument(
        "--outputs-dir",
        type=Path,
        default=d.outputs_dir,
        help="where outputs_<mode>.jsonl goes (default: %(default)s)",
    )
    p.add_argument(
        "--timing",
        type=Path,
        default=d.timing,
        help="timing file to merge into (default: %(default)s)",
    )
    args = vars(p.parse_args())
    mode = args.pop("mode")
    return mode, generate.RunOptions(**args)


def main() -> int:
    mode, opts = parse_args()
    try:
        questions = prompts.read_prompts(opts.prompts)
        if mode == "log":
            generate.require_patched()
    except (prompts.PromptsError, patching.PatchError) as e:
        print(f"run_generate.py: {e}", file=sys.stderr)
        return 1
    for name, value in generate.set_log_environment(mode, opts).items():
        print(f"{name}={value}")
    run = generate.run_timed(mode, opts, questions)
    result, timing = run.result, run.timing
    print(
        f"{mode}: {result['output_tokens']} output tokens in {result['wall_s']:.2f} s = "
        f"{result['output_tok_per_s']} tok/s on {run.setup['device']}; outputs in "
        f"{run.outputs_file}; timing in {opts.timing}"
    )
    if "log_overhead_pct" in timing:
        print(
            f"log overhead: {timing['log_overhead_pct']}%  greedy outputs identical: "
            f"{timing['greedy_outputs_match']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
