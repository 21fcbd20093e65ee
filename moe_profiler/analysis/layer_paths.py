"""Layer paths: do a token's experts at layer l predict its experts at the next layer?

For each pair of adjacent logged layers (l, l2) (adjacent in the list of logged
layers), from expert ids alone: ``together[i, j]`` counts tokens with i in their top-k
at l and j in their top-k at l2; its strongest pairs are ranked by lift, count x N /
(n_i x n_j) (N tokens, n_i of them with i at l, n_j with j at l2; 1 = as often as
independent layers at these loads), with P(j at l2 | i at l) = count / n_i.

With router weights, also the top-1 (largest weight) paths: ``joint[i, j]`` counts
tokens whose top-1 is i at l and j at l2. From it: the conditional distribution P(j at
l2 | i at l), its strongest transitions, and the mutual information between the two
top-1 choices in bits (0 = the choice at l says nothing about l2; at most
log2(experts)). The plug-in mutual information of a finite sample is biased upwards;
``mi_bias_bits`` is the Miller-Madow estimate of that bias, ~(cells - rows - columns +
1) / (2 N ln 2), i.e. what independent layers would show on average with this many
tokens. vLLM's own ``routed_experts`` carry no weights: there only the first part.

A token is one (step, token) group of a file. Layers logged by different files
(pipeline stages) never meet in one group: such a pair reports 0 tokens.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from moe_profiler.analysis.coactivation import lift_heatmap
from moe_profiler.analysis.common import LayerRows
from moe_profiler.analysis.description import Analysis, Finished, Need
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.reading.columns import RouteBlock


class LayerTransitions:
    """Per pair of adjacent logged layers: top-k pair counts and, with weights (``top1``),
    top-1 joint counts. Feed with ``add``."""

    def __init__(self, layers: list[int], num_experts: int, top1: bool = True) -> None:
        self.rows = LayerRows(layers)
        self.num_experts, self.top1 = num_experts, top1
        shape = (max(len(self.rows) - 1, 0), num_experts, num_experts)
        self.together = np.zeros(shape, dtype=np.int64)
        self.tokens = np.zeros(shape[0], dtype=np.int64)
        self.members = np.zeros((shape[0], 2, num_experts), dtype=np.int64)  # n_i, n_j
        self.joint = np.zeros(shape if top1 else (0, 0, 0), dtype=np.int64)

    def add(self, block: RouteBlock) -> None:
        """Pair up the experts of each token's adjacent layers in ``block``."""
        if not len(self.together) or not len(block):
            return
        new_token = np.r_[
            True, (block.step[1:] != block.step[:-1]) | (block.token[1:] != block.token[:-1])
        ]
        group = np.cumsum(new_token) - 1
        rows = self.rows.rows(block.layer)
        k = block.experts.shape[1]
        chosen = np.full((group[-1] + 1, len(self.rows), k), -1, dtype=np.int64)
        chosen[group, rows] = block.experts
        source, target = chosen[:, :-1], chosen[:, 1:]
        both = (source[:, :, 0] >= 0) & (target[:, :, 0] >= 0)
        pair = np.broadcast_to(np.arange(len(self.together)), both.shape)[both]
        self.together += self._count(
            pair[:, None, None], source[both][:, :, None], target[both][:, None, :]
        )
        self.tokens += np.bincount(pair, minlength=len(self.tokens))
        for side, experts in enumerate((source[both], target[both])):
            cells = (pair[:, None] * self.num_experts + experts).ravel()
            self.members[:, side] += np.bincount(
                cells, minlength=self.members[:, side].size
            ).reshape(self.members[:, side].shape)
        if self.top1:
            top1 = np.full(chosen.shape[:2], -1, dtype=np.int64)
            top1[group, rows] = block.top1()
            self.joint += self._count(pair, top1[:, :-1][both], top1[:, 1:][both])

    def _count(self, pair, source, target) -> np.ndarray:
        size = self.num_experts
        cells = (pair * size + source) * size + target
        shape = self.together.shape
        return np.bincount(cells.ravel(), minlength=int(np.prod(shape))).reshape(shape)

    def result(self, top: int = 10, min_count: int = 5) -> dict:
        """Per adjacent pair ``"l->l2"``: tokens, top-k pairs and, with weights, the top-1
        transitions and mutual information."""
        out = {}
        for i, (layer, following) in enumerate(pairwise(self.rows.layers)):
            out[f"{layer}->{following}"] = {
                "tokens": int(self.tokens[i]),
                "experts_together": self._strongest_pairs(i, top, min_count),
                **(self._top1(self.joint[i], top, min_count) if self.top1 else {}),
            }
        return out

    def lift(self, i: int) -> np.ndarray:
        """float64 [experts, experts] of pair ``i``: count x N / (n_from x n_to) (NaN: unused)."""
        expected = np.outer(*self.members[i].astype(np.float64)) / max(int(self.tokens[i]), 1)
        shape = expected.shape
        return np.divide(self.together[i], expected, out=np.full(shape, np.nan), where=expected > 0)

    def _strongest_pairs(self, i: int, top: int, min_count: int) -> list[dict]:
        together, lift, n_from = self.together[i], self.lift(i), self.members[i, 0]
        a, b = np.nonzero(together >= min_count)
        order = np.lexsort((b, a, -together[a, b], -lift[a, b]))[:top]
        return [
            {
                "from": int(a[k]),
                "to": int(b[k]),
                "count": int(together[a[k], b[k]]),
                "lift": round(float(lift[a[k], b[k]]), 4),
                "p": round(float(together[a[k], b[k]] / n_from[a[k]]), 6),
            }
            for k in order
        ]

    @staticmethod
    def _top1(joint: np.ndarray, top: int, min_count: int) -> dict:
        from_counts = joint.sum(axis=1)
        conditional = conditional_distribution(joint)
        a, b = np.nonzero(joint >= min_count)
        order = np.lexsort((b, a, -joint[a, b], -conditional[a, b]))[:top]
        return {
            "top": [
                {
                    "from": int(a[k]),
                    "to": int(b[k]),
                    "p": round(float(conditional[a[k], b[k]]), 6),
                    "count": int(joint[a[k], b[k]]),
                    "from_count": int(from_counts[a[k]]),
                }
                for k in order
            ],
            "mutual_information_bits": round(mutual_information_bits(joint), 6),
            "mi_bias_bits": round(miller_madow_bias_bits(joint), 6),
            "entropy_to_bits": round(entropy_bits(joint.sum(axis=0)), 6),
        }


