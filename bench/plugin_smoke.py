#!/usr/bin/env python3
"""One logging engine on a GPU, to see the logger work before the long runs.

vLLM's defaults (torch.compile, CUDA graphs; Model Runner V2 on 0.34.0), every MoE
layer logged in routes mode, --n GSM8K prompts x --tokens tokens, dummy weights; then
the log's own account against the tokens vLLM ran (overhead_bench.check_log): the
route lines must be exactly tokens x layers. Prints the header's routing and the
engine thread's time per pass from the trailer.

  plugin_smoke.py --model-dir /tmp/qwen15-moe-dummy [--n 64] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", type=Path, required=True, help="config + tokenizer folder")
    p.add_argument("--n", type=int, default=64, help="GSM8K prompts (%(default)s)")
    p.add_argument("--tokens", type=int, default=32, help="tokens per prompt (%(default)s)")
    p.add_argument("--mem", type=float, default=0.5, help="gpu_memory_utilization")
    p.add_argument(
        "--gsm8k", type=Path, default=REPO / ".gpu" / "gsm8k-test.jsonl", help="GSM8K test JSONL"
    )
    p.add_argument(
        "--log", type=Path, default=Path("/tmp/plugin-smoke.jsonl"), help="the route log"
    )
    args = p.parse_args()
    os.environ.update(VLLM_LOG_MOE=str(args.log), VLLM_LOG_MOE_LAYER="all")
    from overhead_bench import _computed_tokens, check_log
    from vllm import LLM, SamplingParams

    from moe_profiler.running import prompts

    started = time.perf_counter()
    llm = LLM(
        model=str(args.model_dir),
        load_format="dummy",
        seed=0,
        max_model_len=1024,
        gpu_memory_utilization=args.mem,
    )
    start_s = time.perf_counter() - started
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    outputs = llm.generate(prompts.load_questions(args.n, args.gsm8k), params, use_tqdm=False)
    llm.llm_engine.engine_core.shutdown()
    check = check_log(args.log, _computed_tokens(outputs))
    with open(args.log) as f:
        header = json.loads(f.readline())
    keys = ("vllm_version", "layers", "num_experts", "top_k", "routing", "counts_path")
    print(json.dumps({"engine_start_s": round(start_s, 1), "check": check}), flush=True)
    print(json.dumps({k: header.get(k) for k in keys}), flush=True)
    sys.exit(0 if check["exact"] else 1)


if __name__ == "__main__":
    main()
