"""Temporal locality: do consecutive generated tokens of one request reuse experts?

Per layer, over every pair of decode tokens of one request at positions p and p+1
(what expert offloading and caching bank on):

- ``same_top1``: share of pairs whose top-1 expert repeats; independent tokens at the
  measured decode loads would repeat with probability ``sum_e t_e**2``
  (``same_top1_independent``, t_e = share of decode tokens whose top-1 is e).
- ``overlap``: mean number of experts the two top-k sets share; independent
  tokens would share ``sum_e q_e**2`` on average (``overlap_independent``, exact;
  q_e = share of decode tokens that have e in their top-k).
- ``jaccard``: mean |A & B| / |A | B| of the two top-k sets; ``jaccard_independent``
  is ``o / (2k - o)`` with o = ``overlap_independent`` (the ratio of expectations, an
  approximation of the expected ratio).

The top-1 needs router weights: without them (vLLM's own ``routed_experts``) only
the overlap and Jaccard are measured.

State: the last decode token of each (file, request, layer), dropped once its request
has not been seen for ``stale_passes`` passes of its file (finished requests).
"""

from __future__ import annotations

import numpy as np

from moe_profiler.analysis.common import LayerRows, shares
from moe_profiler.analysis.description import Analysis, Finished, Need
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.reading.columns import DECODE, RouteBlock

_FIELDS = ("source", "request", "row", "pos", "step", "top1")


class TemporalLocality:
    """Repeat rate and overlap of consecutive decode tokens, per layer. Feed with ``add``."""

    def __init__(
        self,
        layers: list[int],
        num_experts: int,
        top_k: int,
        stale_passes: int = 64,
        top1: bool = True,
    ) -> None:
        self.rows = LayerRows(layers)
        self.num_experts, self.top_k, self.stale_passes = num_experts, top_k, stale_passes
        self.top1 = top1
        n = len(self.rows)
        self.pairs = np.zeros(n, dtype=np.int64)
        self.same_top1 = np.zeros(n, dtype=np.int64)
        self.overlap_sum = np.zeros(n, dtype=np.int64)
        self.jaccard_sum = np.zeros(n, dtype=np.float64)
        self.decode_tokens = np.zeros(n, dtype=np.int64)
        self.top1_counts = np.zeros((n, num_experts), dtype=np.int64)
        self.member_counts = np.zeros((n, num_experts), dtype=np.int64)
        self._last = {name: np.zeros(0, dtype=np.int64) for name in _FIELDS}
        self._last_experts = np.zeros((0, top_k), dtype=np.int64)
        self._latest_step: dict[int, int] = {}

    def add(self, block: RouteBlock) -> None:
        """Pair each decode line of ``block`` with its request's previous token at that layer."""
        decode = block.phase == DECODE
        if not decode.any():
            return
        rows = self.rows.rows(block.layer[decode])
        experts = np.sort(block.experts[decode], axis=1).astype(np.int64)
        top1 = block.top1()[decode].astype(np.int64)
        size, n = self.num_experts, len(self.rows)
        self.decode_tokens += np.bincount(rows, minlength=n)
        self.top1_counts += np.bincount(rows * size + top1, minlength=n * size).reshape(n, size)
        self.member_counts += np.bincount(
            (rows[:, None] * size + experts).ravel(), minlength=n * size
        ).reshape(n, size)

        current = {
            "source": np.full(len(rows), block.source, dtype=np.int64),
            "request": block.request[decode].astype(np.int64),
            "row": rows,
            "pos": block.pos[decode],
            "step": block.step[decode],
            "top1": top1,
        }
        lines = {name: np.r_[self._last[name], current[name]] for name in _FIELDS}
        all_experts = np.concatenate([self._last_experts, experts])
        order = np.lexsort((lines["pos"], lines["row"], lines["request"], lines["source"]))
        lines = {name: values[order] for name, values in lines.items()}
        all_experts = all_experts[order]

        same_key = (
            (lines["source"][1:] == lines["source"][:-1])
            & (lines["request"][1:] == lines["request"][:-1])
            & (lines["row"][1:] == lines["row"][:-1])
        )
        pair = same_key & (lines["pos"][1:] == lines["pos"][:-1] + 1)
        later, earlier = np.flatnonzero(pair) + 1, np.flatnonzero(pair)
        shared = (all_experts[later][:, :, None] == all_experts[earlier][:, None, :]).sum(
            axis=(1, 2)
        )
        pair_rows = lines["row"][later]
        self.pairs += np.bincount(pair_rows, minlength=n)
        self.same_top1 += np.bincount(
            pair_rows, weights=lines["top1"][later] == lines["top1"][earlier], minlength=n
        ).astype(np.int64)
        self.overlap_sum += np.bincount(pair_rows, weights=shared, minlength=n).astype(np.int64)
        self.jaccard_sum += np.bincount(
            pair_rows, weights=shared / (2 * self.top_k - shared), minlength=n
        )

        last = np.r_[~same_key, True]  # the latest position of each (source, request, layer)
        latest = int(block.step.max())
        self._latest_step[block.source] = max(self._latest_step.get(block.source, latest), latest)
        fresh_after = np.array(
            [self._latest_step[s] for s in lines["source"][last]], dtype=np.int64
        )
        keep = np.flatnonzero(last)[lines["step"][last] >= fresh_after - self.stale_passes]
        self._last = {name: values[keep] for name, values in lines.items()}
        self._last_experts = all_experts[keep]

    def result(self) -> dict:
        """Per layer: pairs, same_top1 (+ independent), overlap, jaccard (+ independent)."""
        out = {}
        top1_share = shares(self.top1_counts)
        member_share = np.divide(
            self.member_counts,
            self.decode_tokens[:, None],
            out=np.zeros(self.member_counts.shape),
            where=self.decode_tokens[:, None] > 0,
        )
        for row, layer in enumerate(self.rows.layers):
            pairs = int(self.pairs[row])
            overlap_independent = float((member_share[row] ** 2).sum())
            same_top1 = {
                "same_top1": _mean(self.same_top1[row], pairs),
                "same_top1_independent": round(float((top1_share[row] ** 2).sum()), 6),
            }
            out[str(layer)] = {
                "pairs": pairs,
                "decode_tokens": int(self.decode_tokens[row]),
                **(same_top1 if self.top1 else {}),
                "jaccard": _mean(self.jaccard_sum[row], pairs),
                "jaccard_independent": round(
                    overlap_independent / (2 * self.top_k - overlap_independent), 6
                ),
                "overlap": _mean(self.overlap_sum[row], pairs),
                "overlap_independent": round(overlap_independent, 6),
            }
        return out


