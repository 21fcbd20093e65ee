#!/usr/bin/env python3
"""Put the MoE route logger into the installed vLLM 0.15.1 (or take it out again).

It writes the same change as vllm-v0.15.1-moe-logger.patch: it adds the package
vllm/model_executor/layers/fused_moe/moe_route_log/ and a few lines to some of
vLLM's files (the MoE layer, the model runner, the workers, the model loader and
vllm serve's routers; --check lists them). Nothing changes vLLM's behaviour until
VLLM_LOG_MOE is set.

  python3 apply_hook.py            apply (a second run says "already applied")
  python3 apply_hook.py --check    report: pristine / patched / partly patched /
                                   modified by hand / unsupported version
  python3 apply_hook.py --revert   restore the original files byte for byte

Exit status: 0 done (or, with --check, patched); 1 --check found it not patched;
2 refused (another vLLM version, or files edited by hand: reinstall vllm==0.15.1).
"""

import argparse
import sys

from moe_profiler import patching


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="report the state, change nothing")
    action.add_argument("--revert", action="store_true", help="restore the pristine vLLM files")
    args = parser.parse_args()
    try:
        vllm = patching.Installed.find()
        if args.check:
            state = patching.check(vllm)
            print(f"vLLM {vllm.version} at {vllm.root}: {state.state}")
            for path, file_state in state.files.items():
                print(f"  {path}: {file_state}")
            if state.state == patching.UNSUPPORTED:
                return 2
            return 0 if state.state == patching.PATCHED else 1
        done = patching.revert(vllm) if args.revert else patching.apply(vllm)
    except patching.PatchError as e:
        print(f"apply_hook.py: {e}", file=sys.stderr)
        return 2
    print(f"vLLM {vllm.version} at {vllm.root}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
