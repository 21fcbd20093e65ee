#!/usr/bin/env python3
"""Expert usage from route logs: histogram PNG, JSON summary and a table.

Reads the logs in column blocks (constant memory), merges several files (one
per rank of a multi-GPU run, or the parts of a rotated log: give them one by
one, as a folder, or as a glob) after checking they come from one run, and
writes (counts logs: the sum of their windows):

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

Installed (pip install '.[analysis]'), the same is `moe-profiler plot`.
"""

import argparse
import sys

from moe_profiler import cli


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_plot_arguments(parser)
    return cli.run_plot(parser.parse_args(), prog="plot_experts.py")


if __name__ == "__main__":
    sys.exit(main())
