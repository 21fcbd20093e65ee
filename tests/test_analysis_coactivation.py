"""Co-activation and lift (moe_profiler/analysis/coactivation.py)."""

import numpy as np
import pytest
from helpers import route_block

from moe_profiler.analysis.coactivation import CoActivation
from moe_profiler.reading.columns import DECODE


def lines(layer, sets):
    return [(1, i, layer, 0, i, 9, DECODE, s, None) for i, s in enumerate(sets)]


def test_pair_counts_and_lift_against_independent_choice():
    acc = CoActivation([0, 1], num_experts=4)
    # layer 0: {0,1} {0,1} {2,3} {0,2}: N=4, n=[3,2,2,1]; the id order inside a line is noise
    acc.add(route_block(lines(0, [[1, 0], [0, 1]]), ["r-1"]))
    acc.add(route_block(lines(0, [[3, 2], [2, 0]]) + lines(1, [[0, 3]]), ["r-1"]))
    result = acc.result(top=10, min_count=1)
    assert result["0"] == {
        "tokens": 4,
        "top_pairs": [
            {"experts": [2, 3], "count": 1, "lift": 2.0},  # 1*4/(2*1)
            {"experts": [0, 1], "count": 2, "lift": round(8 / 6, 4)},  # 2*4/(3*2)
            {"experts": [0, 2], "count": 1, "lift": round(4 / 6, 4)},  # 1*4/(3*2)
        ],
    }
    assert result["1"]["top_pairs"] == [{"experts": [0, 3], "count": 1, "lift": 1.0}]
    assert acc.result(top=10, min_count=2)["0"]["top_pairs"] == [
        {"experts": [0, 1], "count": 2, "lift": round(8 / 6, 4)}
    ]
    assert acc.result(top=1, min_count=1)["0"]["top_pairs"][0]["experts"] == [2, 3]
    lift = acc.lift(0)
    assert lift[3, 2] == lift[2, 3] == 2.0 and lift[1, 3] == 0.0
    assert np.isnan(lift[0, 0])


def test_three_pairs_per_line_with_top3():
    acc = CoActivation([5], num_experts=5)
    acc.add(route_block(lines(5, [[4, 0, 2], [2, 4, 1]]), ["r-1"]))
    pairs = {tuple(p["experts"]): p["count"] for p in acc.result(min_count=1)["5"]["top_pairs"]}
    assert pairs == {(0, 2): 1, (0, 4): 1, (2, 4): 2, (1, 2): 1, (1, 4): 1}
    assert acc.lift(5)[2, 4] == pytest.approx(2 * 2 / (2 * 2))