def _mean(total: float, pairs: int) -> float | None:
    return round(float(total) / pairs, 6) if pairs else None


def figure(result: dict, top_k: int, title: str):
    """Per layer: repeat rate of the top-1 (with weights) and Jaccard overlap, measured vs
    independent."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers = [int(layer) for layer in result if result[layer]["pairs"]]
    panels = [(f"mean Jaccard overlap of consecutive top-{top_k} sets", "jaccard")]
    if "same_top1" in result[str(layers[0])]:
        panels.insert(0, ("share of consecutive decode tokens with the same top-1", "same_top1"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (label, key) in zip(axes[0], panels, strict=True):
        axis.plot(
            layers, [result[str(x)][key] for x in layers], "o-", color="#3b6ea8", label="measured"
        )
        axis.plot(
            layers,
            [result[str(x)][f"{key}_independent"] for x in layers],
            "s--",
            color="#c0392b",
            label="independent tokens at the same loads",
        )
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(0, 1.02)
        axis.set_title(label, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def section(done: Finished, figure_uri: str | None) -> str:
    """The figure and, per layer, the repeat rate and Jaccard overlap against independence."""
    keys = ["jaccard", "jaccard_independent"]
    head = ["layer", "token pairs", "Jaccard", "independent"]
    if done.accumulator.top1:
        keys = ["same_top1", "same_top1_independent", *keys]
        head = ["layer", "token pairs", "same top-1", "independent", *head[2:]]
    rows = [
        [layer, f"{v['pairs']:,}", *(number(v[key]) for key in keys)]
        for layer, v in done.results["locality"].items()
    ]
    return (
        figure_html(
            figure_uri,
            "locality",
            "Per layer, for consecutive decode tokens of one request: how often the top-1 "
            "expert repeats (where router weights are known) and how much the two top-k sets "
            "overlap (Jaccard); blue measured, red what independent tokens at the same loads "
            "would give.",
        )
        + table(head, rows)
        + note(
            "Jaccard = shared experts / experts in either set. Prompt tokens are not counted "
            "(they are processed together, not one after another)."
        )
    )


def _figure(done: Finished):
    result = done.results["locality"]
    if not any(v["pairs"] for v in result.values()):
        return None
    return figure(result, done.run.top_k, done.run.title)


ANALYSIS = Analysis(
    key="locality",
    title="Temporal locality",
    question="Do consecutive generated tokens of one request stick to the same experts (what "
    "expert caching and offloading rely on)?",
    keys=("locality",),
    needs=frozenset({Need.TOKEN_ROUTES, Need.REQUESTS, Need.PHASES}),
    start=lambda run: TemporalLocality(
        run.layers, run.num_experts, run.top_k, top1=Need.WEIGHTS in run.provides
    ),
    results=lambda repeats, run: {"locality": repeats.result()},
    figure=_figure,
    section=section,
    optional={Need.WEIGHTS: "how often the top-1 expert repeats"},
)
