"""Load: how often each expert of each layer is chosen, split into prefill and decode.

The counts ``plot_experts.py`` gives (times in a token's top-k, mean router weight,
balance metrics), kept apart for prompt tokens (prefill) and generated tokens
(decode); lines whose phase is unknown (logs before schema 3) go to ``unknown``.
"""

from __future__ import annotations

import numpy as np

from moe_profiler.analysis.common import LayerRows, shares
from moe_profiler.columns import DECODE, PREFILL, RouteBlock
from moe_profiler.stats import layer_metrics

PHASES = ("prefill", "decode", "unknown")


class PhaseLoad:
    """Per phase, layer and expert: times chosen and router weight sum. Feed with ``add``."""

    def __init__(self, layers: list[int], num_experts: int) -> None:
        self.rows = LayerRows(layers)
        self.num_experts = num_experts
        shape = (len(PHASES), len(self.rows), num_experts)
        self.counts = np.zeros(shape, dtype=np.int64)
        self.weight_sums = np.zeros(shape, dtype=np.float64)
        self.tokens = np.zeros(shape[:2], dtype=np.int64)

    def add(self, block: RouteBlock) -> None:
        """Count the lines of ``block``."""
        phase = np.where(block.phase == PREFILL, 0, np.where(block.phase == DECODE, 1, 2))
        cell = phase * len(self.rows) + self.rows.rows(block.layer)
        self.tokens += np.bincount(cell, minlength=self.tokens.size).reshape(self.tokens.shape)
        flat = (cell[:, None] * self.num_experts + block.experts).ravel()
        size = self.counts.size
        self.counts += np.bincount(flat, minlength=size).reshape(self.counts.shape)
        self.weight_sums += np.bincount(
            flat, weights=block.weights.ravel().astype(np.float64), minlength=size
        ).reshape(self.counts.shape)

    def totals(self) -> np.ndarray:
        """int64 [layers, experts]: times chosen, all phases together."""
        return self.counts.sum(axis=0)

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

    @staticmethod
    def _summary(tokens: int, counts: np.ndarray, weight_sums: np.ndarray) -> dict:
        mean_weight = np.divide(
            weight_sums, counts, out=np.zeros_like(weight_sums), where=counts > 0
        )
        return {
            "tokens": int(tokens),
            "counts": counts.tolist(),
            "mean_weight": [round(float(w), 6) for w in mean_weight],
            **layer_metrics(counts),
        }


def figure(load: PhaseLoad, layer: int, title: str):
    """Usage per expert at ``layer``, prefill next to decode (shares), and a layer heatmap."""
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
    for p, (phase, color, shift) in enumerate(
        (("prefill", "#3b6ea8", -0.2), ("decode", "#e07b39", 0.2))
    ):
        tokens = int(load.tokens[p, row])
        bars.bar(
            experts + shift,
            shares(load.counts[p, row]) * 100,
            width=0.4,
            color=color,
            label=f"{phase} ({tokens:,} tokens)",
        )
    bars.axhline(100 / load.num_experts, color="#555", linestyle="--", linewidth=1, label="uniform")
    bars.set_xlim(-0.7, load.num_experts - 0.3)
    bars.set_xlabel("expert id")
    bars.set_ylabel("% of the phase's choices")
    bars.set_title(f"{title}: layer {layer}")
    bars.legend(loc="upper right", fontsize=8)
    if several:
        heat = axes[1][0]
        relative = shares(load.totals()) * load.num_experts
        image = heat.imshow(relative, aspect="auto", cmap="magma", interpolation="nearest")
        heat.set_xlabel("expert id")
        heat.set_ylabel("layer")
        ticks = np.linspace(0, len(load.rows) - 1, min(len(load.rows), 12)).round().astype(int)
        heat.set_yticks(ticks, [str(load.rows.layers[t]) for t in ticks])
        heat.set_title("usage relative to the uniform share (1 = even), all tokens")
        fig.colorbar(image, ax=heat, fraction=0.03, pad=0.01)
    fig.tight_layout()
    return fig