def conditional_distribution(joint: np.ndarray) -> np.ndarray:
    """Rows of ``joint`` divided by their sums: P(to | from) (0 for rows never seen)."""
    joint = np.asarray(joint, dtype=np.float64)
    total = joint.sum(axis=1, keepdims=True)
    return np.divide(joint, total, out=np.zeros_like(joint), where=total > 0)


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of the distribution proportional to ``counts``."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    p = counts[counts > 0] / counts.sum() if counts.sum() else np.zeros(0)
    return float(-(p * np.log2(p)).sum())


def mutual_information_bits(joint: np.ndarray) -> float:
    """I(from; to) in bits of the joint counts: H(from) + H(to) - H(from, to)."""
    return max(
        entropy_bits(joint.sum(axis=1)) + entropy_bits(joint.sum(axis=0)) - entropy_bits(joint),
        0.0,
    )


def miller_madow_bias_bits(joint: np.ndarray) -> float:
    """Expected upward bias of the plug-in mutual information of ``joint``'s sample."""
    n = joint.sum()
    if n == 0:
        return 0.0
    used = lambda a: int((a > 0).sum())  # noqa: E731
    cells = used(joint) - used(joint.sum(axis=1)) - used(joint.sum(axis=0)) + 1
    return max(cells, 0) / (2 * n * np.log(2))


