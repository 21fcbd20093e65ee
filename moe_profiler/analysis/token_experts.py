"""Token specialisation: which input tokens is each expert over-represented on?

Per layer and expert, ``count[e, t]`` is the number of lines with input token id t
whose top-k holds e. With ``N`` lines at the layer, ``n_e`` of them choosing e and
``n_t`` of them reading token t, ``lift = count * N / (n_e * n_t)``: how much more
often e sees t than its share of all tokens would predict (1 = no preference). Tokens
seen fewer than ``min_count`` times by the expert are left out (small counts make
huge, meaningless lifts).

Counts are kept sparse (only pairs that occur), so memory grows with the distinct
(layer, expert, token) triples of the run, at most layers x experts x vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from moe_profiler.analysis.common import LayerRows
from moe_profiler.analysis.description import Analysis, Finished, Need
from moe_profiler.analysis.html_parts import note, table
from moe_profiler.reading.columns import RouteBlock

_MERGE_EVERY = 1 << 21  # buffered (layer, expert, token) keys before they are merged


class TokenSpecialisation:
    """Sparse (layer, expert, token id) counts. Feed with ``add``; ``result`` ranks by lift."""

    def __init__(self, layers: list[int], num_experts: int, top_k: int) -> None:
        self.rows = LayerRows(layers)
        self.num_experts, self.top_k = num_experts, top_k
        # per layer row: sorted unique keys expert << 32 | token id, and their counts
        self.keys = [np.zeros(0, dtype=np.int64) for _ in self.rows.layers]
        self.counts = [np.zeros(0, dtype=np.int64) for _ in self.rows.layers]
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, block: RouteBlock) -> None:
        """Count the (expert, token id) pairs of ``block``'s lines that carry a token id."""
        known = block.tok >= 0
        if not known.any():
            return
        rows = self.rows.rows(block.layer[known])
        cell = rows[:, None] * self.num_experts + block.experts[known]
        keys = (cell.astype(np.int64) << 32) | block.tok[known][:, None]
        self._pending.append(keys.ravel())
        self._pending_size += keys.size
        if self._pending_size >= _MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        """Fold the buffered keys into each layer's sorted counts, one layer at a time."""
        if not self._pending:
            return
        keys, counts = np.unique(np.concatenate(self._pending), return_counts=True)
        self._pending, self._pending_size = [], 0
        first_of_row = (np.arange(len(self.rows) + 1) * self.num_experts).astype(np.int64) << 32
        bounds = np.searchsorted(keys, first_of_row)
        for row in range(len(self.rows)):
            new = slice(bounds[row], bounds[row + 1])
            if new.start == new.stop:
                continue
            merged = np.concatenate([self.keys[row], keys[new] - first_of_row[row]])
            self.keys[row], inverse = np.unique(merged, return_inverse=True)
            weights = np.concatenate([self.counts[row], counts[new]])
            self.counts[row] = np.bincount(inverse, weights=weights).astype(np.int64)

    def cells(self) -> int:
        """Distinct (layer, expert, token id) triples counted so far (merged)."""
        return sum(len(k) for k in self.keys)

    def result(
        self,
        top: int = 10,
        min_count: int = 5,
        decode: Callable[[int], str] | None = None,
        layers: list[int] | None = None,
    ) -> dict:
        """``{layer: {expert: [{"token", "count", "lift"(, "text")}]}}``, experts with any."""
        self._merge()
        out: dict = {}
        for r, layer in enumerate(self.rows.layers):
            if layers is not None and layer not in layers:
                continue
            e, t, c = self.keys[r] >> 32, self.keys[r] & 0xFFFFFFFF, self.counts[r]
            lines = c.sum() / self.top_k  # every line adds top_k (expert, token) pairs
            per_expert = np.bincount(e, weights=c, minlength=self.num_experts)
            _, inverse = np.unique(t, return_inverse=True)
            per_token = np.bincount(inverse, weights=c) / self.top_k
            lift = c * lines / (per_expert[e] * per_token[inverse])
            keep = np.flatnonzero(c >= min_count)
            keep = keep[np.lexsort((t[keep], -c[keep], -lift[keep], e[keep]))]
            bounds = np.searchsorted(e[keep], np.arange(self.num_experts + 1))
            out[str(layer)] = {
                str(x): [
                    {
                        "token": int(t[i]),
                        "count": int(c[i]),
                        "lift": round(float(lift[i]), 4),
                        **({"text": decode(int(t[i]))} if decode else {}),
                    }
                    for i in keep[bounds[x] : min(bounds[x + 1], bounds[x] + top)]
                ]
                for x in range(self.num_experts)
                if bounds[x + 1] > bounds[x]
            }
        return out


def section(done: Finished, figure_uri: str | None) -> str:
    """At the chosen layer, the experts with the strongest preferences and their tokens."""
    layer = done.run.layer
    experts = done.results["token_experts"].get(str(layer), {})
    ranked = sorted(experts.items(), key=lambda kv: -kv[1][0]["lift"])[:16]
    rows = [
        [
            expert,
            ", ".join(f"{_token_text(t)} ×{t['lift']:.1f} ({t['count']})" for t in tokens[:5]),
        ]
        for expert, tokens in ranked
    ]
    return (
        table(["expert", "most over-represented tokens: text ×lift (times seen)"], rows, left=2)
        if rows
        else note(
            "No token reached the minimum count (or the logs carry no token ids: schema 3 logs do)."
        )
    ) + note(
        f"Layer {layer}, the experts with the strongest preferences. lift = how much more "
        "often the expert sees the token than its share of all tokens predicts. Every layer "
        "and expert: <code>analysis.json</code> → <code>token_experts</code>."
    )


def _token_text(entry: dict) -> str:
    return repr(entry["text"]) if "text" in entry else f"[{entry['token']}]"


ANALYSIS = Analysis(
    key="tokens",
    title="Token specialisation",
    question="Which tokens does each expert specialise in?",
    keys=("token_experts",),
    needs=frozenset({Need.TOKEN_ROUTES, Need.TOKEN_IDS}),
    start=lambda run: TokenSpecialisation(run.layers, run.num_experts, run.top_k),
    results=lambda specialists, run: {
        "token_experts": specialists.result(run.options.top, run.options.min_count, run.decode)
    },
    section=section,
)
