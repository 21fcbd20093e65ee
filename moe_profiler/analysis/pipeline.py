"""Logs -> every analysis in one read -> analysis.json, report.html, sglang_logical_count.json.

The analyses are ``registry.ANALYSES``; this module only runs them (see
``description`` for the steps) and writes what they return.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from moe_profiler.analysis import html_report
from moe_profiler.analysis.common import model_label, run_identity
from moe_profiler.analysis.description import Analysis, Finished, OptionError, Options, Run
from moe_profiler.analysis.registry import ANALYSES
from moe_profiler.reading import routes


def write_report(specs: list[str], out_dir: Path, options: Options) -> dict:
    """Read the logs ``specs`` once, run every analysis, write the outputs to ``out_dir``."""
    logs = routes.open_logs(routes.find_logs(specs))
    run = describe_run(logs, options)
    finished = run_analyses(run)
    results = {"meta": _meta(run)}
    for _, done in finished:
        results.update(done.results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(results, indent=1) + "\n")
    for analysis, done in finished:
        for name, text in (analysis.files(done) if analysis.files else {}).items():
            (out_dir / name).write_text(text)
    sections = [
        (analysis, analysis.section(done, _figure_uri(analysis, done)))
        for analysis, done in finished
    ]
    (out_dir / "report.html").write_text(html_report.render(results, sections), encoding="utf-8")
    return results


def run_analyses(run: Run) -> list[tuple[Analysis, Finished]]:
    """Every analysis this report asks for, all fed the same one read of the logs."""
    started = [(analysis, analysis.start(run)) for analysis in ANALYSES]
    started = [(analysis, state) for analysis, state in started if state is not None]
    options = run.options
    for block in routes.iter_blocks(run.logs, strict=options.strict, warn=options.warn):
        for _, state in started:
            state.add(block)
    return [
        (analysis, Finished(state, analysis.results(state, run), run))
        for analysis, state in started
    ]


def describe_run(logs: list[routes.LogFile], options: Options) -> Run:
    """What every analysis is given: the run's shape and the options, checked."""
    header = logs[0].header
    layers = sorted({layer for log in logs for layer in log.header["layers"]})
    layer = layers[0] if options.layer is None else options.layer
    if layer not in layers:
        raise OptionError(f"--layer {layer}: not a logged layer (logged: {layers})")
    return Run(
        logs=logs,
        layers=layers,
        num_experts=header["num_experts"],
        top_k=header["top_k"],
        layer=layer,
        title=model_label(header),
        options=options,
        decode=load_tokenizer(options.tokenizer) if options.tokenizer else None,
    )


def _figure_uri(analysis: Analysis, done: Finished) -> str | None:
    if analysis.figure is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    made = analysis.figure(done)
    return None if made is None else html_report.png_data_uri(made)


def load_tokenizer(name: str) -> Callable[[int], str]:
    """``id -> text`` of the tokenizer in folder (or hub id) ``name``, cached."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, ImportError) as e:
        raise OptionError(f"--tokenizer {name}: cannot load a tokenizer from it ({e})") from None
    return functools.lru_cache(maxsize=1 << 16)(lambda t: tokenizer.decode([t]))


def _meta(run: Run) -> dict:
    logs = run.logs
    return {
        **run_identity(logs),
        "num_layers": logs[0].header.get("num_layers"),
        "layers": run.layers,
        "route_lines": sum(log.routes for log in logs),
        "skipped_lines": sum(len(log.problems) for log in logs),
        "complete": all(log.trailer is not None for log in logs),
        "tokenizer": run.options.tokenizer,
    }
