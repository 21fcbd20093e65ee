"""Inputs -> every analysis in one read -> analysis.json, report.html, sglang_logical_count.json.

The analyses are ``registry.ANALYSES``; this module only runs them (see
``description`` for the steps) and writes what they return. It checks the inputs
against each analysis (``plan``): an analysis is fed the inputs that provide what it
needs, and is left out, with one sentence saying what is missing, when none does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

from moe_profiler.analysis import coverage, html_report
from moe_profiler.analysis.common import run_identity
from moe_profiler.analysis.description import Analysis, Finished, OptionError, Options, Run
from moe_profiler.analysis.inputs import Input, LogInput, feed, open_inputs, read_all
from moe_profiler.analysis.registry import ANALYSES


def write_report(specs: list[str], out_dir: Path, options: Options) -> dict:
    """Read the inputs ``specs`` once, run every analysis, write the outputs to ``out_dir``."""
    run = describe_run(open_inputs(specs, options.num_experts), options)
    finished, left_out = run_analyses(run)
    results = {"meta": _meta(run, finished, left_out)}
    for _, done in finished:
        results.update(done.results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(results, indent=1) + "\n")
    for analysis, done in finished:
        for name, text in (analysis.files(done) if analysis.files else {}).items():
            (out_dir / name).write_text(text)
    sections = {
        analysis.key: html_report.notes_html(done.notes)
        + analysis.section(done, _figure_uri(analysis, done))
        for analysis, done in finished
    }
    sections |= {key: html_report.notes_html([why]) for key, why in left_out.items()}
    shown = [(a, sections[a.key]) for a in ANALYSES if a.key in sections]
    page = html_report.render(results, shown)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return results


def run_analyses(run: Run) -> tuple[list[tuple[Analysis, Finished]], dict[str, str]]:
    """Every analysis this report asks for, each fed its inputs from the same one read;
    and the sentence of each analysis left out (by its key)."""
    started, left_out = [], {}
    for analysis in ANALYSES:
        fed = coverage.fed_inputs(analysis, run.inputs)
        if not fed:
            left_out[analysis.key] = coverage.left_out(analysis, run.inputs)
            continue
        own = dataclasses.replace(run, inputs=fed, provides=coverage.common(fed))
        state = analysis.start(own)
        if state is not None:
            started.append((analysis, own, state))

    def takers(one: Input) -> list:
        return [state for _, own, state in started if any(one is x for x in own.inputs)]

    for one, item in read_all(run.inputs, run.options.strict, run.options.warn, takers):
        for state in takers(one):
            feed(state, item)
    finished = [
        (
            analysis,
            Finished(
                state,
                analysis.results(state, own),
                own,
                coverage.notes(analysis, own.inputs, run.inputs),
            ),
        )
        for analysis, own, state in started
    ]
    return finished, left_out


def describe_run(inputs: list[Input], options: Options) -> Run:
    """What every analysis is given: the inputs' shape and the options, checked."""
    layers = sorted({layer for one in inputs for layer in one.layers})
    layer = layers[0] if options.layer is None else options.layer
    if layer not in layers:
        raise OptionError(f"--layer {layer}: not a logged layer (logged: {layers})")
    known = [one.num_layers for one in inputs if one.num_layers is not None]
    return Run(
        inputs=inputs,
        layers=layers,
        num_experts=next(one.num_experts for one in inputs if one.num_experts is not None),
        top_k=inputs[0].top_k,
        num_layers=known[0] if known else None,
        layer=layer,
        title=next((one.model for one in inputs if one.model), "unknown model"),
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


def _meta(run: Run, finished: list[tuple[Analysis, Finished]], left_out: dict) -> dict:
    inputs = [{**coverage.describe(one), **one.account()} for one in run.inputs]
    logs = [log for one in run.inputs if isinstance(one, LogInput) for log in one.logs]
    return {
        **run_identity(logs[0].header if logs else {}, [f for i in run.inputs for f in i.files]),
        "model_name": run.title,
        "num_experts": run.num_experts,
        "top_k": run.top_k,
        "num_layers": run.num_layers,
        "layers": run.layers,
        "route_lines": sum(i.get("route_lines", 0) for i in inputs),
        "skipped_lines": sum(i.get("skipped_lines", 0) for i in inputs),
        "complete": all(i["complete"] for i in inputs),
        "tokenizer": run.options.tokenizer,
        "inputs": inputs,
        "sections": {
            **{
                analysis.key: {"inputs": [str(f) for one in done.run.inputs for f in one.files]}
                | ({"notes": list(done.notes)} if done.notes else {})
                for analysis, done in finished
            },
            **{key: {"left_out": why} for key, why in left_out.items()},
        },
    }
