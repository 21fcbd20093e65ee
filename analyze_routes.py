#!/usr/bin/env python3
r"""One report on how a MoE model routed: every analysis of its routing records in one read.

Reads the inputs once (files, folders or globs; several files of one run are merged
as plot_experts.py does): route logs, counts logs and their rotated parts, dumps of
/dump_expert_distribution_record, and JSONL files of OpenAI responses carrying vLLM's
own routed_experts, told apart by their content. Each section of the report is computed
from the inputs that record what it needs, and left out, saying why, where none does.
Writes to --out:

  report.html               one self-contained page (figures embedded, opens offline):
                            each section says what it answers and what its figure shows
  analysis.json             every number of the report
  sglang_logical_count.json per-layer expert loads for SGLang's --init-expert-location

The EPLB columns of the expert-parallel what-if need vLLM installed (without it, or
with --no-eplb, they are skipped and the report says so).

  python3 analyze_routes.py moe_routes.jsonl --out report/
  python3 analyze_routes.py counts.jsonl counts.dump-*.json --out report/
  python3 analyze_routes.py responses.jsonl --num-experts 60 --out report/
  python3 analyze_routes.py 'runs/gsm8k/*.jsonl' --out cmp/ --compare runs/code/ \
      --tokenizer Qwen/Qwen1.5-MoE-A2.7B-Chat --request 7 --layer 12

Installed (pip install '.[analysis]'), the same is `moe-profiler analyze`.

"""

import argparse
import sys

from moe_profiler import cli
from moe_profiler.analysis.registry import sections_help


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__ + sections_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_analyze_arguments(parser)
    return cli.run_analyze(parser.parse_args(), prog="analyze_routes.py")


if __name__ == "__main__":
    sys.exit(main())
