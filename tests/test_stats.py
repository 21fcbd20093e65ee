"""Usage counts and load-balance metrics (moe_profiler/stats.py)."""

import math

import numpy as np
import pytest

from moe_profiler import stats
from moe_profiler.columns import CountsWindow, RouteBlock


def test_uniform_and_one_hot_extremes():
    even = stats.layer_metrics(np.full(8, 10))
    assert even["max_over_mean"] == pytest.approx(1.0) and even["cv"] == pytest.approx(0.0)
    assert even["entropy"] == pytest.approx(1.0) and even["jain"] == pytest.approx(1.0)
    assert even["unused_experts"] == 0
    one = stats.layer_metrics(np.array([0, 0, 40, 0]))
    assert one["max_over_mean"] == pytest.approx(4.0) and one["jain"] == pytest.approx(0.25)
    assert one["entropy"] == pytest.approx(0.0) and one["unused_experts"] == 3
    assert one["hottest"][0] == {"expert": 2, "count": 40}
    assert stats.layer_metrics(np.zeros(4)) == {"assignments": 0}


def test_metrics_by_hand():
    counts = np.array([1, 2, 3, 6])
    m = stats.layer_metrics(counts)
    mean, share = 3.0, counts / 12
    assert m["max_over_mean"] == pytest.approx(6 / mean)
    assert m["cv"] == pytest.approx(math.sqrt(((counts - mean) ** 2).mean()) / mean)
    assert m["entropy"] == pytest.approx(-(share * np.log(share)).sum() / math.log(4))
    assert m["jain"] == pytest.approx(144 / (4 * 50))
    assert [h["expert"] for h in m["hottest"]] == [3, 2, 1]
    assert [c["expert"] for c in m["coldest"]] == [0, 1, 2]


def block(layers, experts, weights) -> RouteBlock:
    n, none = len(layers), np.full(len(layers), -1)
    return RouteBlock(
        0,
        step=np.ones(n, dtype=np.int64),
        token=np.arange(n, dtype=np.int32),
        layer=np.array(layers, dtype=np.int32),
        request=none.astype(np.int32),
        pos=none,
        tok=none,
        phase=none.astype(np.int8),
        experts=np.array(experts, dtype=np.int32),
        weights=np.array(weights, dtype=np.float32),
        requests=[],
    )


def test_counter_counts_and_mean_weights():
    counter = stats.UsageCounter([5, 2], num_experts=4)
    counter.add_block(block([2, 5], [[0, 1], [3, 1]], [[0.5, 0.25], [1.0, 0.5]]))
    counter.add_block(block([2], [[1, 3]], [[0.75, 0.25]]))
    assert counter.layers == [2, 5]
    assert counter.counts.tolist() == [[1, 2, 0, 1], [0, 1, 0, 1]]
    summary = counter.summary(top_k=2)
    assert summary["2"]["tokens"] == 2 and summary["5"]["tokens"] == 1
    assert summary["2"]["mean_weight"] == [0.5, 0.5, 0.0, 0.25]


def test_counter_adds_counts_windows():
    counter = stats.UsageCounter([0, 3], num_experts=2)
    for layers, counts in (([3], [[4, 1]]), ([0, 3], [[2, 2], [0, 5]])):
        shape = (len(layers), 2)
        counter.add_counts(
            CountsWindow(0, 0.0, 1.0, 1, 1, 0, np.array(layers), np.array(counts), np.ones(shape))
        )
    assert counter.counts.tolist() == [[2, 2], [4, 6]]
    assert counter.weight_sums.tolist() == [[1, 1], [2, 2]]
