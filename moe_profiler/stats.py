"""Expert usage counts and load-balance metrics from a stream of routes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from moe_profiler.routes import Route

_FLUSH_EVERY = 1 << 20  # expert ids buffered before a bincount


class UsageCounter:
    """Counts how often each expert of each logged layer is chosen, and its weight sum.

    Feed routes with ``add_all``; memory is constant (ids are binned in batches).
    """

    def __init__(self, layers: list[int], num_experts: int) -> None:
        self.layers = sorted(layers)
        self.num_experts = num_experts
        self._row = {layer: i for i, layer in enumerate(self.layers)}
        self.counts = np.zeros((len(self.layers), num_experts), dtype=np.int64)
        self.weight_sums = np.zeros((len(self.layers), num_experts), dtype=np.float64)
        self._ids: list[int] = []
        self._weights: list[float] = []

    def add_all(self, routes: Iterable[Route]) -> None:
        """Count every route of ``routes``."""
        ids, weights, row_of, size = self._ids, self._weights, self._row, self.num_experts
        for route in routes:
            base = row_of[route.layer] * size
            ids.extend(base + e for e in route.experts)
            weights.extend(route.weights)
            if len(ids) >= _FLUSH_EVERY:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        if not self._ids:
            return
        flat = np.asarray(self._ids, dtype=np.int64)
        cells = self.counts.size
        self.counts += np.bincount(flat, minlength=cells).reshape(self.counts.shape)
        self.weight_sums += np.bincount(
            flat, weights=np.asarray(self._weights, dtype=np.float64), minlength=cells
        ).reshape(self.counts.shape)
        self._ids.clear()
        self._weights.clear()

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
