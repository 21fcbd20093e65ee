"""Load: how often each expert of each layer is chosen, split into prefill and decode.

Times in a token's top-k, mean router weight and balance metrics per layer, kept
apart for prompt tokens (prefill) and generated tokens (decode); lines whose phase is
unknown (logs before schema 3), the windows of counts logs and dumps (counted on the
device, not split by phase) go to ``unknown``. vLLM's own ``routed_experts`` carry no
weights: there the mean weights are left out. All phases together this is also what
``plot_experts.py`` reports (``usage_summary``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from moe_profiler.analysis.common import LayerRows, shares
from moe_profiler.analysis.description import Analysis, Finished, Need
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.reading import routes
from moe_profiler.reading.columns import DECODE, PREFILL, CountsWindow, RouteBlock

PHASES = ("prefill", "decode", "unknown")
_UNKNOWN = PHASES.index("unknown")


class ExpertLoad:
    """Per phase, layer and expert: times chosen and router weight sum.

    Feed it route blocks (``add``) or the windows of a counts log (``add_window``);
    memory is constant. ``weights`` False: the inputs carry no router weights.
    """

    def __init__(self, layers: list[int], num_experts: int, top_k: int, weights=True) -> None:
        self.rows = LayerRows(layers)
        self.num_experts, self.top_k, self.weights = num_experts, top_k, weights
        shape = (len(PHASES), len(self.rows), num_experts)
        self.counts = np.zeros(shape, dtype=np.int64)
        self.weight_sums = np.zeros(shape, dtype=np.float64)
        self.tokens = np.zeros(shape[:2], dtype=np.int64)

    def add(self, block: RouteBlock) -> None:
        """Count the lines of ``block``."""
        phase = np.where(block.phase == PREFILL, 0, np.where(block.phase == DECODE, 1, _UNKNOWN))
        cell = phase * len(self.rows) + self.rows.rows(block.layer)
        self.tokens += np.bincount(cell, minlength=self.tokens.size).reshape(self.tokens.shape)
        flat = (cell[:, None] * self.num_experts + block.experts).ravel()
        size = self.counts.size
        self.counts += np.bincount(flat, minlength=size).reshape(self.counts.shape)
        if self.weights:
            self.weight_sums += np.bincount(
                flat, weights=block.weights.ravel().astype(np.float64), minlength=size
            ).reshape(self.counts.shape)

    def add_window(self, window: CountsWindow) -> None:
        """Add one window of a counts log (phase unknown: the device counts all tokens)."""
        rows = self.rows.rows(window.layers)
        self.counts[_UNKNOWN, rows] += window.counts
        self.weight_sums[_UNKNOWN, rows] += window.weight_sums
        self.tokens[_UNKNOWN, rows] += window.counts.sum(axis=1) // self.top_k

    def totals(self) -> np.ndarray:
        """int64 [layers, experts]: times chosen, all phases together."""
        return self.counts.sum(axis=0)

    def weight_totals(self) -> np.ndarray:
        """float64 [layers, experts]: router weight sums, all phases together."""
        return self.weight_sums.sum(axis=0)

    def result(self) -> dict:
        """``{"load": {layer: all phases}, "prefill_decode": {layer: {phase: ...}}}``."""
        load, by_phase = {}, {}
        for row, layer in enumerate(self.rows.layers):
            load[str(layer)] = self._summary(
                self.tokens[:, row].sum(),
                self.counts[:, row].sum(0),
                self.weight_sums[:, row].sum(0),
            )
            by_phase[str(layer)] = {
                phase: self._summary(
                    self.tokens[p, row], self.counts[p, row], self.weight_sums[p, row]
                )
                for p, phase in enumerate(PHASES)
                if phase != "unknown" or self.tokens[p, row]
            }
        return {"load": load, "prefill_decode": by_phase}

    def _summary(self, tokens: int, counts: np.ndarray, weight_sums: np.ndarray) -> dict:
        summary = {"tokens": int(tokens), "counts": counts.tolist()}
        if self.weights:
            mean = np.divide(weight_sums, counts, out=np.zeros_like(weight_sums), where=counts > 0)
            summary["mean_weight"] = [round(float(w), 6) for w in mean]
        return {**summary, **layer_metrics(counts)}


def count_expert_usage(
    logs: list[routes.LogFile], strict: bool = False, warn: Callable[[str], None] | None = None
) -> ExpertLoad:
    """The load of ``logs`` (one run, see ``routes.open_logs``): route lines or counts windows."""
    header = logs[0].header
    layers = sorted({layer for log in logs for layer in log.header["layers"]})
    load = ExpertLoad(layers, header["num_experts"], header["top_k"])
    if logs[0].mode == routes.COUNTS_MODE:
        for window in routes.iter_counts(logs, strict=strict, warn=warn):
            load.add_window(window)
    else:
        for block in routes.iter_blocks(logs, strict=strict, warn=warn):
            load.add(block)
    return load


def layer_metrics(counts: np.ndarray) -> dict:
    """Load-balance metrics of one layer's per-expert counts.

    max_over_mean: hottest expert's load over the mean load (1 = perfectly even);
    cv: coefficient of variation of the loads; entropy: normalised Shannon
    entropy of the usage distribution (1 = uniform); jain: Jain's fairness index
    (1 = uniform, 1/n = one expert takes everything).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, total = len(counts), counts.sum()
    if total == 0:
        return {"assignments": 0}
    mean = total / n
    share = counts / total
    nonzero = share[share > 0]
    order = np.argsort(-counts, kind="stable")
    return {
        "assignments": int(total),
        "max_over_mean": float(counts.max() / mean),
        "cv": float(counts.std() / mean),
        "entropy": float(-(nonzero * np.log(nonzero)).sum() / np.log(n)) if n > 1 else 1.0,
        "jain": float(total**2 / (n * (counts**2).sum())),
        "unused_experts": int((counts == 0).sum()),
        "hottest": [{"expert": int(e), "count": int(counts[e])} for e in order[:3]],
        "coldest": [{"expert": int(e), "count": int(counts[e])} for e in order[::-1][:3]],
    }


