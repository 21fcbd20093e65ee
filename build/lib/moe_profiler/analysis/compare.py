"""Compare two runs: does one prompt set route differently from another?

Per layer logged in both runs, each run's expert distribution is the share of all
top-k choices that went to each expert. ``jsd_bits`` is the Jensen-Shannon divergence
between the two distributions in bits (0 = identical, 1 = no expert in common);
``moved`` lists the experts whose share changed most (run B minus run A, in points
of share).
"""

from __future__ import annotations

import numpy as np

from moe_profiler.analysis.common import shares


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
