"""Layer paths: does a token's top-1 expert at layer l predict its top-1 at the next layer?

For each pair of adjacent logged layers (l, l2) (adjacent in the list of logged
layers), ``joint[i, j]`` counts tokens whose top-1 expert (largest weight) is i at l
and j at l2. From it: the conditional distribution P(j at l2 | i at l), its strongest
transitions, and the mutual information between the two top-1 choices in bits (0 =
the choice at l says nothing about l2; at most log2(experts)). The plug-in mutual
information of a finite sample is biased upwards; ``mi_bias_bits`` is the
Miller-Madow estimate of that bias, ~(cells - rows - columns + 1) / (2 N ln 2), i.e.
what independent layers would show on average with this many tokens.

A token is one (step, token) group of a file. Layers logged by different files
(pipeline stages) never meet in one group: such a pair reports 0 tokens.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from moe_profiler.analysis.common import LayerRows
from moe_profiler.analysis.description import Analysis, Finished, Need
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.reading.columns import RouteBlock


class LayerTransitions:
    """Top-1 joint counts of every pair of adjacent logged layers. Feed with ``add``."""

    def __init__(self, layers: list[int], num_experts: int) -> None:
        self.rows = LayerRows(layers)
        self.num_experts = num_experts
        self.joint = np.zeros(
            (max(len(self.rows) - 1, 0), num_experts, num_experts), dtype=np.int64
        )

    def add(self, block: RouteBlock) -> None:
        """Pair up the top-1 experts of each token's adjacent layers in ``block``."""
        if not len(self.joint) or not len(block):
            return
        new_token = np.r_[
            True, (block.step[1:] != block.step[:-1]) | (block.token[1:] != block.token[:-1])
        ]
        group = np.cumsum(new_token) - 1
        top1 = np.full((group[-1] + 1, len(self.rows)), -1, dtype=np.int64)
        top1[group, self.rows.rows(block.layer)] = block.top1()
        size = self.num_experts
        source, target = top1[:, :-1], top1[:, 1:]
        both = (source >= 0) & (target >= 0)
        pair = np.broadcast_to(np.arange(len(self.joint)), source.shape)
        cells = (pair[both] * size + source[both]) * size + target[both]
        self.joint += np.bincount(cells, minlength=self.joint.size).reshape(self.joint.shape)

    def result(self, top: int = 10, min_count: int = 5) -> dict:
        """Per adjacent pair ``"l->l2"``: tokens, top transitions, mutual information."""
        out = {}
        for i, (layer, following) in enumerate(pairwise(self.rows.layers)):
            joint = self.joint[i]
            from_counts = joint.sum(axis=1)
            conditional = conditional_distribution(joint)
            a, b = np.nonzero(joint >= min_count)
            order = np.lexsort((b, a, -joint[a, b], -conditional[a, b]))[:top]
            out[f"{layer}->{following}"] = {
                "tokens": int(joint.sum()),
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
        return out


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
    """P(top-1 at l2 | top-1 at l) for one pair, and mutual information for every pair."""
    import matplotlib.pyplot as plt

    names = [f"{a}->{b}" for a, b in pairwise(transitions.rows.layers)]
    joint = transitions.joint[names.index(pair)]
    fig, (heat, bars) = plt.subplots(
        1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.1, 1]}
    )
    image = heat.imshow(conditional_distribution(joint), cmap="viridis", vmin=0, vmax=1)
    first, second = pair.split("->")
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
    """The figure and, per adjacent pair, mutual information and the strongest transition."""
    rows = []
    for pair, v in done.results["transitions"].items():
        best = v["top"][0] if v["top"] else None
        rows.append(
            [
                pair,
                f"{v['tokens']:,}",
                number(v["mutual_information_bits"]),
                number(v["mi_bias_bits"]),
                number(v["entropy_to_bits"]),
                f"{best['from']} → {best['to']} (p {best['p']:.2f})" if best else "-",
            ]
        )
    if not rows:
        return note("Only one layer was logged: no layer pairs.")
    return (
        figure_html(
            figure_uri,
            "transitions",
            "Left: for a token whose top-1 expert at layer l is the row, the chance that its "
            "top-1 at the next logged layer is the column; right: mutual information between "
            "the two choices for every pair of adjacent logged layers (red mark: what "
            "unrelated layers would show with this many tokens).",
        )
        + table(
            [
                "layers",
                "tokens",
                "mutual information (bits)",
                "expected if unrelated",
                "entropy of the next top-1",
                "strongest transition",
            ],
            rows,
        )
        + note(
            "Mutual information 0 = no prediction; equal to the entropy of the next top-1 = "
            "fully determined."
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
    needs=frozenset({Need.TOKEN_ROUTES, Need.WEIGHTS}),
    start=lambda run: LayerTransitions(run.layers, run.num_experts),
    results=lambda paths, run: {
        "transitions": paths.result(run.options.top, run.options.min_count)
    },
    figure=_figure,
    section=section,
)
