"""plot_experts.py and the analysis behind it (moe_profiler/analysis/usage_summary.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import distinct_ids, write_log

from moe_profiler.analysis import usage_summary

REPO = Path(__file__).resolve().parent.parent


def plot(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, str(REPO / "plot_experts.py"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_summary_and_pictures(tmp_path):
    rng = np.random.default_rng(7)
    steps = [distinct_ids(rng, n, 3, 4, 16) for n in (50, 1, 20)]
    log = write_log(tmp_path / "moe.jsonl", steps, layers=(0, 4, 9), num_experts=16, top_k=4)
    out = plot(log, "--out", tmp_path / "h.png", "--summary", tmp_path / "s.json", "--layer", 4)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    all_ids = np.concatenate(steps)
    for col, layer in enumerate(("0", "4", "9")):
        counts = np.bincount(all_ids[:, col].ravel(), minlength=16)
        assert summary["layers"][layer]["counts"] == counts.tolist()
        assert summary["layers"][layer]["tokens"] == 71
        assert summary["layers"][layer]["mean_weight"] == [0.25 if c else 0.0 for c in counts]
    assert summary["route_lines"] == 71 * 3 and summary["complete"] is True
    assert summary["files"] == [str(log.resolve())]
    png = (tmp_path / "h.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # histogram + heatmap
    lines = out.stdout.splitlines()
    assert lines[0] == "1 file(s), ranks dp0-pp0-tp0: 213 route lines"
    assert [line.split()[0] for line in lines[2:5]] == ["0", "4", "9"]


def test_single_layer_gets_a_histogram_only(tmp_path):
    log = write_log(
        tmp_path / "one.jsonl", [distinct_ids(np.random.default_rng(1), 9, 1, 2, 8)], layers=(3,)
    )
    summary = usage_summary.summarize_expert_usage([str(log)], tmp_path / "h.png", None)
    assert list(summary["layers"]) == ["3"]
    assert (tmp_path / "h.png").stat().st_size > 5_000


def test_bad_lines_warn_or_fail_with_strict(tmp_path):
    log = write_log(
        tmp_path / "bad.jsonl", [distinct_ids(np.random.default_rng(2), 4, 2, 2, 8)], trailer=False
    )
    with open(log, "ab") as f:
        f.write(b'{"type":"route","step":9,"to')
    out = plot(log, "--out", tmp_path / "h.png", "--summary", tmp_path / "s.json")
    assert out.returncode == 0
    assert f"warning: {log.resolve()}:11: truncated last line (skipped)" in out.stderr
    assert "1 bad lines skipped (no end-of-log trailer: log incomplete?)" in out.stdout
    strict = plot(log, "--strict", "--out", tmp_path / "h2.png", "--summary", tmp_path / "s2.json")
    assert strict.returncode == 1
    assert f"plot_experts.py: {log.resolve()}:11: truncated last line" in strict.stderr
    assert not (tmp_path / "h2.png").exists()


def test_missing_log_and_unknown_layer(tmp_path):
    out = plot(tmp_path / "none.jsonl")
    assert out.returncode == 1 and "none.jsonl: no such file" in out.stderr
    log = write_log(tmp_path / "l.jsonl", [distinct_ids(np.random.default_rng(3), 2, 2, 2, 8)])
    out = plot(log, "--layer", 7, "--out", tmp_path / "h.png", "--summary", tmp_path / "s.json")
    assert out.returncode == 1 and "layer 7 is not in the logs (logged: [0, 1])" in out.stderr


def test_defaults_read_moe_routes_jsonl_in_the_working_directory(tmp_path):
    write_log(tmp_path / "moe_routes.jsonl", [distinct_ids(np.random.default_rng(4), 3, 2, 2, 8)])
    out = plot(cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "expert_hist.png").exists() and (tmp_path / "expert_summary.json").exists()
