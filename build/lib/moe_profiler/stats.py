"""Expert usage counts and load-balance metrics from route blocks or counts windows."""

from __future__ import annotations

import numpy as np

from moe_profiler.columns import CountsWindow, RouteBlock


class UsageCounter:
    """Counts how often each expert of each logged layer is chosen, and its weight sum.

    Feed it route blocks (``add_block``) or the windows of a counts log
    (``add_counts``); memory is constant.
    """

    def __init__(self, layers: list[int], num_experts: int) -> None:
        self.layers = sorted(layers)
        self.num_experts = num_experts
        self._row = np.full(max(self.layers, default=0) + 1, -1, dtype=np.int64)
        self._row[self.layers] = np.arange(len(self.layers))
        self.counts = np.zeros((len(self.layers), num_experts), dtype=np.int64)
        self.weight_sums = np.zeros((len(self.layers), num_experts), dtype=np.float64)

    def add_block(self, block: RouteBlock) -> None:
        """Count every line of ``block`` (its layers must be among ``layers``)."""
        if not len(block):
            return
        cells = (self._row[block.layer] * self.num_experts)[:, None] + block.experts
        self.counts += np.bincount(cells.ravel(), minlength=self.counts.size).reshape(
            self.counts.shape
        )
        self.weight_sums += np.bincount(
            cells.ravel(), weights=block.weights.ravel(), minlength=self.counts.size
        ).reshape(self.counts.shape)

    def add_counts(self, window: CountsWindow) -> None:
        """Add the counts of one window of a counts log."""
        rows = self._row[window.layers]
        self.counts[rows] += window.counts
        self.weight_sums[rows] += window.weight_sums

    def summary(self, top_k: int) -> dict:
        """Per layer: tokens, counts and mean weight per expert, and load metrics."""
        layers = {}
        for i, layer in enumerate(self.layers):
            counts = self.counts[i]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_weight = np.where(counts > 0, self.weight_sums[i] / counts, 0.0)
            layers[str(layer)] = {
                "tokens": int(counts.sum() // top_k),  # each token picks top_k experts
                "counts": counts.tolist(),
                "mean_weight": [round(float(w), 6) for w in mean_weight],
                **layer_metrics(counts),
            }
        return layers


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
