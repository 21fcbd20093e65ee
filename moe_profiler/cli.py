"""The ``moe-profiler`` command: one subcommand per job, each in ``COMMANDS``.

A subcommand is a name, a one-line summary, a function that adds its arguments to
a parser and a function that runs it with the parsed arguments and returns the
exit status. To add one, write those two functions and add a row to ``COMMANDS``.
The top-level scripts (``analyze_routes.py``, ``plot_experts.py``) use the same
functions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moe_profiler.analysis.description import OptionError, Options
from moe_profiler.analysis.registry import sections_help
from moe_profiler.reading import routes

LOG_HELP = "log files, folders (their *.jsonl) or globs; the files of one run are merged"


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``plot`` (and of plot_experts.py)."""
    parser.add_argument(
        "logs", nargs="*", default=["moe_routes.jsonl"], help=f"{LOG_HELP} (default: %(default)s)"
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
    add_strict_argument(parser)


def add_strict_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first corrupt or truncated line instead of skipping it",
    )


def run_plot(args: argparse.Namespace, prog: str = "moe-profiler plot") -> int:
    from moe_profiler.analysis import usage_summary

    try:
        summary = usage_summary.summarize_expert_usage(
            args.logs, args.out, args.summary, args.strict, args.layer
        )
    except (routes.RouteLogError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    print(usage_summary.usage_table(summary))
    print(f"wrote {args.out} and {args.summary}")
    return 0


class AtLeast(argparse.Action):
    """An int option that refuses values below ``minimum`` (argparse's error, exit status 2)."""

    def __init__(self, *args, minimum: int, **kwargs) -> None:
        super().__init__(*args, type=int, **kwargs)
        self.minimum = minimum

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if value < self.minimum:
            parser.error(f"{option_string} {value}: too small")
        setattr(namespace, self.dest, value)


INPUT_HELP = (
    "route or counts logs (and their rotated parts), dumps of /dump_expert_distribution_record, "
    "JSONL files of OpenAI responses with vLLM's routed_experts: files, folders (their *.jsonl) "
    "or globs, told apart by their content; the files of one run are merged"
)


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``analyze`` (and of analyze_routes.py)."""
    parser.add_argument("logs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    parser.add_argument("--out", type=Path, required=True, help="folder for the three outputs")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer folder or hub id: show token text instead of ids (default: ids)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="INPUT",
        default=[],
        help="inputs of a second run (e.g. another prompt set) to compare this one with",
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
        "--num-experts",
        action=AtLeast,
        minimum=1,
        help="the model's expert count, for vLLM's routed_experts (they carry ids only); "
        "default: the other inputs'",
    )
    parser.add_argument(
        "--top",
        action=AtLeast,
        minimum=1,
        default=10,
        help="entries per list in analysis.json (default: %(default)s)",
    )
    parser.add_argument(
        "--min-count",
        action=AtLeast,
        minimum=1,
        default=5,
        help="fewest occurrences a pair, transition or token needs to be listed "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--redundant-per-gpu",
        action=AtLeast,
        minimum=0,
        default=1,
        help="EPLB's second variant gets this many redundant experts per GPU "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--no-eplb",
        action="store_true",
        help="skip the EPLB placements (saves importing vLLM and torch: ~0.8 GB, ~7 s)",
    )
    add_strict_argument(parser)


def run_analyze(args: argparse.Namespace, prog: str = "moe-profiler analyze") -> int:
    from moe_profiler.analysis import pipeline

    options = Options(
        tokenizer=args.tokenizer,
        compare=args.compare,
        request=args.request,
        layer=args.layer,
        num_experts=args.num_experts,
        top=args.top,
        min_count=args.min_count,
        redundant_per_gpu=args.redundant_per_gpu,
        eplb=not args.no_eplb,
        strict=args.strict,
    )
    try:
        results = pipeline.write_report(args.logs, args.out, options)
    except (routes.RouteLogError, OptionError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    written = [args.out / name for name in ("report.html", "analysis.json")]
    if "ep" in results:
        written.append(args.out / "sglang_logical_count.json")
    print(f"{read_summary(results)}: wrote {', '.join(map(str, written))}")
    if "ep_info" in results and not results["ep_info"]["eplb_available"]:
        print(f"note: {results['ep_info']['eplb']}")
    for key, section in results["meta"]["sections"].items():
        if "left_out" in section:
            print(f"{key}: {section['left_out']}")
    if args.request and results.get("text_view", {}).get("found") is False:
        first = ", ".join(results["text_view"]["seen"]) or "none"
        print(
            f"{prog}: --request {args.request}: not in the logs (first requests: "
            f"{first}); the outputs were written without the text view",
            file=sys.stderr,
        )
        return 1
    return 0


def read_summary(results: dict) -> str:
    """What the report read, in one line: route lines, windows, responses, layers, passes."""
    from moe_profiler.analysis.inputs import read_in_words

    inputs = results["meta"]["inputs"]
    keys = ("route_lines", "windows", "responses")
    read = read_in_words({k: sum(one.get(k, 0) for one in inputs) for k in keys}, keys)
    read.append(f"{len(results['meta']['layers'])} layer(s)")
    if results.get("ep_info", {}).get("passes"):
        read.append(f"{results['ep_info']['passes']:,} passes")
    return ", ".join(read)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", help=LOG_HELP)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("parquet"),
        help="folder for the Parquet files, one per log: <log name>.parquet (default: %(default)s)",
    )
    parser.add_argument(
        "--compression",
        default="zstd",
        choices=["zstd", "snappy", "gzip", "none"],
        help="Parquet compression (default: %(default)s)",
    )
    add_strict_argument(parser)


def run_export(args: argparse.Namespace) -> int:
    from moe_profiler.reading import export

    try:
        logs = routes.open_logs(routes.find_logs(args.logs))
        written = export.export_logs(logs, args.out, args.strict, compression=args.compression)
    except (routes.RouteLogError, OSError) as e:
        print(f"moe-profiler export: {e}", file=sys.stderr)
        return 1
    rows = sum(log.windows if log.mode == routes.COUNTS_MODE else log.routes for log in logs)
    skipped = sum(len(log.problems) for log in logs)
    print(
        f"wrote {len(written)} Parquet file(s) to {args.out}: {rows:,} rows"
        + (f", {skipped} bad lines skipped" if skipped else "")
    )
    for path in written:
        print(f"  {path}")
    return 0


ANALYZE_DESCRIPTION = """\
Reads the inputs once (route or counts logs, dumps of the recorder endpoint, vLLM's own
routed_experts; a section the inputs cannot answer is left out, saying why) and writes
to --out: report.html (one self-contained page, figures embedded, opens offline; each
section says what it answers and what its figure shows), analysis.json (every number
of the page) and sglang_logical_count.json (per-layer expert loads for SGLang's
--init-expert-location).

  moe-profiler analyze moe_routes.jsonl --out report/
  moe-profiler analyze counts.p*.jsonl counts.dump-*.json --out report/
  moe-profiler analyze responses.jsonl --num-experts 60 --out report/
  moe-profiler analyze 'runs/gsm8k/*.jsonl' --out cmp/ --compare runs/code/ \\
      --tokenizer Qwen/Qwen1.5-MoE-A2.7B-Chat --request 7 --layer 12

"""

COMMANDS = [
    Command(
        "analyze",
        "the report: every analysis in one read -> report.html (= analyze_routes.py)",
        add_analyze_arguments,
        run_analyze,
        ANALYZE_DESCRIPTION + sections_help(),
    ),
    Command(
        "plot",
        "expert usage: histogram PNG, summary JSON and a table (= plot_experts.py)",
        add_plot_arguments,
        run_plot,
        "Counts how often each expert of each logged layer was chosen and writes a\n"
        "histogram (one layer, plus a layer x expert heatmap), a JSON summary with\n"
        "load-balance metrics, and a table.",
    ),
    Command(
        "export",
        "logs -> Parquet, one file per log, for DuckDB, Spark, polars, pandas",
        add_export_arguments,
        run_export,
        "Each route line becomes a row (run_id, host, dp, pp, tp, part, step, token,\n"
        "layer, req_id, pos, tok, phase, experts, weights); counts logs give one row per\n"
        "window and layer. The header is kept in the file's metadata.",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-profiler",
        description="Analyse the MoE route logs that vLLM writes with VLLM_LOG_MOE set.",
        epilog="moe-profiler COMMAND --help explains a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.summary,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ModuleNotFoundError as e:
        if e.name not in ("pyarrow", "matplotlib"):
            raise
        print(
            f"moe-profiler {args.command}: {e.name} is missing: "
            "pip install 'vllm-moe-expert-profiler[analysis]'",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
