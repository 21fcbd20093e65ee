"""Load split into prefill and decode (moe_profiler/analysis/load.py)."""

import numpy as np
import pytest
from helpers import route_block, write_log

from moe_profiler.analysis.load import PhaseLoad
from moe_profiler.columns import DECODE, PREFILL, UNKNOWN_PHASE
from moe_profiler.routes import LogFile, iter_blocks, read_header

P, D, U = PREFILL, DECODE, UNKNOWN_PHASE


def test_counts_weights_and_tokens_per_phase():
    load = PhaseLoad([0, 3], num_experts=4)
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
    load = PhaseLoad([0], 4)
    for block in iter_blocks([log]):
        load.add(block)
    phases = load.result()["prefill_decode"]["0"]
    # prefill: request a pos 0-3 (rows 0-3), request b pos 3 (row 0)
    assert phases["prefill"]["tokens"] == 5 and phases["prefill"]["counts"] == [3, 3, 2, 2]
    # decode: request a pos 4-5 (rows 4-5), request b pos 4 (row 1)
    assert phases["decode"]["tokens"] == 3 and phases["decode"]["counts"] == [1, 2, 2, 1]
