"""Pictures of expert usage: a histogram for one layer, a layer x expert heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_usage(
    counts: np.ndarray,
    layers: list[int],
    hist_layer: int,
    title: str,
    out: Path,
) -> Path:
    """Write ``out``: usage histogram of ``hist_layer``, plus a heatmap if several layers.

    ``counts`` is ``[len(layers), num_experts]``; the dashed line marks the
    uniform share (every expert chosen equally often).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_experts = counts.shape[1]
    row = counts[layers.index(hist_layer)]
    several = len(layers) > 1
    fig, axes = plt.subplots(
        2 if several else 1,
        1,
        figsize=(max(8.0, num_experts * 0.18), 8.5 if several else 4.5),
        squeeze=False,
        gridspec_kw={"height_ratios": [1, 1.2]} if several else None,
    )
    hist = axes[0][0]
    hist.bar(np.arange(num_experts), row, width=0.85, color="#3b6ea8")
    uniform = row.sum() / num_experts
    hist.axhline(
        uniform,
        color="#c0392b",
        linestyle="--",
        linewidth=1.2,
        label=f"uniform share ({uniform:,.0f})",
    )
    hist.set_xlim(-0.7, num_experts - 0.3)
    hist.set_xlabel("expert id")
    hist.set_ylabel("times chosen (top-k)")
    hist.set_title(f"{title}\nlayer {hist_layer}")
    hist.legend(loc="upper right")
    if several:
        heat = axes[1][0]
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * num_experts
        image = heat.imshow(share, aspect="auto", cmap="magma", interpolation="nearest")
        heat.set_xlabel("expert id")
        heat.set_ylabel("layer")
        ticks = np.linspace(0, len(layers) - 1, min(len(layers), 12)).round().astype(int)
        heat.set_yticks(ticks)
        heat.set_yticklabels([str(layers[t]) for t in ticks])
        heat.set_title("usage relative to the uniform share (1 = even) per layer")
        fig.colorbar(image, ax=heat, fraction=0.03, pad=0.01)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