def figure(transitions: LayerTransitions, pair: str, title: str):
    """With weights: P(top-1 at l2 | top-1 at l) for one pair and mutual information for
    every pair; without: the lift of top-k pairs across the pair's layers."""
    import matplotlib.pyplot as plt

    names = [f"{a}->{b}" for a, b in pairwise(transitions.rows.layers)]
    first, second = pair.split("->")
    if not transitions.top1:
        fig, heat = plt.subplots(figsize=(7, 6))
        lift = transitions.lift(names.index(pair))
        lift_heatmap(fig, heat, lift, f"expert at layer {second}", f"expert at layer {first}")
        heat.set_title(f"{title}: top-k at {first} and at {second}")
        fig.tight_layout()
        return fig
    joint = transitions.joint[names.index(pair)]
    fig, (heat, bars) = plt.subplots(
        1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.1, 1]}
    )
    image = heat.imshow(conditional_distribution(joint), cmap="viridis", vmin=0, vmax=1)
    heat.set_xlabel(f"top-1 expert at layer {second}")
    heat.set_ylabel(f"top-1 expert at layer {first}")
    heat.set_title(f"P(top-1 at {second} | top-1 at {first})")
    fig.colorbar(image, ax=heat, fraction=0.046, pad=0.04)
    mi = [mutual_information_bits(j) for j in transitions.joint]
    bias = [miller_madow_bias_bits(j) for j in transitions.joint]
    positions = np.arange(len(names))
    bars.bar(positions, mi, color="#3b6ea8", label="mutual information")
    bars.plot(positions, bias, "_", color="#c0392b", markersize=12, label="expected if independent")
    step = max(1, len(names) // 12)
    bars.set_xticks(positions[::step], names[::step], rotation=45, ha="right", fontsize=8)
    bars.set_ylabel("bits")
    bars.set_title("top-1 at l vs top-1 at the next logged layer")
    bars.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def section(done: Finished, figure_uri: str | None) -> str:
    """The figure and, per adjacent pair, the strongest top-k pair and, with weights, mutual
    information and the strongest top-1 transition."""
    top1 = done.accumulator.top1
    rows = []
    for pair, v in done.results["transitions"].items():
        strongest = v["experts_together"][0] if v["experts_together"] else None
        row = [pair, f"{v['tokens']:,}"]
        row.append(
            f"{strongest['from']} → {strongest['to']} (lift {strongest['lift']:.2f})"
            if strongest
            else "-"
        )
        if top1:
            best = v["top"][0] if v["top"] else None
            row += [
                number(v["mutual_information_bits"]),
                number(v["mi_bias_bits"]),
                number(v["entropy_to_bits"]),
                f"{best['from']} → {best['to']} (p {best['p']:.2f})" if best else "-",
            ]
        rows.append(row)
    if not rows:
        return note("Only one layer was logged: no layer pairs.")
    head = ["layers", "tokens", "strongest top-k pair"]
    if top1:
        head += [
            "top-1 mutual information (bits)",
            "expected if unrelated",
            "entropy of the next top-1",
            "strongest top-1 transition",
        ]
    caption = (
        "Left: for a token whose top-1 expert at layer l is the row, the chance that its "
        "top-1 at the next logged layer is the column; right: mutual information between "
        "the two choices for every pair of adjacent logged layers (red mark: what "
        "unrelated layers would show with this many tokens)."
        if top1
        else "For every expert at layer l (row) and expert at the next logged layer "
        "(column), how much more often a token has both in its top-k than unrelated layers "
        "at the same loads would give (red: more often, blue: less often, log2 scale)."
    )
    return (
        figure_html(figure_uri, "transitions", caption)
        + table(head, rows)
        + note(
            "Top-k pair lift = tokens with both × tokens / (tokens with the first × tokens "
            "with the second). Mutual information 0 = no prediction; equal to the entropy of "
            "the next top-1 = fully determined."
        )
    )


def _figure(done: Finished):
    """The chosen layer's pair (the last pair if the layer starts none)."""
    names = list(done.results["transitions"])
    if not names:
        return None
    pair = next((n for n in names if n.startswith(f"{done.run.layer}->")), names[-1])
    return figure(done.accumulator, pair, done.run.title)


ANALYSIS = Analysis(
    key="paths",
    title="Layer paths",
    question="Does the expert a token uses at one layer predict the expert it uses at the next "
    "layer?",
    keys=("transitions",),
    needs=frozenset({Need.TOKEN_ROUTES}),
    start=lambda run: LayerTransitions(
        run.layers, run.num_experts, top1=Need.WEIGHTS in run.provides
    ),
    results=lambda paths, run: {
        "transitions": paths.result(run.options.top, run.options.min_count)
    },
    figure=_figure,
    section=section,
    optional={Need.WEIGHTS: "the top-1 transitions and their mutual information"},
)
