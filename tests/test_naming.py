"""One file per logging process (naming.py), and merging files from several hosts."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import distinct_ids, write_log

from moe_profiler.analysis import usage_summary
from moe_profiler.reading import routes
from moe_route_log.naming import rank_log_path

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dp_size, pp_size", [(1, 1)])
def test_single_process_keeps_the_given_path(dp_size, pp_size):
    assert (
        rank_log_path("/x/moe_routes.jsonl", 0, dp_size, 0, pp_size, "h") == "/x/moe_routes.jsonl"
    )


def test_ranked_names_are_unique_and_deterministic():
    names = {
        rank_log_path("/x/moe_routes.jsonl", dp, 2, pp, 2, host)
        for dp in range(2)
        for pp in range(2)
        for host in ("node-a", "node-b")
    }
    assert len(names) == 8
    assert (
        rank_log_path("/x/moe_routes.jsonl", 1, 2, 0, 1, "gpu-07")
        == "/x/moe_routes.gpu-07.dp1-pp0.jsonl"
    )
    assert (
        rank_log_path("/x/moe_routes.jsonl", 0, 1, 1, 2, "gpu-07")
        == "/x/moe_routes.gpu-07.dp0-pp1.jsonl"
    )
    # dots and odd characters of a hostname cannot break the name's fields apart
    assert (
        rank_log_path("/x/r.jsonl", 0, 2, 0, 1, "n1.cluster local")
        == "/x/r.n1_cluster_local.dp0-pp0.jsonl"
    )
    assert rank_log_path("/x/noext", 3, 4, 0, 1, "h") == "/x/noext.h.dp3-pp0"


def test_files_from_two_simulated_hosts_merge(tmp_path):
    """A 2-node pipeline-parallel run: each node wrote its stage's layers; files gathered here."""
    rng = np.random.default_rng(0)
    stage0 = distinct_ids(rng, 6, 2, 2, 8)
    stage1 = distinct_ids(rng, 6, 2, 2, 8)
    for host, pp, layers, ids in (("nodeA", 0, (0, 1), stage0), ("nodeB", 1, (2, 3), stage1)):
        path = Path(rank_log_path(str(tmp_path / "moe.jsonl"), 0, 1, pp, 2, host))
        write_log(
            path,
            [ids],
            layers=layers,
            hostname=host,
            ranks={"dp": 0, "pp": pp, "tp": 0, "dp_size": 1, "pp_size": 2},
        )
    found = routes.rank_files(tmp_path / "moe.jsonl")
    assert [p.name for p in found] == ["moe.nodeA.dp0-pp0.jsonl", "moe.nodeB.dp0-pp1.jsonl"]
    summary = usage_summary.summarize_expert_usage([str(tmp_path)], None, tmp_path / "s.json")
    assert summary["ranks"] == ["dp0-pp0-tp0", "dp0-pp1-tp0"]
    assert sorted(summary["layers"]) == ["0", "1", "2", "3"]
    for layer, (ids, col) in {"0": (stage0, 0), "3": (stage1, 1)}.items():
        expected = np.bincount(ids[:, col].ravel(), minlength=8).tolist()
        assert summary["layers"][layer]["counts"] == expected
    out = subprocess.run(
        [
            sys.executable,
            "plot_experts.py",
            str(tmp_path),
            "--out",
            str(tmp_path / "h.png"),
            "--summary",
            str(tmp_path / "s2.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 file(s), ranks dp0-pp0-tp0, dp0-pp1-tp0: 24 route lines")
