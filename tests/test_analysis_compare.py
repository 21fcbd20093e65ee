"""Comparing two runs' expert distributions (moe_profiler/analysis/compare.py)."""

import numpy as np
import pytest

from moe_profiler.analysis.compare import compare_runs, jensen_shannon_bits


def test_jensen_shannon_in_bits():
    assert jensen_shannon_bits(np.array([2, 2, 0, 0]), np.array([0, 0, 5, 5])) == 1.0
    assert jensen_shannon_bits(np.array([3, 1]), np.array([6, 2])) == 0.0
    # p = [.5,.5,0], q = [0,.5,.5], m = [.25,.5,.25]: KL(p||m) = KL(q||m) = .5
    assert jensen_shannon_bits(np.array([1, 1, 0]), np.array([0, 1, 1])) == pytest.approx(0.5)


def test_common_layers_and_experts_that_moved():
    a = np.array([[1, 1, 0], [4, 4, 0]])
    b = np.array([[9, 9, 9], [0, 2, 2]])
    result = compare_runs(a, [0, 1], b, [1, 3], top=3)
    assert list(result) == ["1"]  # the only layer logged in both runs
    # p = [.5,.5,0], q = [1/3,1/3,1/3], m = [5/12,5/12,1/6]
    kl_p = np.log2(0.5 / (5 / 12))
    kl_q = 2 / 3 * np.log2((1 / 3) / (5 / 12)) + 1 / 3 * np.log2((1 / 3) / (1 / 6))
    assert result["1"]["jsd_bits"] == pytest.approx((kl_p + kl_q) / 2, abs=1e-6)
    assert [m["expert"] for m in result["1"]["moved"]] == [2, 0, 1]
    assert result["1"]["moved"][0] == {
        "expert": 2,
        "share_a": 0.0,
        "share_b": pytest.approx(1 / 3, abs=1e-6),
        "delta": pytest.approx(1 / 3, abs=1e-6),
    }
    assert result["1"]["choices_a"] == 8 and result["1"]["choices_b"] == 27


def test_incomparable_runs_are_refused():
    with pytest.raises(ValueError, match="the runs have 3 and 4 experts"):
        compare_runs(np.ones((1, 3)), [0], np.ones((1, 4)), [0])
    with pytest.raises(ValueError, match=r"no layer is logged in both runs \(A: \[0\], B: \[1\]\)"):
        compare_runs(np.ones((1, 3)), [0], np.ones((1, 3)), [1])
