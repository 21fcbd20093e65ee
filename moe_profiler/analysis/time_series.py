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
    """Traffic, each layer's balancedness, and the chosen layer's expert shares, over time."""
    import matplotlib.pyplot as plt

    windows, t0 = result["windows"], result["t0"]
    start = np.array(windows["t_start"]) - t0
    end = np.array(windows["t_end"]) - t0
    fig, (traffic, balance, heat) = plt.subplots(
        3, 1, figsize=(11, 10), gridspec_kw={"height_ratios": [0.7, 1, 1.3]}
    )
    tokens = np.array(windows["tokens"])
    prefill = np.array(windows["prefill_tokens"])
    width = np.maximum(end - start, (end.max() - start.min() or 1) / 400)
    traffic.bar(start, prefill, width=width, align="edge", color="#3b6ea8", label="prompt tokens")
    traffic.bar(
        start,
        tokens - prefill,
        width=width,
        bottom=prefill,
        align="edge",
        color="#e07b39",
        label="generated tokens",
    )
    traffic.set_ylabel("tokens per window")
    traffic.legend(fontsize=8, loc="upper right")
    traffic.set_title(f"{title}: load over time")
    layers = list(result["layers"])
    values = np.array(
        [[np.nan if v is None else v for v in result["layers"][x]["balancedness"]] for x in layers]
    )
    if len(layers) <= 8:
        for x, row in zip(layers, values, strict=True):
            balance.plot(end, row, "o-", markersize=3, label=f"layer {x}")
    else:
        with np.errstate(all="ignore"):
            low, mid, high = np.nanmin(values, 0), np.nanmedian(values, 0), np.nanmax(values, 0)
        balance.fill_between(end, low, high, color="#3b6ea8", alpha=0.25, label="min-max of layers")
        balance.plot(end, mid, "-", color="#3b6ea8", label="median of layers")
        chosen = values[layers.index(str(layer))]
        balance.plot(end, chosen, "o-", markersize=3, color="#c0392b", label=f"layer {layer}")
    balance.set_ylim(0, 1.05)
    balance.set_xlim(traffic.get_xlim())
    balance.set_ylabel("balancedness (mean / max)")
    balance.legend(fontsize=7, loc="lower left", ncol=4)
    balance.grid(alpha=0.3)
    relative = np.array(series.chosen_shares)[series.order()].T * series.num_experts
    image = heat.imshow(
        relative, aspect="auto", cmap="magma", interpolation="nearest", origin="lower"
    )
    heat.set_xlabel("window, in time order")
    heat.set_ylabel("expert id")
    heat.set_title(f"layer {layer}: each expert's share of the choices relative to an even share")
    fig.colorbar(image, ax=heat, fraction=0.03, pad=0.01)
    traffic.set_xlabel("seconds since the first window")
    balance.set_xlabel("seconds since the first window")
    fig.tight_layout()
    return fig


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
    span = (
        f"{len(windows['t_end'])} windows from "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(result['t0']))} UTC over "
        f"{max(windows['t_end']) - result['t0']:,.0f} s"
        if windows["t_end"]
        else "no window"
    )
    return (
        figure_html(
            figure_uri,
            "time_series",
            f"{span}. Top: tokens per window (prompt blue, generated orange); middle: each "
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
