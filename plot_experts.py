#!/usr/bin/env python3
"""Expert usage from route logs: histogram PNG, JSON summary and a table.

Reads the logs as a stream (constant memory), merges several files (one per
rank of a multi-GPU run: give them one by one, as a folder, or as a glob) after
checking they come from one run, and writes:

  expert_hist.png      usage count per expert for one layer (dashed line: the
                       uniform share), plus a layer x expert heatmap when
                       several layers were logged
  expert_summary.json  per layer: tokens, counts and mean weight per expert,
                       max/mean load, coefficient of variation, normalised
                       entropy, Jain's fairness index, hottest/coldest experts

Corrupt or truncated lines are reported with file and line number and skipped
(--strict: the first one is an error, exit status 1).

  python3 plot_experts.py                           # moe_routes.jsonl
  python3 plot_experts.py 'runs/tp2/*.jsonl' --layer 5
"""

import argparse
import sys
from pathlib import Path

from moe_profiler import report, routes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "logs",
        nargs="*",
        default=["moe_routes.jsonl"],
        help="log files, folders or globs (default: moe_routes.jsonl)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("expert_hist.png"),
        help="histogram PNG to write (default: %(default)s)",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        default=Path("expert_summary.json"),
        help="summary JSON to write (default: %(default)s)",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="layer of the histogram (default: the first logged layer)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first corrupt or truncated line instead of skipping it",
    )
    args = parser.parse_args()
    try:
        summary = report.analyze(args.logs, args.out, args.summary, args.strict, args.layer)
    except (routes.RouteLogError, OSError) as e:
        print(f"plot_experts.py: {e}", file=sys.stderr)
        return 1
    print(report.table(summary))
    print(f"wrote {args.out} and {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