PHASE_LOOK = {  # phase -> (label, colour, the colour in words)
    "prefill": ("prefill", "#3b6ea8", "blue"),
    "decode": ("decode", "#e07b39", "orange"),
    "unknown": ("phase not recorded", "#888888", "grey"),
}


def figure(load: ExpertLoad, layer: int, title: str):
    """Usage per expert at ``layer``, one bar per phase seen (shares), and a layer heatmap."""
    import matplotlib.pyplot as plt

    row = load.rows.layers.index(layer)
    experts = np.arange(load.num_experts)
    several = len(load.rows) > 1
    fig, axes = plt.subplots(
        2 if several else 1,
        1,
        figsize=(max(8.0, load.num_experts * 0.2), 8.0 if several else 4.0),
        squeeze=False,
        gridspec_kw={"height_ratios": [1, 1.2]} if several else None,
    )
    bars = axes[0][0]
    seen = [p for p in range(len(PHASES)) if load.tokens[p, row]] or [0, 1]
    width = 0.8 / len(seen)
    for n, p in enumerate(seen):
        label, color, _ = PHASE_LOOK[PHASES[p]]
        bars.bar(
            experts + (n - (len(seen) - 1) / 2) * width,
            shares(load.counts[p, row]) * 100,
            width=width,
            color=color,
            label=f"{label} ({int(load.tokens[p, row]):,} tokens)",
        )
    bars.axhline(100 / load.num_experts, color="#555", linestyle="--", linewidth=1, label="uniform")
    bars.set_xlim(-0.7, load.num_experts - 0.3)
    bars.set_xlabel("expert id")
    bars.set_ylabel("% of the phase's choices")
    bars.set_title(f"{title}: layer {layer}")
    bars.legend(loc="upper right", fontsize=8)
    if several:
        usage_heatmap(
            fig,
            axes[1][0],
            load.totals(),
            load.rows.layers,
            "usage relative to the uniform share (1 = even), all tokens",
        )
    fig.tight_layout()
    return fig


def usage_heatmap(fig, axis, counts: np.ndarray, layers: list[int], title: str) -> None:
    """Layer x expert image of each expert's usage relative to the uniform share (1 = even)."""
    relative = shares(counts) * counts.shape[1]
    image = axis.imshow(relative, aspect="auto", cmap="magma", interpolation="nearest")
    axis.set_xlabel("expert id")
    axis.set_ylabel("layer")
    ticks = np.linspace(0, len(layers) - 1, min(len(layers), 12)).round().astype(int)
    axis.set_yticks(ticks, [str(layers[t]) for t in ticks])
    axis.set_title(title)
    fig.colorbar(image, ax=axis, fraction=0.03, pad=0.01)


def section(done: Finished, figure_uri: str | None) -> str:
    """The figure, a table of each phase seen per layer (tokens, max/mean, hottest experts)."""
    by_layer = done.results["prefill_decode"]
    seen = phases_seen(by_layer) or ["prefill", "decode"]
    rows = []
    for key, phases in by_layer.items():
        row = [key]
        for phase in seen:
            v = phases.get(phase, {})
            hot = ", ".join(str(h["expert"]) for h in v.get("hottest", []))
            row += [f"{v.get('tokens', 0):,}", number(v.get("max_over_mean"), 2), hot or "-"]
        rows.append(row)
    names = [PHASE_LOOK[p][0] for p in seen]
    colours = ", ".join(f"{PHASE_LOOK[p][0]} ({PHASE_LOOK[p][2]})" for p in seen)
    head = ["layer"] + [f"{n} {what}" for n in names for what in ("tokens", "max/mean", "hottest")]
    return (
        figure_html(
            figure_uri,
            "load",
            f"Top: each expert's share of the choices at layer {done.run.layer}: {colours}; "
            "dashed line = every expert equally used; below: every logged layer's usage "
            "relative to that even share.",
        )
        + table(head, rows)
        + note(
            "max/mean: the hottest expert's load over the mean load (1 = even). Counts, mean "
            "router weights, entropy and Jain's index per phase: <code>analysis.json</code> → "
            "<code>prefill_decode</code>, <code>load</code>. Counts logs and dumps count all "
            "tokens together (phase not recorded); their prompt tokens per window are in the "
            "time series."
        )
    )


def phases_seen(by_layer: dict) -> list[str]:
    """The phases with tokens at any layer of ``prefill_decode``, in ``PHASES`` order."""
    return [p for p in PHASES if any(v.get(p, {}).get("tokens") for v in by_layer.values())]


ANALYSIS = Analysis(
    key="load",
    title="Load: prefill and decode",
    question="Which experts does the model use, and do prompt tokens (prefill) use them "
    "differently from generated tokens (decode)?",
    keys=("load", "prefill_decode"),
    needs=frozenset({Need.EXPERT_COUNTS}),
    start=lambda run: ExpertLoad(
        run.layers, run.num_experts, run.top_k, weights=Need.WEIGHT_SUMS in run.provides
    ),
    results=lambda load, run: load.result(),
    figure=lambda done: figure(done.accumulator, done.run.layer, done.run.title),
    section=section,
    optional={Need.WEIGHT_SUMS: "each expert's mean router weight"},
)
