"""parallel_bench's arithmetic: tokens/s per workload and group, old result files, ratios."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import parallel_bench


def run(rep: int, workload: str | None, began: float, ended: float, tokens: int) -> dict:
    r = {"rep": rep, "began": began, "ended": ended, "tokens": tokens}
    return r if workload is None else r | {"workload": workload}


def test_throughput_per_workload_group_and_rep_over_the_span_of_all_dp_ranks():
    parts = [
        {
            "group": "off",
            "dp": 0,
            "runs": [run(1, "gsm8k", 0, 10, 1000), run(1, "seed", 20, 21, 50)],
        },
        {
            "group": "off",
            "dp": 1,
            "runs": [run(1, "gsm8k", 1, 12, 1400), run(1, "seed", 20, 22, 50)],
        },
        {
            "group": "all",
            "dp": 0,
            "runs": [run(1, "gsm8k", 30, 40, 800), run(2, "gsm8k", 50, 54, 400)],
        },
        {"group": "all", "dp": 1, "error": "RuntimeError()"},
    ]
    assert parallel_bench.throughput(parts) == {
        "gsm8k": {"all": [80.0, 100.0], "off": [200.0]},  # (1000 + 1400) / (12 - 0)
        "seed": {"off": [50.0]},
    }


def test_runs_without_a_workload_name_are_gsm8k_and_old_files_read_as_gsm8k():
    parts = [{"group": "off", "runs": [run(1, None, 0, 4, 100)]}]
    assert parallel_bench.throughput(parts) == {"gsm8k": {"off": [25.0]}}
    old = {"throughput": {"off": [1.0], "all": [2.0]}}
    assert parallel_bench.by_workload(old) == {"gsm8k": {"off": [1.0], "all": [2.0]}}
    new = {"throughput": {"seed": {"off": [1.0]}}}
    assert parallel_bench.by_workload(new) == {"seed": {"off": [1.0]}}


def test_ratios_are_median_over_median_and_one_per_rep():
    ratio, per_rep = parallel_bench.ratios(
        {"off": [100.0, 200.0, 400.0], "all": [90.0, 220.0, 100.0]}
    )
    assert ratio == pytest.approx(100.0 / 200.0)
    assert per_rep == pytest.approx([0.9, 1.1, 0.25])
    # a group that lost a rep: which one is unknown, so no per-rep pairs
    assert parallel_bench.ratios({"off": [1.0, 2.0], "all": [3.0]}) == (2.0, [])


def test_table_of_the_recorded_h100_run_shows_both_workloads(tmp_path):
    source = REPO / "bench/results/h100-2026-11-27-w4/overhead-layers-all/single.json"
    (tmp_path / "single.json").write_text(source.read_text())
    recorded = json.loads(source.read_text())["throughput"]
    text = parallel_bench.table(argparse.Namespace(dir=tmp_path))
    rows = [line for line in text.splitlines() if line.startswith("| single |")]
    assert [row.split(" | ")[1] for row in rows] == sorted(recorded)
    assert "NVIDIA H100 80GB HBM3" in text
