"""`pip install '.[analysis]'` in a fresh virtual environment: the analysis without vLLM.

Slow (a minute or two: pyarrow, matplotlib and numpy come from PyPI) and needs
PyPI, as CI has. It installs a copy of the checkout, checks that neither vLLM nor
torch came along, and runs the `moe-profiler` entry point (plot and export) on a
small log.
"""

import json
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import distinct_ids, write_log

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.install


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{args}\n{out.stdout}\n{out.stderr}"
    return out


def test_analysis_installs_and_runs_without_vllm(tmp_path):
    source = tmp_path / "src"
    files = run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in files.stdout.splitlines():  # what a clone has, nothing built here
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin/python"
    run(str(python), "-m", "pip", "install", "-q", f"{source}[analysis]")
    for module in ("vllm", "torch"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} came with the analysis install"
    rng = np.random.default_rng(3)
    steps = [distinct_ids(rng, n, 2, 2, 8) for n in (4, 3)]
    log = write_log(tmp_path / "work/moe_routes.jsonl", steps)
    tool = env_dir / "bin/moe-profiler"
    work = tmp_path / "work"
    plot = run(str(tool), "plot", cwd=work)
    assert "1 file(s), ranks dp0-pp0-tp0: 14 route lines" in plot.stdout
    summary = json.loads((work / "expert_summary.json").read_text())
    ids = np.concatenate(steps)
    assert summary["layers"]["1"]["counts"] == np.bincount(ids[:, 1].ravel(), minlength=8).tolist()
    assert (work / "expert_hist.png").read_bytes().startswith(b"\x89PNG")
    run(str(tool), "export", str(log), "--out", str(work / "pq"), cwd=work)
    table = pq.read_table(work / "pq/moe_routes.parquet")
    assert table.column("experts").to_pylist() == ids.reshape(-1, 2).tolist()
    helped = run(str(tool), "--help")
    assert "plot" in helped.stdout and "export" in helped.stdout
