"""Logs -> every analysis in one read -> analysis.json, report.html, sglang_logical_count.json."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moe_profiler import routes
from moe_profiler.analysis import (
    coactivation,
    compare,
    expert_parallel,
    html_report,
    layer_paths,
    load,
    locality,
    text_view,
    token_experts,
)
from moe_profiler.analysis.common import model_label, run_identity
from moe_profiler.columns import RouteBlock
from moe_profiler.routes import iter_blocks


class OptionError(ValueError):
    """A command-line option that cannot be used, with the option's name."""


@dataclass
class Options:
    """What ``analyze`` does besides reading the logs (the script's options)."""

    tokenizer: str | None = None  # local folder or hub id: token ids -> text
    compare: list[str] = field(default_factory=list)  # logs of run B
    request: str | None = None  # request of the text view (default: longest of the first 16)
    layer: int | None = None  # layer of the per-layer figures (default: first logged)
    top: int = 10  # entries per list (pairs, transitions, tokens)
    min_count: int = 5  # fewest occurrences a pair, transition or token needs to be listed
    redundant_per_gpu: int = 1  # EPLB's second variant: this many more slots per GPU
    eplb: bool = True  # False: no EPLB placement (no vLLM/torch import: faster, less memory)
    strict: bool = False  # fail on the first bad line instead of skipping it
    warn: Callable[[str], None] | None = None


def analyze(specs: list[str], out_dir: Path, options: Options) -> dict:
    """Read the logs ``specs`` once, run every analysis, write the three outputs to ``out_dir``."""
    logs = routes.open_logs(routes.find_logs(specs))
    header = logs[0].header
    layers = sorted({layer for log in logs for layer in log.header["layers"]})
    layer = layers[0] if options.layer is None else options.layer
    if layer not in layers:
        raise OptionError(f"--layer {layer}: not a logged layer (logged: {layers})")
    decode = load_tokenizer(options.tokenizer) if options.tokenizer else None
    logs_b = routes.open_logs(routes.find_logs(options.compare)) if options.compare else []
    if logs_b and logs_b[0].header["num_experts"] != header["num_experts"]:
        raise OptionError(
            f"--compare {logs_b[0].path}: {logs_b[0].header['num_experts']} experts, "
            f"the logs analysed have {header['num_experts']}"
        )

    run = Accumulators(layers, header["num_experts"], header["top_k"], options)
    for block in iter_blocks(logs, strict=options.strict, warn=options.warn):
        run.add(block)
    analysis = {"meta": _meta(logs, layers, run, options.tokenizer), **run.results(decode)}
    view = run.request_view.result()
    if view:
        analysis["text_view"] = {
            "request": view["request"],
            "source": view["source"],
            "tokens": len(view["tokens"]),
            "layer": layer,
        }
    else:
        seen = run.request_view.seen()
        analysis["text_view"] = {"request": options.request, "found": False, "seen": seen}
    load_b = None
    if logs_b:
        layers_b = sorted({x for log in logs_b for x in log.header["layers"]})
        load_b = load.count_expert_usage(logs_b, strict=options.strict, warn=options.warn)
        analysis["compare"] = {
            "b": {
                "files": [str(log.path) for log in logs_b],
                "model": model_label(logs_b[0].header),
            },
            "layers": compare.compare_runs(
                run.load.totals(), layers, load_b.totals(), layers_b, options.top
            ),
        }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(analysis, indent=1) + "\n")
    num_layers = header.get("num_layers") or max(layers) + 1
    logical = expert_parallel.sglang_logical_count(run.load.totals(), layers, num_layers)
    (out_dir / "sglang_logical_count.json").write_text(json.dumps(logical) + "\n")
    figures = _figures(analysis, run, load_b, layer, model_label(header))
    view_html = text_view.render(view, header["num_experts"], layer, decode) if view else None
    page = html_report.render(analysis, figures, view_html, layer)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return analysis


