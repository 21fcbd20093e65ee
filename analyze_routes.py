#!/usr/bin/env python3
r"""One report on how a MoE model routed: every analysis of route logs in one read.

Reads the logs once (files, folders or globs; several files of one run are merged
as plot_experts.py does) and writes to --out:

  report.html               one self-contained page (figures embedded, opens offline):
                            each section says what it answers and what its figure shows
  analysis.json             every number of the report
  sglang_logical_count.json per-layer expert loads for SGLang's --init-expert-location

Sections (analysis.json keys):
  load, prefill_decode  usage per expert and layer, prompt (prefill) vs generated (decode)
  ep, ep_info           expert parallelism on 2, 4, 8, ... GPUs: per-pass balancedness
                        (mean/max GPU load) of vLLM's contiguous placement and of vLLM's
                        EPLB policy (needs vLLM installed; skipped, and said so, without
                        vLLM or with --no-eplb)
  coactivation          expert pairs chosen together more often than chance (lift)
  transitions           top-1 at layer l -> top-1 at the next logged layer, mutual information
  locality              consecutive decode tokens: same top-1? top-k overlap (Jaccard)?
  token_experts         per expert, the input tokens it is over-represented on (lift)
  text_view             one request's text coloured by top-1 expert (--request, --layer)
  compare               with --compare: Jensen-Shannon divergence per layer vs run B

  python3 analyze_routes.py moe_routes.jsonl --out report/
  python3 analyze_routes.py 'runs/gsm8k/*.jsonl' --out cmp/ --compare runs/code/ \
      --tokenizer Qwen/Qwen1.5-MoE-A2.7B-Chat --request 7 --layer 12
"""

import argparse
import sys
from pathlib import Path

from moe_profiler import routes
from moe_profiler.analysis import pipeline
from moe_profiler.analysis.description import OptionError, Options


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logs", nargs="+", help="route log files, folders or globs (one run)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the three outputs")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer folder or hub id: show token text instead of ids (default: ids)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="LOG",
        default=[],
        help="logs of a second run (e.g. another prompt set) to compare this one with",
    )
    parser.add_argument(
        "--request",
        help="request of the text view: vLLM's id or the caller's (e.g. 7); "
        "default: the longest of the first 16 requests",
    )
    parser.add_argument(
        "--layer",
        type=int,
        help="layer of the per-layer figures and the text view (default: first logged)",
    )
    parser.add_argument(
        "--top", type=int, default=10, help="entries per list in analysis.json (default: 10)"
    )
    parser.add_argument(
        "--min-count",
        type=int,
        default=5,
        help="fewest occurrences a pair, transition or token needs to be listed (default: 5)",
    )
    parser.add_argument(
        "--redundant-per-gpu",
        type=int,
        default=1,
        help="EPLB's second variant gets this many redundant experts per GPU (default: 1)",
    )
    parser.add_argument(
        "--no-eplb",
        action="store_true",
        help="skip the EPLB placements (saves importing vLLM and torch: ~0.8 GB, ~7 s)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first corrupt or truncated line instead of skipping it",
    )
    args = parser.parse_args()
    for name in ("top", "min_count", "redundant_per_gpu"):
        if getattr(args, name) < (0 if name == "redundant_per_gpu" else 1):
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: too small")
    options = Options(
        tokenizer=args.tokenizer,
        compare=args.compare,
        request=args.request,
        layer=args.layer,
        top=args.top,
        min_count=args.min_count,
        redundant_per_gpu=args.redundant_per_gpu,
        eplb=not args.no_eplb,
        strict=args.strict,
    )
    try:
        analysis = pipeline.write_report(args.logs, args.out, options)
    except (routes.RouteLogError, OptionError, OSError) as e:
        print(f"analyze_routes.py: {e}", file=sys.stderr)
        return 1
    meta = analysis["meta"]
    print(
        f"{meta['route_lines']:,} route lines, {len(meta['layers'])} layer(s), "
        f"{analysis['ep_info']['passes']:,} passes: wrote {args.out / 'report.html'}, "
        f"{args.out / 'analysis.json'} and {args.out / 'sglang_logical_count.json'}"
    )
    if not analysis["ep_info"]["eplb_available"]:
        print(f"note: {analysis['ep_info']['eplb']}")
    if args.request and analysis["text_view"].get("found") is False:
        first = ", ".join(analysis["text_view"]["seen"]) or "none"
        print(
            f"analyze_routes.py: --request {args.request}: not in the logs (first requests: "
            f"{first}); the outputs were written without the text view",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
