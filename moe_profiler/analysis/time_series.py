"""Load over time: each layer's balance and hottest experts, one point per time window.

Counts logs cut their counts into windows (``VLLM_LOG_MOE_INTERVAL_S``); dumps give the
windows between successive dumps. Per window and layer: the balancedness, mean / max
of the experts' loads (1 = even, 1/experts = one expert takes all; the number
``vllm_moe_layer_balancedness`` on ``/metrics`` shows for the last window), and the
three hottest experts with their shares of the layer's choices; per window the tokens
and prompt tokens, i.e. the traffic. What an operator of a long-running server asks:
did the load shift when the traffic changed? Route logs record no times.

Memory: a few numbers per window and layer, and the chosen layer's expert shares per
window (the figure's heatmap).
"""

from __future__ import annotations

import time

import numpy as np

from moe_profiler.analysis.common import LayerRows, shares
from moe_profiler.analysis.description import Analysis, Finished, Need
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.reading.columns import CountsWindow

HOTTEST = 3
_WINDOW_FIELDS = ("source", "t_start", "t_end", "tokens", "prefill_tokens")


class LoadOverTime:
    """Per window: traffic, each layer's balancedness and hottest experts. Feed windows."""

    def __init__(self, layers: list[int], num_experts: int, layer: int) -> None:
        self.rows = LayerRows(layers)
        self.num_experts = num_experts
        self.chosen = self.rows.layers.index(layer)
        self.windows: dict[str, list] = {name: [] for name in _WINDOW_FIELDS}
        self.balance: list[np.ndarray] = []  # [layers] per window, NaN: layer not counted
        self.hottest: list[np.ndarray] = []  # [layers, HOTTEST] expert ids
        self.hottest_share: list[np.ndarray] = []  # [layers, HOTTEST]
        self.chosen_shares: list[np.ndarray] = []  # [experts] of the chosen layer (NaN: none)

    def add_window(self, window: CountsWindow) -> None:
        """One window of a counts log or dump."""
        for name in _WINDOW_FIELDS:
            self.windows[name].append(getattr(window, name))
        n = len(self.rows)
        balance = np.full(n, np.nan)
        hottest = np.full((n, HOTTEST), -1, dtype=np.int64)
        hottest_share = np.full((n, HOTTEST), np.nan)
        chosen = np.full(self.num_experts, np.nan)
        counts = window.counts.astype(np.float64)
        rows = self.rows.rows(window.layers)
        used = counts.sum(axis=1) > 0
        balance[rows[used]] = counts[used].mean(axis=1) / counts[used].max(axis=1)
        order = np.argsort(-counts, axis=1, kind="stable")[:, :HOTTEST]
        hottest[rows[used]] = order[used]
        share = shares(counts)
        hottest_share[rows[used]] = np.take_along_axis(share, order, axis=1)[used]
        if self.chosen in rows[used]:
            chosen = share[list(rows).index(self.chosen)]
        self.balance.append(balance)
        self.hottest.append(hottest)
        self.hottest_share.append(hottest_share)
        self.chosen_shares.append(chosen)

    def order(self) -> np.ndarray:
        """The windows in time order (by end, then source)."""
        return np.lexsort((self.windows["source"], self.windows["t_end"]))

    def result(self) -> dict:
        """``{"t0", "windows": {field: [...]}, "layers": {layer: {"balancedness", "hottest",
        "hottest_share"}}}``, windows in time order; null where a window has no count."""
        order = self.order()
        if not len(order):
            return {"t0": None, "windows": {name: [] for name in _WINDOW_FIELDS}, "layers": {}}
        windows = {name: [self.windows[name][i] for i in order] for name in _WINDOW_FIELDS}
        balance = np.array(self.balance)[order]
        hottest = np.array(self.hottest)[order]
        hottest_share = np.array(self.hottest_share)[order]
        return {
            "t0": min(windows["t_start"]),
            "windows": windows,
            "layers": {
                str(layer): {
                    "balancedness": _nullable(balance[:, row]),
                    "hottest": [[int(e) for e in h if e >= 0] for h in hottest[:, row].tolist()],
                    "hottest_share": [_nullable(s) for s in hottest_share[:, row]],
                }
                for row, layer in enumerate(self.rows.layers)
            },
        }


def _nullable(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in values]