class Accumulators:
    """Every analysis of one run, fed the same blocks."""

    def __init__(self, layers: list[int], num_experts: int, top_k: int, options: Options) -> None:
        self.options = options
        self.load = load.ExpertLoad(layers, num_experts, top_k)
        self.what_if = expert_parallel.ExpertParallelWhatIf(
            layers, num_experts, options.redundant_per_gpu
        )
        self.pairs = coactivation.CoActivation(layers, num_experts)
        self.paths = layer_paths.LayerTransitions(layers, num_experts)
        self.repeats = locality.TemporalLocality(layers, num_experts, top_k)
        self.specialists = token_experts.TokenSpecialisation(layers, num_experts, top_k)
        self.request_view = text_view.RequestTokens(layers, options.request)

    def add(self, block: RouteBlock) -> None:
        """Feed ``block`` to every analysis."""
        for accumulator in (
            self.load,
            self.what_if,
            self.pairs,
            self.paths,
            self.repeats,
            self.specialists,
            self.request_view,
        ):
            accumulator.add(block)

    def results(self, decode: Callable[[int], str] | None) -> dict:
        """The sections of ``analysis.json`` (all but meta, text_view and compare)."""
        top, min_count = self.options.top, self.options.min_count
        rebalance, eplb_source = (
            expert_parallel.load_eplb_policy()
            if self.options.eplb
            else (None, "turned off with --no-eplb")
        )
        return {
            **self.load.result(),
            "ep": self.what_if.result(rebalance),
            "ep_info": {
                "passes": self.what_if.passes,
                "eplb": eplb_source,
                "eplb_available": rebalance is not None,
                "redundant_per_gpu": self.options.redundant_per_gpu,
                "replica_split": "even share per replica (vLLM: flat index % replicas)",
            },
            "coactivation": self.pairs.result(top, min_count),
            "transitions": self.paths.result(top, min_count),
            "locality": self.repeats.result(),
            "token_experts": self.specialists.result(top, min_count, decode),
        }


def _figures(
    analysis: dict, run: Accumulators, load_b: load.ExpertLoad | None, layer: int, title: str
) -> dict[str, str]:
    """Every section's figure as a PNG data URI (sections without data get none)."""
    import matplotlib

    matplotlib.use("Agg")
    made = {
        "load": load.figure(run.load, layer, title),
        "ep": expert_parallel.figure(analysis["ep"], title) if analysis["ep"] else None,
        "coactivation": coactivation.figure(run.pairs, layer, title),
        "locality": locality.figure(analysis["locality"], analysis["meta"]["top_k"], title)
        if any(v["pairs"] for v in analysis["locality"].values())
        else None,
    }
    names = list(analysis["transitions"])
    if names:
        pair = next((n for n in names if n.startswith(f"{layer}->")), names[-1])
        made["transitions"] = layer_paths.figure(run.paths, pair, title)
    if load_b is not None:
        made["compare"] = compare.figure(
            analysis["compare"]["layers"],
            run.load.totals(),
            run.load.rows.layers,
            load_b.totals(),
            load_b.rows.layers,
            ("this run", "--compare run"),
        )
    return {name: html_report.png_data_uri(fig) for name, fig in made.items() if fig is not None}


def load_tokenizer(name: str) -> Callable[[int], str]:
    """``id -> text`` of the tokenizer in folder (or hub id) ``name``, cached."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, ImportError) as e:
        raise OptionError(f"--tokenizer {name}: cannot load a tokenizer from it ({e})") from None
    return functools.lru_cache(maxsize=1 << 16)(lambda t: tokenizer.decode([t]))


def _meta(
    logs: list[routes.LogFile], layers: list[int], run: Accumulators, tokenizer: str | None
) -> dict:
    return {
        **run_identity(logs),
        "num_layers": logs[0].header.get("num_layers"),
        "layers": layers,
        "route_lines": int(run.load.tokens.sum()),
        "skipped_lines": sum(len(log.problems) for log in logs),
        "complete": all(log.trailer is not None for log in logs),
        "tokenizer": tokenizer,
    }
