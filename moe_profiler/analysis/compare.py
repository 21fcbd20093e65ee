"""Compare two runs: does one prompt set route differently from another?

Per layer logged in both runs, each run's expert distribution is the share of all
top-k choices that went to each expert. ``jsd_bits`` is the Jensen-Shannon divergence
between the two distributions in bits (0 = identical, 1 = no expert in common);
``moved`` lists the experts whose share changed most (run B minus run A, in points
of share). Run B (``--compare``) may be a routes or a counts log of the same model;
any input the report reads (a routes or counts log, dumps, vLLM's ``routed_experts``) of
the same model; it is read after run A.
"""

from __future__ import annotations

import html

import numpy as np

from moe_profiler.analysis.common import shares
from moe_profiler.analysis.description import Analysis, Finished, Need, OptionError, Options, Run
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.analysis.inputs import Input, feed, open_inputs, read_all
from moe_profiler.analysis.load import ExpertLoad
from moe_profiler.reading.columns import CountsWindow, RouteBlock


def jensen_shannon_bits(p: np.ndarray, q: np.ndarray) -> float:
    """JS divergence (base 2) of the distributions proportional to ``p`` and ``q``."""
    p, q = shares(p), shares(q)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        used = a > 0
        return float((a[used] * np.log2(a[used] / m[used])).sum())

    return max((kl(p) + kl(q)) / 2, 0.0)


def compare_runs(
    counts_a: np.ndarray,
    layers_a: list[int],
    counts_b: np.ndarray,
    layers_b: list[int],
    top: int = 5,
) -> dict:
    """Per common layer: JSD in bits, and the ``top`` experts whose share moved most.

    ``counts_*`` are [len(layers_*), experts] times chosen (all phases) of runs A and B.
    """
    if counts_a.shape[1] != counts_b.shape[1]:
        raise ValueError(
            f"the runs have {counts_a.shape[1]} and {counts_b.shape[1]} experts: not comparable"
        )
    common = sorted(set(layers_a) & set(layers_b))
    if not common:
        raise ValueError(f"no layer is logged in both runs (A: {layers_a}, B: {layers_b})")
    out = {}
    for layer in common:
        a = counts_a[layers_a.index(layer)]
        b = counts_b[layers_b.index(layer)]
        delta = shares(b) - shares(a)
        order = np.lexsort((np.arange(len(delta)), -np.abs(delta)))[:top]
        out[str(layer)] = {
            "jsd_bits": round(jensen_shannon_bits(a, b), 6),
            "choices_a": int(a.sum()),
            "choices_b": int(b.sum()),
            "moved": [
                {
                    "expert": int(e),
                    "share_a": round(float(shares(a)[e]), 6),
                    "share_b": round(float(shares(b)[e]), 6),
                    "delta": round(float(delta[e]), 6),
                }
                for e in order
            ],
        }
    return out


def figure(result: dict, counts_a, layers_a, counts_b, layers_b, labels: tuple[str, str]):
    """JSD per layer, and both runs' shares at the layer where they differ most."""
    import matplotlib.pyplot as plt

    layers = [int(x) for x in result]
    jsd = [result[str(x)]["jsd_bits"] for x in layers]
    worst = layers[int(np.argmax(jsd))]
    a = shares(counts_a[layers_a.index(worst)]) * 100
    b = shares(counts_b[layers_b.index(worst)]) * 100
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 2]})
    left.bar([str(x) for x in layers], jsd, color="#7b5ea8")
    left.set_xlabel("layer")
    left.set_ylabel("Jensen-Shannon divergence (bits)")
    left.set_title("how differently the runs route, per layer")
    experts = np.arange(len(a))
    right.bar(experts - 0.2, a, width=0.4, color="#3b6ea8", label=f"A: {labels[0]}")
    right.bar(experts + 0.2, b, width=0.4, color="#e07b39", label=f"B: {labels[1]}")
    right.set_xlabel("expert id")
    right.set_ylabel("% of the run's choices")
    right.set_title(f"layer {worst} (largest divergence)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


class TwoRuns:
    """Run A's load, fed the read's blocks and windows; run B's, read from its own inputs by
    ``read_b``."""

    def __init__(self, run: Run, inputs_b: list[Input]) -> None:
        self.a = ExpertLoad(run.layers, run.num_experts, run.top_k)
        self.inputs_b = inputs_b
        self.b: ExpertLoad | None = None

    def add(self, block: RouteBlock) -> None:
        self.a.add(block)

    def add_window(self, window: CountsWindow) -> None:
        self.a.add_window(window)

    def read_b(self, run: Run) -> ExpertLoad:
        self.b = read_load(self.inputs_b, run.options)
        return self.b


def read_load(inputs: list[Input], options: Options) -> ExpertLoad:
    """The load of every route line and window of ``inputs``, all phases."""
    first = inputs[0]
    layers = sorted({layer for one in inputs for layer in one.layers})
    load = ExpertLoad(layers, first.num_experts, first.top_k)
    for _, item in read_all(inputs, options.strict, options.warn):
        feed(load, item)
    return load


def _start(run: Run) -> TwoRuns | None:
    """Run B's inputs, checked against run A (None: no ``--compare``)."""
    if not run.options.compare:
        return None
    inputs_b = open_inputs(run.options.compare, run.options.num_experts, run.num_experts)
    experts_b = inputs_b[0].num_experts
    if experts_b != run.num_experts:
        raise OptionError(
            f"--compare {inputs_b[0].files[0]}: {experts_b} experts, "
            f"the logs analysed have {run.num_experts}"
        )
    return TwoRuns(run, inputs_b)


def _results(runs: TwoRuns, run: Run) -> dict:
    b = runs.read_b(run)
    return {
        "compare": {
            "b": {
                "files": [str(f) for one in runs.inputs_b for f in one.files],
                "model": next((one.model for one in runs.inputs_b if one.model), None),
            },
            "layers": compare_runs(
                runs.a.totals(), runs.a.rows.layers, b.totals(), b.rows.layers, run.options.top
            ),
        }
    }


def section(done: Finished, figure_uri: str | None) -> str:
    """The figure and, per common layer, the divergence and the experts that moved most."""
    comparison = done.results["compare"]
    rows = [
        [
            layer,
            number(v["jsd_bits"], 4),
            ", ".join(f"{m['expert']} ({m['delta'] * 100:+.1f} pts)" for m in v["moved"][:3]),
        ]
        for layer, v in comparison["layers"].items()
    ]
    return (
        figure_html(
            figure_uri,
            "compare",
            "Left: Jensen-Shannon divergence between the two runs' expert distributions per "
            "layer (0 = identical, 1 = disjoint); right: both runs' shares at the layer "
            "where they differ most.",
        )
        + table(["layer", "JSD (bits)", "experts that moved most (B - A)"], rows)
        + note("Run B: " + "<br>".join(html.escape(f) for f in comparison["b"]["files"]))
    )


def _figure(done: Finished):
    runs = done.accumulator
    return figure(
        done.results["compare"]["layers"],
        runs.a.totals(),
        runs.a.rows.layers,
        runs.b.totals(),
        runs.b.rows.layers,
        ("this run", "--compare run"),
    )


ANALYSIS = Analysis(
    key="compare",
    title="Compare two runs",
    question="Does another prompt set (run B, --compare) route differently from this one (run A)?",
    keys=("compare",),
    needs=frozenset({Need.EXPERT_COUNTS}),
    start=_start,
    results=_results,
    figure=_figure,
    section=section,
)
