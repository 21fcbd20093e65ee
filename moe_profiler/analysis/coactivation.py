"""Co-activation: which experts fire together in one token's top-k?

Per layer, ``count[a, b]`` is the number of tokens whose top-k holds both a and b.
Independent choice at the measured loads would give ``n_a * n_b / N`` such tokens
(N tokens, expert a in n_a of them), so ``lift = count * N / (n_a * n_b)``: 1 =
as often as chance, 2 = twice as often, 0 = never together.
"""

from __future__ import annotations

import numpy as np

from moe_profiler.analysis.common import LayerRows
from moe_profiler.analysis.description import Analysis, Finished, Need
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.reading.columns import RouteBlock


class CoActivation:
    """Pair counts per layer (upper triangle, a < b). Feed with ``add``."""

    def __init__(self, layers: list[int], num_experts: int) -> None:
        self.rows = LayerRows(layers)
        self.num_experts = num_experts
        self.pairs = np.zeros((len(self.rows), num_experts, num_experts), dtype=np.int64)
        self.expert_counts = np.zeros((len(self.rows), num_experts), dtype=np.int64)
        self.tokens = np.zeros(len(self.rows), dtype=np.int64)

    def add(self, block: RouteBlock) -> None:
        """Count the expert pairs of every line of ``block``."""
        rows = self.rows.rows(block.layer)
        experts = np.sort(block.experts, axis=1)
        size = self.num_experts
        self.tokens += np.bincount(rows, minlength=len(self.tokens))
        self.expert_counts += np.bincount(
            (rows[:, None] * size + experts).ravel(), minlength=self.expert_counts.size
        ).reshape(self.expert_counts.shape)
        first, second = np.triu_indices(experts.shape[1], k=1)
        cells = (rows[:, None] * size + experts[:, first]) * size + experts[:, second]
        self.pairs += np.bincount(cells.ravel(), minlength=self.pairs.size).reshape(
            self.pairs.shape
        )

    def lift(self, layer: int) -> np.ndarray:
        """float64 [experts, experts], symmetric: each pair's lift (NaN: an expert unused)."""
        row = self.rows.layers.index(layer)
        counts = self.pairs[row] + self.pairs[row].T
        n = self.expert_counts[row].astype(np.float64)
        expected = np.outer(n, n) / max(int(self.tokens[row]), 1)
        lift = np.divide(counts, expected, out=np.full(counts.shape, np.nan), where=expected > 0)
        np.fill_diagonal(lift, np.nan)
        return lift

    def result(self, top: int = 10, min_count: int = 5) -> dict:
        """Per layer: tokens and the ``top`` pairs by lift among pairs seen ``min_count`` times."""
        out = {}
        for row, layer in enumerate(self.rows.layers):
            lift = self.lift(layer)
            a, b = np.nonzero(np.triu(self.pairs[row] >= min_count, k=1))
            order = np.lexsort((b, a, -self.pairs[row][a, b], -lift[a, b]))[:top]
            out[str(layer)] = {
                "tokens": int(self.tokens[row]),
                "top_pairs": [
                    {
                        "experts": [int(a[i]), int(b[i])],
                        "count": int(self.pairs[row][a[i], b[i]]),
                        "lift": round(float(lift[a[i], b[i]]), 4),
                    }
                    for i in order
                ],
            }
        return out


def figure(coactivation: CoActivation, layer: int, title: str):
    """Heatmap of log2(lift) of every expert pair at ``layer``."""
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 6))
    lift_heatmap(fig, axis, coactivation.lift(layer), "expert id", "expert id")
    axis.set_title(f"{title}: layer {layer}")
    fig.tight_layout()
    return fig


def lift_heatmap(fig, axis, lift: np.ndarray, xlabel: str, ylabel: str) -> None:
    """log2 of a [experts, experts] lift matrix (red: more often than chance, blue: less)."""
    with np.errstate(divide="ignore"):
        log_lift = np.log2(lift)
    log_lift[lift == 0] = -3
    size = lift.shape[0]
    image = axis.imshow(
        np.clip(log_lift, -3, 3), cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest"
    )
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    ticks = np.unique(np.linspace(0, size - 1, min(size, 16)).round().astype(int))
    axis.set_xticks(ticks)
    axis.set_yticks(ticks)
    bar = fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    bar.set_label("log2 lift (0 = chance, +1 = twice as often, -3 = never or rarer)")


def section(done: Finished, figure_uri: str | None) -> str:
    """The lift heatmap of the chosen layer and its strongest pairs."""
    layer = done.run.layer
    pairs = done.results["coactivation"][str(layer)]["top_pairs"]
    rows = [
        [f"{p['experts'][0]} + {p['experts'][1]}", f"{p['count']:,}", number(p["lift"], 2)]
        for p in pairs
    ]
    return (
        figure_html(
            figure_uri,
            "coactivation",
            f"Layer {layer}: for every pair of experts, how much more often they share a token's "
            "top-k than independent choices at the same loads would (red: more often, blue: "
            "less often, log2 scale).",
        )
        + (
            table(["pair", "tokens with both", "lift"], rows)
            if rows
            else note("No pair reached the minimum count.")
        )
        + note(
            "lift = tokens with both × all tokens / (tokens with a × tokens with b); pairs seen "
            "fewer than the minimum count are not listed. Every layer: "
            "<code>analysis.json</code> → <code>coactivation</code>."
        )
    )


ANALYSIS = Analysis(
    key="coactivation",
    title="Co-activation",
    question="Which experts are chosen together for the same token, more (or less) often than "
    "chance?",
    keys=("coactivation",),
    needs=frozenset({Need.TOKEN_ROUTES}),
    start=lambda run: CoActivation(run.layers, run.num_experts),
    results=lambda pairs, run: {
        "coactivation": pairs.result(run.options.top, run.options.min_count)
    },
    figure=lambda done: figure(done.accumulator, done.run.layer, done.run.title),
    section=section,
)
