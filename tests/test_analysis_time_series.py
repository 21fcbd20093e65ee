"""Load over time (moe_profiler/analysis/time_series.py): one point per counts window."""

import numpy as np
import pytest

from moe_profiler.analysis.time_series import LoadOverTime
from moe_profiler.reading.columns import CountsWindow


def window(source, t_end, layers, counts, tokens=10, prefill=4):
    counts = np.array(counts)
    return CountsWindow(
        source, t_end - 5.0, t_end, 3, tokens, prefill, np.array(layers), counts, counts * 0.5
    )


def test_balancedness_and_hottest_experts_per_window_in_time_order():
    series = LoadOverTime([0, 3], num_experts=4, layer=3)
    series.add_window(window(0, 20.0, [0, 3], [[4, 4, 4, 4], [8, 0, 0, 0]]))
    series.add_window(window(1, 10.0, [3], [[1, 2, 3, 2]], tokens=4, prefill=0))  # earlier
    series.add_window(window(0, 30.0, [0, 3], [[0, 0, 0, 0], [2, 2, 6, 2]]))
    result = series.result()
    assert result["t0"] == 5.0
    assert result["windows"] == {
        "source": [1, 0, 0],
        "t_start": [5.0, 15.0, 25.0],
        "t_end": [10.0, 20.0, 30.0],
        "tokens": [4, 10, 10],
        "prefill_tokens": [0, 4, 4],
    }
    zero, three = result["layers"]["0"], result["layers"]["3"]
    # mean / max of the experts' loads; a layer a window did not count (or counted
    # nothing at) has no point
    assert zero["balancedness"] == [None, 1.0, None]
    assert three["balancedness"] == [pytest.approx(2 / 3), 0.25, pytest.approx(3 / 6)]
    assert three["hottest"] == [[2, 1, 3], [0, 1, 2], [2, 0, 1]]
    assert three["hottest_share"] == [
        [0.375, 0.25, 0.25],
        [1.0, 0.0, 0.0],
        [0.5, 0.166667, 0.166667],
    ]  # rounded to 6 decimals
    assert zero["hottest"] == [[], [0, 1, 2], []]
    # the chosen layer's shares per window, in time order, for the figure's heatmap
    shares = np.array(series.chosen_shares)[series.order()]
    assert shares.tolist() == [[0.125, 0.25, 0.375, 0.25], [1, 0, 0, 0], [1 / 6, 1 / 6, 0.5, 1 / 6]]


def test_no_window_gives_an_empty_series():
    result = LoadOverTime([0], num_experts=2, layer=0).result()
    assert result == {
        "t0": None,
        "windows": {"source": [], "t_start": [], "t_end": [], "tokens": [], "prefill_tokens": []},
        "layers": {},
    }
