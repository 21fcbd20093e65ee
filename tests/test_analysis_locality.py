"""Consecutive decode tokens of a request (moe_profiler/analysis/locality.py)."""

import pytest
from helpers import route_block

from moe_profiler.analysis.locality import TemporalLocality
from moe_profiler.reading.columns import DECODE, PREFILL

REQUESTS = ["a-1", "b-2", "c-3", "d-4"]
A, B, C, D = range(4)


def line(step, request, pos, experts, phase=DECODE, row=0):
    """Layer 0; the first listed expert is the top-1."""
    return (step, row, 0, request, pos, 7, phase, experts, None)


def test_repeat_rate_jaccard_and_independent_baselines():
    acc = TemporalLocality([0], num_experts=4, top_k=2)
    acc.add(
        route_block(
            [line(1, A, 9, [0, 1], PREFILL), line(2, A, 10, [0, 1]), line(2, B, 5, [1, 3])],
            REQUESTS,
        )
    )
    acc.add(route_block([line(3, A, 11, [0, 2]), line(3, C, 20, [1, 0])], REQUESTS))
    acc.add(route_block([line(4, A, 12, [3, 2]), line(5, B, 6, [3, 1])], REQUESTS))
    acc.add(route_block([line(6, C, 22, [1, 0]), line(6, D, 40, [2, 3])], REQUESTS))  # no C21
    acc.add(route_block([line(6, D, 41, [2, 3])], REQUESTS, source=1))  # another file's "d-4"
    got = acc.result()["0"]
    # pairs: A10-A11 (same top-1, 1 shared), A11-A12 (no, 1 shared), B5-B6 (no, 2 shared)
    assert got["pairs"] == 3 and got["decode_tokens"] == 9
    assert got["same_top1"] == pytest.approx(1 / 3, abs=1e-6)
    assert got["overlap"] == pytest.approx(4 / 3, abs=1e-6)
    assert got["jaccard"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3, abs=1e-6)
    # decode top-1 counts [2,3,2,2] of 9; membership [4,5,4,5] of 9
    assert got["same_top1_independent"] == pytest.approx(21 / 81, abs=1e-6)
    assert got["overlap_independent"] == pytest.approx(82 / 81, abs=1e-6)
    assert got["jaccard_independent"] == pytest.approx((82 / 81) / (4 - 82 / 81), abs=1e-6)


def test_requests_unseen_for_long_are_forgotten():
    for stale, pairs in ((1, 0), (64, 1)):
        acc = TemporalLocality([0], num_experts=4, top_k=2, stale_passes=stale)
        acc.add(route_block([line(1, D, 30, [0, 1])], REQUESTS))
        acc.add(route_block([line(4, A, 3, [2, 3])], REQUESTS))
        acc.add(route_block([line(5, D, 31, [0, 1])], REQUESTS))
        assert acc.result()["0"]["pairs"] == pairs


def test_layers_are_kept_apart():
    acc = TemporalLocality([0, 1], num_experts=4, top_k=2)
    acc.add(
        route_block(
            [
                (1, 0, 0, A, 4, 7, DECODE, [0, 1], None),
                (1, 0, 1, A, 4, 7, DECODE, [2, 3], None),
                (2, 0, 0, A, 5, 7, DECODE, [0, 1], None),
                (2, 0, 1, A, 5, 7, DECODE, [3, 2], None),
            ],
            REQUESTS,
        )
    )
    result = acc.result()
    assert result["0"]["same_top1"] == 1.0 and result["0"]["jaccard"] == 1.0
    assert result["1"]["same_top1"] == 0.0 and result["1"]["jaccard"] == 1.0


def test_without_weights_only_the_overlap_is_measured():
    """vLLM's routed_experts carry no weights: no top-1, the same overlap and Jaccard."""
    lines = [line(2, A, 10, [0, 1]), line(3, A, 11, [0, 2]), line(4, A, 12, [3, 2])]
    with_weights = TemporalLocality([0], num_experts=4, top_k=2)
    without = TemporalLocality([0], num_experts=4, top_k=2, top1=False)
    for acc in (with_weights, without):
        acc.add(route_block(lines, REQUESTS))
    got, full = without.result()["0"], with_weights.result()["0"]
    assert set(full) - set(got) == {"same_top1", "same_top1_independent"}
    assert got == {key: full[key] for key in got} and got["pairs"] == 2
