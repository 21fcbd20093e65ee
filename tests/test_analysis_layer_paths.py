"""Top-1 transitions between adjacent logged layers (moe_profiler/analysis/layer_paths.py)."""

import math

import numpy as np
import pytest
from helpers import route_block

from moe_profiler.analysis import layer_paths
from moe_profiler.reading.columns import PREFILL


def token(step, row, tops, layers=(0, 2, 5)):
    """A token's lines: top-1 ``tops[i]`` at ``layers[i]``; the top-1 is listed second."""
    return [
        (step, row, layer, 0, row, 3, PREFILL, [(top + 1) % 3, top], [0.3, 0.7])
        for layer, top in zip(layers, tops, strict=True)
    ]


def test_joint_counts_conditional_and_mutual_information():
    acc = layer_paths.LayerTransitions([0, 2, 5], num_experts=3)
    acc.add(route_block(token(1, 0, [0, 1, 2]) + token(1, 1, [0, 1, 2]), ["r-1"]))
    acc.add(
        route_block(
            token(1, 2, [1, 2, 2]) + token(2, 0, [2, 0, 1]) + token(2, 1, [2, 2], (0, 2)),
            ["r-1"],
        )
    )
    result = acc.result(top=10, min_count=1)
    assert list(result) == ["0->2", "2->5"]
    first = result["0->2"]
    assert first["tokens"] == 5  # the last token has no layer 5 but counts for 0->2
    assert [(t["from"], t["to"], t["p"], t["count"]) for t in first["top"]] == [
        (0, 1, 1.0, 2),
        (1, 2, 1.0, 1),
        (2, 0, 0.5, 1),
        (2, 2, 0.5, 1),
    ]
    # sum p(x,y) log2(p(x,y) / (p(x) p(y))), p(from)=[.4,.2,.4], p(to)=[.2,.4,.4]
    expected = (
        0.4 * math.log2(0.4 / (0.4 * 0.4))
        + 0.2 * math.log2(0.2 / (0.2 * 0.4))
        + 0.2 * math.log2(0.2 / (0.4 * 0.2))
        + 0.2 * math.log2(0.2 / (0.4 * 0.4))
    )
    assert first["mutual_information_bits"] == pytest.approx(expected, abs=1e-6)
    second = result["2->5"]
    assert second["tokens"] == 4
    # from [1,1,2,0] -> to [2,2,2,1]: H(to) = H(.75,.25), the choice at 2 fixes the one at 5
    h_to = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert second["mutual_information_bits"] == pytest.approx(h_to, abs=1e-6)
    assert second["entropy_to_bits"] == pytest.approx(h_to, abs=1e-6)
    assert acc.result(top=1, min_count=2)["0->2"]["top"] == [
        {"from": 0, "to": 1, "p": 1.0, "count": 2, "from_count": 2}
    ]


def test_independent_layers_have_zero_information_and_bias_estimate():
    joint = np.array([[5, 5], [5, 5]])
    assert layer_paths.mutual_information_bits(joint) == 0.0
    # Miller-Madow: (4 cells - 2 rows - 2 columns + 1) / (2 * 20 * ln 2)
    assert layer_paths.miller_madow_bias_bits(joint) == pytest.approx(1 / (40 * math.log(2)))


def test_a_single_logged_layer_has_no_pairs():
    acc = layer_paths.LayerTransitions([3], num_experts=3)
    acc.add(route_block(token(1, 0, [1], (3,)), ["r-1"]))
    assert acc.result() == {}


def test_top_k_pairs_across_layers_need_no_weights():
    """Tokens with a in their top-k at l and b at the next layer, lift over unrelated
    layers at the same loads; without weights no top-1 part."""
    acc = layer_paths.LayerTransitions([0, 2], num_experts=3, top1=False)
    lines = token(1, 0, [0, 1], (0, 2)) + token(1, 1, [0, 1], (0, 2)) + token(2, 0, [2, 2], (0, 2))
    acc.add(route_block(lines, ["r-1"]))  # top-k sets {1,0}->{2,1} twice, {0,2}->{0,2}
    result = acc.result(top=10, min_count=1)["0->2"]
    # at layer 0 expert 0 in 3 tokens, 1 in 2, 2 in 1; at layer 2: 0 in 1, 1 in 2, 2 in 3
    assert result == {
        "tokens": 3,
        "experts_together": [
            {"from": 2, "to": 0, "count": 1, "lift": 3.0, "p": 1.0},
            {"from": 1, "to": 1, "count": 2, "lift": 1.5, "p": 1.0},
            {"from": 0, "to": 2, "count": 3, "lift": 1.0, "p": 1.0},
            {"from": 0, "to": 1, "count": 2, "lift": 1.0, "p": 0.666667},
            {"from": 1, "to": 2, "count": 2, "lift": 1.0, "p": 1.0},
            {"from": 0, "to": 0, "count": 1, "lift": 1.0, "p": 0.333333},
            {"from": 2, "to": 2, "count": 1, "lift": 1.0, "p": 1.0},
        ],
    }
