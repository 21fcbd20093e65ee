"""Expert-parallel what-if (moe_profiler/analysis/expert_parallel.py)."""

import sys
from dataclasses import replace

import numpy as np
import pytest
from helpers import route_block

from moe_profiler.analysis import expert_parallel as ep
from moe_profiler.reading.columns import DECODE, CountsWindow


def top1_lines(step, experts, first_token=0):
    """One layer (0), top-1: token i of pass ``step`` chooses ``experts[i]``."""
    return [(step, first_token + i, 0, 0, i, 5, DECODE, [e], [1.0]) for i, e in enumerate(experts)]


@pytest.fixture
def what_if():
    """Three passes: (file 0, step 1) over two blocks, (file 0, step 2), (file 1, step 2)."""
    acc = ep.ExpertParallelWhatIf([0], num_experts=4)
    acc.add(route_block(top1_lines(1, [0, 0]), ["r-1"]))
    acc.add(route_block(top1_lines(1, [0, 1], 2) + top1_lines(2, [2, 3]), ["r-1"]))
    acc.add(route_block(top1_lines(2, [3]), ["r-1"], source=1))  # same step, another file
    return acc


def test_ep_sizes_and_contiguous_placement_follow_vllm():
    assert ep.ep_sizes(60) == [2, 4, 8, 16, 32] and ep.ep_sizes(8) == [2, 4, 8]
    assert ep.ep_sizes(1) == []
    # vLLM determine_expert_map("linear"): 6 experts on 4 GPUs -> 2, 2, 1, 1
    placement = ep.contiguous_placement(6, 4)
    assert placement.argmax(axis=1).tolist() == [0, 0, 1, 1, 2, 3]
    assert placement.sum(axis=1).tolist() == [1.0] * 6
    assert ep.fewest_redundant(60, 8) == 4 and ep.fewest_redundant(60, 4) == 0


def test_balancedness_per_pass_weighted_by_tokens_and_on_totals(what_if):
    result = what_if.result(rebalance=None)
    assert what_if.passes.units == 3 and what_if.windows.units == 0
    assert what_if.whole_run_totals().tolist() == [[3, 1, 1, 1 + 1]]
    # loads per pass [3,1,0,0] (4 tokens), [0,0,1,1] (2), [0,0,0,1] (1)
    # 2 GPUs {0,1} {2,3}: [4,0] [0,2] [0,1] -> 0.5 each; totals [4,3] -> 3.5/4
    two = result["2"]["contiguous"]
    assert two["balancedness"] == pytest.approx(0.5)
    assert two["balancedness_of_totals"] == pytest.approx(0.875)
    # 4 GPUs: 1/3, 1/2, 1/4 weighted 4:2:1; totals [3,1,1,2] -> 1.75/3
    four = result["4"]["contiguous"]
    assert four["balancedness"] == pytest.approx((4 / 3 + 2 / 2 + 1 / 4) / 7, abs=1e-6)
    assert four["balancedness_of_totals"] == pytest.approx(1.75 / 3, abs=1e-6)
    assert four["per_layer"]["0"]["balancedness"] == four["balancedness"]
    assert set(result) == {"2", "4"} and set(result["2"]) == {"contiguous"}
    assert four["balancedness_per_window"] is None  # no counts window was read


def test_windows_are_scored_apart_from_passes_and_join_the_totals(what_if):
    """A counts window is one unit, its tokens its choices / top_k; the totals add up both."""
    window = CountsWindow(0, 10.0, 20.0, 5, 6, 2, np.array([0]), np.array([[0, 6, 0, 0]]), None)
    what_if.add_window(window)
    what_if.add_window(replace(window, counts=np.array([[2, 2, 2, 0]])))
    result = what_if.result(rebalance=None)
    assert (what_if.passes.units, what_if.windows.units) == (3, 2)
    assert what_if.whole_run_totals().tolist() == [[5, 9, 3, 2]]
    two = result["2"]["contiguous"]
    assert two["balancedness"] == pytest.approx(0.5)  # the passes' alone, as before
    # windows on {0,1} {2,3}: [6,0] -> 0.5, [4,2] -> 0.75, each 6 tokens
    assert two["balancedness_per_window"] == pytest.approx((0.5 + 0.75) / 2)
    assert two["balancedness_of_totals"] == pytest.approx(9.5 / 14)


