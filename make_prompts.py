#!/usr/bin/env python3
"""Write the first N GSM8K test questions to prompts.txt, one prompt per line.

By default the questions come from the Hugging Face hub (openai/gsm8k, config
"main", split "test") through the `datasets` package. Offline, give a local
GSM8K JSONL file (one {"question": ..., "answer": ...} object per line) with
--from-file. A newline inside a question is written as \\n (a backslash as \\\\),
so every line is exactly one prompt; run_generate.py reads it back.

  python3 make_prompts.py                                   # 25 questions from the hub
  python3 make_prompts.py --from-file ../shared/data/gsm8k/test.jsonl --n 100
"""

import argparse
import sys
from pathlib import Path

from moe_profiler.running import prompts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=25, help="number of questions (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("prompts.txt"), help="file to write (default: %(default)s)"
    )
    parser.add_argument(
        "--from-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read a local GSM8K JSONL file instead of the hub",
    )
    args = parser.parse_args()
    try:
        questions = prompts.load_questions(args.n, args.from_file)
    except prompts.PromptsError as e:
        print(f"make_prompts.py: {e}", file=sys.stderr)
        return 1
    prompts.write_prompts(questions, args.out)
    print(f"wrote {len(questions)} prompts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
