"""The arithmetic of bench/overhead_bench.py (its GPU runs are recorded in the README)."""

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import overhead_bench


def test_turns_rotate_and_reverse():
    configs = ["a", "b", "c"]
    orders = [overhead_bench.turn_order(configs, rep) for rep in range(6)]
    assert orders == [
        ["a", "b", "c"],
        ["a", "c", "b"],
        ["c", "a", "b"],
        ["c", "b", "a"],
        ["b", "c", "a"],
        ["b", "a", "c"],
    ]
    for i, config in enumerate(configs):  # over 6 reps each engine runs in every position twice
        assert sorted(order.index(config) for order in orders) == [0, 0, 1, 1, 2, 2], i


def test_ratios_are_paired_by_rep_with_a_bootstrap_interval():
    runs = {"off": [100.0, 200.0, 100.0, 200.0, 100.0, 200.0], "all": [99, 198, 98, 196, 97, 194]}
    c = overhead_bench.compare(runs, "all", "off")
    assert c["baseline"] == "off" and c["per_rep"] == [0.99, 0.99, 0.98, 0.98, 0.97, 0.97]
    assert c["median"] == pytest.approx(0.98)
    low, high = c["ci95"]
    assert 0.97 <= low <= 0.98 <= high <= 0.99
    # the unpaired ratio of medians would mix the fast and slow reps' machine states
    assert statistics.median(runs["all"]) / statistics.median(runs["off"]) != c["median"]
    assert overhead_bench.compare({"all": [1.0]}, "all", "off") is None  # no baseline ran


def test_logging_off_is_compared_with_vllm_without_the_logger_of_either_kind():
    assert overhead_bench.baseline("off", ["unpatched", "off", "all"]) == "unpatched"
    assert overhead_bench.baseline("off", ["unplugged", "off", "r3"]) == "unplugged"
    assert overhead_bench.baseline("off", ["off", "all"]) is None
    assert overhead_bench.baseline("r3", ["unplugged", "off", "r3"]) == "off"
    assert overhead_bench.LLM_ARGS["r3"] == {"enable_return_routed_experts": True}


def test_identical_runs_have_a_degenerate_interval():
    median, low, high = overhead_bench.median_ci([1.0] * 6)
    assert (median, low, high) == (1.0, 1.0, 1.0)


def test_table_rows_and_checks():
    result = {
        "model": "olmoe",
        "parts": [
            {"config": "off", "tok_s": [100.0, 100.0]},
            {
                "config": "counts",
                "tok_s": [99.0, 100.0],
                "check": {
                    "mode": "counts",
                    "exact": True,
                    "logged_tokens": 1234,
                    "expected_tokens": 1234,
                    "engine_waits": 0,
                },
            },
        ],
    }
    result["comparisons"] = {
        "counts": overhead_bench.compare(
            {p["config"]: p["tok_s"] for p in result["parts"]}, "counts", "off"
        )
    }
    row = overhead_bench.table_rows(result)
    assert row.startswith("| olmoe | counts vs off | 2 | 100 | 100 | **0.9950** [")
    assert "exact: 1,234 tokens (counted tokens) of 1,234; engine waits 0 |" in row


def test_serve_bench_summary_pairs_reps_with_off():
    import serve_bench

    def runs(values):
        return [{"output_throughput": v} for v in values]

    summary = serve_bench.summarize(
        {"20.0": {"off": runs([100, 120, 110]), "counts": runs([99, 121, 110])}}
    )
    counts = summary["20.0"]["counts"]
    assert counts["per_rep"] == [0.99, 1.0083, 1.0] and counts["median_ratio"] == 1.0
    assert summary["20.0"]["off"] == {"output_tok_s": [100, 120, 110], "median_tok_s": 110}


def test_counts_graph_configuration_measures_the_in_graph_path():
    env, baseline = overhead_bench.CONFIGS["counts_graph"]
    assert baseline == "off" and env["VLLM_LOG_MOE_MODE"] == "counts"
    assert env["VLLM_LOG_MOE_COUNTS_IN_GRAPH"] == "1"
    check = {"mode": "counts", "exact": True, "logged_tokens": 5, "expected_tokens": 5}
    text = overhead_bench.check_text(
        {"check": {**check, "engine_waits": 0, "counts_path": "in_graph"}}
    )
    assert text.endswith("; counted in graph")


def test_a_log_with_tokens_run_twice_is_exact_by_its_distinct_tokens(tmp_path):
    """Preemption logs recomputed tokens again (a later step): the check counts each
    (request, position) of each layer once, and still notices a missing token."""
    import json

    source = Path(__file__).parent / "data" / "native" / "routes.jsonl"
    lines = source.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    layers = len(records[0]["layers"])
    route_records = [r for r in records if r["type"] == "route"]
    tokens = len(route_records) // layers
    first_step, last_step = route_records[0]["step"], route_records[-1]["step"]
    again = [
        json.dumps({**r, "step": last_step + 1}, separators=(",", ":"))
        for r in route_records
        if r["step"] == first_step
    ]
    assert again
    end = next(i for i, r in enumerate(records) if r["type"] == "end")
    log = tmp_path / "preempted.jsonl"
    log.write_text("\n".join(lines[:end] + again + lines[end:]) + "\n")

    assert overhead_bench.distinct_tokens(log, tokens, layers) == {
        "distinct_tokens_per_layer": [tokens],
        "distinct_exact": True,
    }
    assert overhead_bench.distinct_tokens(log, tokens + 1, layers)["distinct_exact"] is False
