#!/usr/bin/env python3
"""Does end_step cost more inside a running vLLM engine than alone? (the GIL probe)

The H200 trailers say the engine thread spends ~228 us per pass in ``end_step``
(counts mode), of which one kernel launch is ~45 us: most of it is unattributed.
This probe runs a real engine (any vLLM build; on the CPU build it needs no GPU)
in counts mode with the end-of-pass device work replaced, in the engine process,
by nothing at all (``noop``) or by one release of the GIL (``release``:
``time.sleep(0)``, as a kernel launch lets go of it), and reads the engine
thread's time in ``end_step`` per pass from the log's trailer. It also times the
same ``end_step`` alone, outside any engine (``alone``), with the device work
likewise stubbed out.

  python3 bench/gil_probe.py --model-dir DIR [--tokens 400] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO  # holds the moe_route_log package
COUNTS = "vllm.model_executor.layers.fused_moe.moe_route_log.counts"

# Put on PYTHONPATH of the engine: replaces DeviceExpertCounts.add once its module exists.
SITECUSTOMIZE = f'''
import builtins, os, sys, time
if os.environ.get("GIL_PROBE"):
    _import = builtins.__import__
    def _hook(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        counts = sys.modules.get("{COUNTS}")
        if counts is not None and hasattr(counts, "DeviceExpertCounts") \\
                and not getattr(counts, "_gil_probe", False):
            counts._gil_probe = True
            release = os.environ["GIL_PROBE"] == "release"
            def add(self, rows, input_ids=None):
                if release:
                    time.sleep(0)
                return None
            counts.DeviceExpertCounts.add = add
        return module
    builtins.__import__ = _hook
'''

ENGINE = """
import os, sys
from vllm import LLM, SamplingParams
def main():
    prompts = [l.strip() for l in open(sys.argv[1]) if l.strip()] * 4
    llm = LLM(model=sys.argv[2], load_format="dummy", dtype="float32", max_model_len=512, seed=0)
    params = SamplingParams(max_tokens=int(sys.argv[3]), temperature=0, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)
    llm.llm_engine.engine_core.shutdown()
if __name__ == "__main__":
    main()
"""


def in_engine(mode: str, args, work: Path) -> dict:
    """One engine run with the end-of-pass work replaced by ``mode``; its trailer's account."""
    log = work / f"{mode}.jsonl"
    env = {
        **os.environ,
        "GIL_PROBE": mode,
        "PYTHONPATH": f"{work}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "VLLM_LOG_MOE": str(log),
        "VLLM_LOG_MOE_MODE": "counts",
        "VLLM_LOG_MOE_LAYER": "all",
    }
    cmd = [sys.executable, str(work / "engine.py"), str(args.prompts), str(args.model_dir)]
    proc = subprocess.run(
        [*cmd, str(args.tokens)], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode:
        sys.exit(f"engine ({mode}) failed:\n{proc.stderr[-3000:]}")
    trailer = json.loads(log.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return {
        "passes": trailer["steps"],
        "end_step_us_per_pass": round(1e6 * trailer["end_step_s"] / trailer["steps"], 1),
    }


def alone(work: Path, passes: int = 3000) -> dict:
    """The same end_step (device work stubbed out), called in a loop outside any engine."""
    sys.path.append(str(OVERLAY))
    os.environ.update(VLLM_LOG_MOE=str(work / "alone.jsonl"), VLLM_LOG_MOE_MODE="counts")
    import numpy as np
    import torch

    from moe_route_log import hooks
    from moe_route_log.envs import read_config
    from moe_route_log.session import RouteLogSession

    meta = {"layers": [0, 1], "ranks": {}, "num_layers": 2, "num_experts": 8, "top_k": 4}
    meta |= {"model_name": "probe", "hostname": "probe"}
    session = RouteLogSession(read_config(), meta, 512, 2, 4, 8, torch.device("cpu"))
    session._counts.add = lambda rows, input_ids=None: None
    batch = types.SimpleNamespace(
        req_ids=[f"req-{i}" for i in range(128)],
        num_prompt_tokens=np.full(128, 100, np.int32),
        num_computed_tokens_cpu=np.arange(128, dtype=np.int32) + 100,  # decodes
    )
    runner = types.SimpleNamespace(
        input_batch=batch,
        input_ids=types.SimpleNamespace(gpu=torch.zeros(512, dtype=torch.int32)),
    )
    tokens_per_req = np.ones(100, np.int32)
    hooks._session = session
    for _ in range(200):
        hooks.end_step(runner, tokens_per_req)
    began = time.perf_counter()
    for _ in range(passes):
        hooks.end_step(runner, tokens_per_req)
    us = 1e6 * (time.perf_counter() - began) / passes
    hooks._session = None
    session.close()
    return {"passes": passes, "end_step_us_per_pass": round(us, 1)}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", type=Path, required=True, help="model folder (config+tokenizer)")
    p.add_argument("--prompts", type=Path, default=REPO / "prompts.txt", help="one per line")
    p.add_argument("--tokens", type=int, default=400, help="tokens generated per prompt")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (work / "engine.py").write_text(ENGINE)
        results = {mode: in_engine(mode, args, work) for mode in ("noop", "release")}
        results["alone"] = alone(work)
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
