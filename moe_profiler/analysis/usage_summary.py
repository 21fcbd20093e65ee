"""Expert usage at a glance (plot_experts.py): a summary JSON, a histogram PNG, a table.

The counts are the load analysis' (``load.count_expert_usage``: route lines, or the
windows of counts logs added up), all phases together.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moe_profiler.analysis.common import model_label, run_identity
from moe_profiler.analysis.load import count_expert_usage, usage_heatmap
from moe_profiler.reading import routes


def summarize_expert_usage(
    specs: list[str],
    png: Path | None,
    summary_path: Path | None,
    strict: bool = False,
    hist_layer: int | None = None,
) -> dict:
    """Read the logs ``specs`` (files, folders, globs) once; write the summary and the PNG."""
    logs = routes.open_logs(routes.find_logs(specs))
    load = count_expert_usage(logs, strict=strict)
    per_layer = load.result()["load"]
    summary = {
        "mode": logs[0].mode,
        **run_identity(logs[0].header, [log.path for log in logs]),
        "ranks": sorted({_rank_label(log.ranks) for log in logs}),
        "route_lines": sum(log.routes for log in logs),
        "count_windows": sum(log.windows for log in logs),
        "skipped_lines": sum(len(log.problems) for log in logs),
        "complete": all(log.trailer is not None for log in logs),
        "engine_wait_s": sum((log.trailer or {}).get("engine_wait_s", 0.0) for log in logs),
        "layers": per_layer,
    }
    if summary_path is not None:
        Path(summary_path).write_text(json.dumps(summary, indent=1) + "\n")
    if png is not None:
        layers = load.rows.layers
        layer = layers[0] if hist_layer is None else hist_layer
        if layer not in layers:
            raise routes.RouteLogError(f"layer {layer} is not in the logs (logged: {layers})")
        tokens = per_layer[str(layer)]["tokens"]
        title = f"{model_label(logs[0].header)}: expert usage, {tokens:,} tokens"
        plot_usage_histogram(load.totals(), layers, layer, title, Path(png))
    return summary


def usage_table(summary: dict) -> str:
    """A few lines per layer for the terminal."""
    lines = [
        f"{len(summary['files'])} file(s), ranks {', '.join(summary['ranks'])}: "
        + (
            f"{summary['count_windows']:,} count windows"
            if summary.get("mode") == routes.COUNTS_MODE
            else f"{summary['route_lines']:,} route lines"
        )
        + (f", {summary['skipped_lines']} bad lines skipped" if summary["skipped_lines"] else "")
        + ("" if summary["complete"] else " (no end-of-log trailer: log incomplete?)"),
        f"{'layer':>5} {'tokens':>9} {'max/mean':>8} {'cv':>6} {'entropy':>7} {'jain':>6}"
        "  hottest / coldest",
    ]
    for layer, m in summary["layers"].items():
        if not m.get("assignments"):
            lines.append(f"{layer:>5} {0:>9}")
            continue
        hot = ",".join(str(h["expert"]) for h in m["hottest"])
        cold = ",".join(str(c["expert"]) for c in m["coldest"])
        lines.append(
            f"{layer:>5} {m['tokens']:>9,} {m['max_over_mean']:>8.2f} {m['cv']:>6.2f} "
            f"{m['entropy']:>7.3f} {m['jain']:>6.3f}  {hot} / {cold}"
        )
    return "\n".join(lines)


def plot_usage_histogram(
    counts: np.ndarray, layers: list[int], hist_layer: int, title: str, out: Path
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
        usage_heatmap(
            fig,
            axes[1][0],
            counts,
            layers,
            "usage relative to the uniform share (1 = even) per layer",
        )
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _rank_label(ranks: dict) -> str:
    return f"dp{ranks.get('dp', 0)}-pp{ranks.get('pp', 0)}-tp{ranks.get('tp', 0)}"