def figure(series: LoadOverTime, result: dict, layer: int, title: str):
    """Traffic, each layer's balancedness, and the chosen layer's expert shares, over time:
    each window at its last pass (a window opens where the last closed, idle time included)."""
    import matplotlib.pyplot as plt

    windows = result["windows"]
    x = np.array(windows["t_end"]) - windows["t_end"][0]
    edges = cell_edges(x)
    fig, axes = plt.subplots(
        3,
        2,
        figsize=(11, 10),
        sharex="col",
        gridspec_kw={"height_ratios": [0.7, 1, 1.3], "width_ratios": [40, 1]},
    )
    (traffic, balance, heat), colour_bar = axes[:, 0], axes[2, 1]
    axes[0, 1].axis("off")
    axes[1, 1].axis("off")
    tokens = np.array(windows["tokens"])
    prefill = np.array(windows["prefill_tokens"])
    cells = {"x": edges[:-1], "width": np.diff(edges) * 0.9, "align": "edge"}  # the heatmap's
    traffic.bar(height=prefill, color="#3b6ea8", label="prompt tokens", **cells)
    traffic.bar(
        height=tokens - prefill, bottom=prefill, color="#e07b39", label="generated tokens", **cells
    )
    traffic.set_ylabel("tokens per window")
    traffic.legend(fontsize=8, loc="upper right")
    traffic.set_title(f"{title}: load over time")
    layers = list(result["layers"])
    values = np.array(
        [[np.nan if v is None else v for v in result["layers"][n]["balancedness"]] for n in layers]
    )
    if len(layers) <= 8:
        for n, row in zip(layers, values, strict=True):
            balance.plot(x, row, "o-", markersize=3, label=f"layer {n}")
    else:
        with np.errstate(all="ignore"):
            low, mid, high = np.nanmin(values, 0), np.nanmedian(values, 0), np.nanmax(values, 0)
        balance.fill_between(x, low, high, color="#3b6ea8", alpha=0.25, label="min-max of layers")
        balance.plot(x, mid, "-", color="#3b6ea8", label="median of layers")
        chosen = values[layers.index(str(layer))]
        balance.plot(x, chosen, "o-", markersize=3, color="#c0392b", label=f"layer {layer}")
    balance.set_ylim(0, 1.05)
    balance.set_ylabel("balancedness (mean / max)")
    balance.legend(fontsize=7, loc="lower left", ncol=4)
    balance.grid(alpha=0.3)
    relative = np.array(series.chosen_shares)[series.order()].T * series.num_experts
    image = heat.pcolormesh(
        edges, np.arange(series.num_experts + 1) - 0.5, relative, cmap="magma", shading="flat"
    )
    heat.set_ylabel("expert id")
    heat.set_xlabel("seconds since the first window's last pass")
    heat.set_title(f"layer {layer}: each expert's share of the choices relative to an even share")
    fig.colorbar(image, cax=colour_bar)
    fig.tight_layout()
    return fig


def cell_edges(x: np.ndarray) -> np.ndarray:
    """Edges of cells centred on the sorted points ``x``: half-way between neighbours, the
    outer ones as far out as their neighbour's half-gap (1 s around a single point)."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    middle = (x[1:] + x[:-1]) / 2
    return np.r_[x[0] - (middle[0] - x[0]), middle, x[-1] + (x[-1] - middle[-1])]


def section(done: Finished, figure_uri: str | None) -> str:
    """The figure and, per layer, how its balance and hottest experts moved."""
    result = done.results["time_series"]
    rows = []
    for layer, v in result["layers"].items():
        known = [b for b in v["balancedness"] if b is not None]
        counted = [h for h in v["hottest"] if h]
        rows.append(
            [
                layer,
                len(known),
                number(known[0] if known else None),
                number(known[-1] if known else None),
                number(min(known) if known else None),
                number(max(known) if known else None),
                ", ".join(map(str, counted[0])) if counted else "-",
                ", ".join(map(str, counted[-1])) if counted else "-",
            ]
        )
    windows = result["windows"]
    ends = windows["t_end"]
    span = (
        f"{len(ends)} windows ending from "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ends[0]))} UTC over "
        f"{ends[-1] - ends[0]:,.1f} s"
        if ends
        else "no window"
    )
    return (
        figure_html(
            figure_uri,
            "time_series",
            f"{span}. Top: tokens per window, at its last pass (prompt blue, generated "
            "orange); middle: each "
            "layer's balancedness per window (mean / max of its experts' loads, 1 = even); "
            f"bottom: layer {done.run.layer}'s expert shares per window relative to an even "
            "share (bright = hot).",
        )
        + table(
            [
                "layer",
                "windows",
                "balancedness first",
                "last",
                "min",
                "max",
                "hottest experts, first window",
                "last window",
            ],
            rows,
            left=1,
        )
        + note(
            "Every window's balancedness, hottest experts and their shares: "
            "<code>analysis.json</code> → <code>time_series</code>."
        )
    )


ANALYSIS = Analysis(
    key="time_series",
    title="Load over time",
    question="Did the experts' load shift over time, for instance when the traffic changed?",
    keys=("time_series",),
    needs=frozenset({Need.EXPERT_COUNTS, Need.TIMES}),
    start=lambda run: LoadOverTime(run.layers, run.num_experts, run.layer),
    results=lambda series, run: {"time_series": series.result()},
    figure=lambda done: (
        figure(done.accumulator, done.results["time_series"], done.run.layer, done.run.title)
        if done.results["time_series"]["windows"]["t_end"]
        else None
    ),
    section=section,
)
