"""Load per expert, split into prefill and decode, and its balance metrics
(moe_profiler/analysis/load.py)."""

import math

import numpy as np
import pytest
from helpers import route_block, write_log

from moe_profiler.analysis.load import ExpertLoad, layer_metrics
from moe_profiler.reading.columns import DECODE, PREFILL, UNKNOWN_PHASE, CountsWindow, RouteBlock
from moe_profiler.reading.routes import LogFile, iter_blocks, read_header

P, D, U = PREFILL, DECODE, UNKNOWN_PHASE


def test_counts_weights_and_tokens_per_phase():
    load = ExpertLoad([0, 3], num_experts=4, top_k=2)
    load.add(
        route_block(
            [
                (1, 0, 0, 0, 0, 11, P, [0, 1], [0.6, 0.4]),
                (1, 0, 3, 0, 0, 11, P, [2, 3], [0.7, 0.3]),
                (1, 1, 0, 0, 1, 12, P, [2, 0], [0.5, 0.5]),
                (1, 1, 3, 0, 1, 12, P, [1, 2], [0.9, 0.1]),
            ],
            ["r-1"],
        )
    )
    load.add(
        route_block(
            [
                (2, 0, 0, 0, 2, 13, D, [1, 0], [0.8, 0.2]),
                (2, 0, 3, 0, 2, 13, D, [3, 2], [0.6, 0.4]),
                (3, 0, 0, 0, 3, 14, U, [3, 0], [0.5, 0.5]),
            ],
            ["r-1"],
        )
    )
    result = load.result()
    layer0 = result["prefill_decode"]["0"]
    assert layer0["prefill"]["tokens"] == 2 and layer0["prefill"]["counts"] == [2, 1, 1, 0]
    assert layer0["prefill"]["mean_weight"] == [0.55, 0.4, 0.5, 0.0]
    assert layer0["decode"]["tokens"] == 1 and layer0["decode"]["counts"] == [1, 1, 0, 0]
    assert layer0["decode"]["mean_weight"] == [0.2, 0.8, 0.0, 0.0]
    assert layer0["unknown"]["counts"] == [1, 0, 0, 1]
    layer3 = result["prefill_decode"]["3"]
    assert "unknown" not in layer3  # no line of unknown phase at layer 3
    assert layer3["prefill"]["counts"] == [0, 1, 2, 1] and layer3["decode"]["counts"] == [
        0,
        0,
        1,
        1,
    ]
    assert result["load"]["0"]["tokens"] == 4 and result["load"]["0"]["counts"] == [4, 2, 1, 1]
    assert result["load"]["0"]["max_over_mean"] == pytest.approx(4 / 2)
    assert load.totals().tolist() == [[4, 2, 1, 1], [0, 1, 3, 2]]


def test_phases_of_a_written_log(tmp_path):
    # 2 requests, prompt length 4: request 0 positions 0-5, request 1 positions 3-4
    ids = np.array([[[0, 1]], [[1, 2]], [[2, 3]], [[3, 0]], [[0, 2]], [[1, 3]]], dtype=np.int32)
    path = write_log(
        tmp_path / "a.jsonl",
        [ids, ids[:2]],
        layers=(0,),
        num_experts=4,
        requests=[("a-00000001", 0), ("b-00000002", 3)],
    )
    log = LogFile(path, read_header(path))
    load = ExpertLoad([0], 4, top_k=2)
    for block in iter_blocks([log]):
        load.add(block)
    phases = load.result()["prefill_decode"]["0"]
    # prefill: request a pos 0-3 (rows 0-3), request b pos 3 (row 0)
    assert phases["prefill"]["tokens"] == 5 and phases["prefill"]["counts"] == [3, 3, 2, 2]
    # decode: request a pos 4-5 (rows 4-5), request b pos 4 (row 1)
    assert phases["decode"]["tokens"] == 3 and phases["decode"]["counts"] == [1, 2, 2, 1]


def test_uniform_and_one_hot_extremes():
    even = layer_metrics(np.full(8, 10))
    assert even["max_over_mean"] == pytest.approx(1.0) and even["cv"] == pytest.approx(0.0)
    assert even["entropy"] == pytest.approx(1.0) and even["jain"] == pytest.approx(1.0)
    assert even["unused_experts"] == 0
    one = layer_metrics(np.array([0, 0, 40, 0]))
    assert one["max_over_mean"] == pytest.approx(4.0) and one["jain"] == pytest.approx(0.25)
    assert one["entropy"] == pytest.approx(0.0) and one["unused_experts"] == 3
    assert one["hottest"][0] == {"expert": 2, "count": 40}
    assert layer_metrics(np.zeros(4)) == {"assignments": 0}


def test_metrics_by_hand():
    counts = np.array([1, 2, 3, 6])
    m = layer_metrics(counts)
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


def test_load_counts_and_mean_weights_of_all_phases():
    load = ExpertLoad([5, 2], num_experts=4, top_k=2)
    load.add(block([2, 5], [[0, 1], [3, 1]], [[0.5, 0.25], [1.0, 0.5]]))
    load.add(block([2], [[1, 3]], [[0.75, 0.25]]))
    assert load.rows.layers == [2, 5]
    assert load.totals().tolist() == [[1, 2, 0, 1], [0, 1, 0, 1]]
    summary = load.result()["load"]
    assert summary["2"]["tokens"] == 2 and summary["5"]["tokens"] == 1
    assert summary["2"]["mean_weight"] == [0.5, 0.5, 0.0, 0.25]


def test_load_adds_counts_windows():
    load = ExpertLoad([0, 3], num_experts=2, top_k=1)
    for layers, counts in (([3], [[4, 1]]), ([0, 3], [[2, 2], [0, 5]])):
        shape = (len(layers), 2)
        load.add_window(
            CountsWindow(0, 0.0, 1.0, 1, 1, 0, np.array(layers), np.array(counts), np.ones(shape))
        )
    assert load.totals().tolist() == [[2, 2], [4, 6]]
    assert load.weight_totals().tolist() == [[1, 1], [2, 2]]