def test_eplb_placement_is_vllms_policy_on_the_measured_loads():
    rebalance, source = ep.load_eplb_policy()
    assert rebalance is not None, source
    loads = np.array([[10, 1, 1, 0]])
    # no redundancy: hottest expert alone with the idle one; 1 and 2 together
    share = ep.eplb_placement(rebalance, loads, ep_size=2, redundant=0)
    gpu = share[0].argmax(axis=1)
    assert gpu[0] == gpu[3] and gpu[1] == gpu[2] and gpu[0] != gpu[1]
    # 2 redundant experts: both copies go to expert 0 (3 replicas, 3 slots per GPU),
    # two on one GPU with expert 3, one with experts 1 and 2
    share = ep.eplb_placement(rebalance, loads, ep_size=2, redundant=2)
    assert sorted(share[0, 0].tolist()) == pytest.approx([1 / 3, 2 / 3])
    gpu_loads = np.einsum("le,leg->lg", loads, share)[0]
    assert sorted(gpu_loads.tolist()) == pytest.approx([16 / 3, 20 / 3])
    assert share.sum(axis=2) == pytest.approx(np.ones((1, 4)))


def test_eplb_placement_reads_the_policy_of_every_release():
    """vLLM 0.32's rebalance_experts returns phy2log alone, 0.15.1's a tuple with it first:
    the same placement from either."""
    rebalance, source = ep.load_eplb_policy()
    assert rebalance is not None, source
    loads = np.array([[10, 1, 1, 0], [0, 3, 9, 4], [2, 2, 2, 2]])

    def phy2log_only(*args):
        placed = rebalance(*args)
        return placed[0] if isinstance(placed, tuple) else placed

    for redundant in (0, 2):
        assert np.array_equal(
            ep.eplb_placement(phy2log_only, loads, ep_size=2, redundant=redundant),
            ep.eplb_placement(rebalance, loads, ep_size=2, redundant=redundant),
        )


def test_eplb_variants_in_the_result(what_if):
    rebalance, _ = ep.load_eplb_policy()
    result = what_if.result(rebalance)
    two = result["2"]
    assert two["eplb"]["redundant"] == 0 and two["eplb"]["slots_per_gpu"] == 2
    assert two["eplb_redundant"]["redundant"] == 2 and two["eplb_redundant"]["slots_per_gpu"] == 3
    # totals [3,1,1,2]: without copies the best split is {0,1} {2,3} or {0,2} {1,3} -> 3.5/4
    assert two["eplb"]["balancedness_of_totals"] == pytest.approx(0.875)
    assert result["4"]["eplb_redundant"]["redundant"] == 4


def test_without_vllm_eplb_is_skipped_and_says_why(monkeypatch, what_if):
    monkeypatch.setitem(sys.modules, "vllm.distributed.eplb.policy.default", None)
    rebalance, why = ep.load_eplb_policy()
    assert rebalance is None and "vLLM is not installed" in why
    assert set(what_if.result(rebalance)["4"]) == {"contiguous"}


def test_sglang_logical_count_rows_are_decoder_layers():
    totals = np.array([[1, 2, 3], [4, 5, 6]])
    out = ep.sglang_logical_count(totals, layers=[1, 3], num_layers=5)
    assert out == {"logical_count": [[0, 0, 0], [1, 2, 3], [0, 0, 0], [4, 5, 6], [0, 0, 0]]}
    with pytest.raises(ValueError, match="layer 3 is not below the model's 3 layers"):
        ep.sglang_logical_count(totals, layers=[1, 3], num_layers=3)
