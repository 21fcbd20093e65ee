"""The README and --help texts stay true: env table, every option explained, ruff clean."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe_route_log import envs

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [
    "apply_hook.py",
    "make_prompts.py",
    "run_generate.py",
    "plot_experts.py",
    "analyze_routes.py",
    "tools/make_patch.py",
    "tools/compare_engine_logs.py",
    "tools/hf_route_log.py",
    "tools/report_screenshots.py",
    "bench/gpu_bench.py",
    "bench/end_step_bench.py",
    "bench/family_bench.py",
    "bench/parse_bench.py",
    "bench/report_bench.py",
    "bench/reader_alternatives.py",
    "bench/native_capture.py",
    "bench/plugin_smoke.py",
    "bench/dump_storm_bench.py",
]
COMMANDS = [["-m", "moe_profiler.cli"], ["-m", "moe_profiler.cli", "plot"]]
COMMANDS += [["-m", "moe_profiler.cli", "export"], ["-m", "moe_profiler.cli", "analyze"]]


def test_readme_env_table_is_envs_py():
    """The README shows envs.ENV_VARS as envs.readme_table() writes it, row for row."""
    assert envs.readme_table() in (REPO / "README.md").read_text()


@pytest.mark.parametrize("script", SCRIPTS + COMMANDS)
def test_help_explains_every_option(script):
    command = script if isinstance(script, list) else [script]
    out = subprocess.run(
        [sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    options = re.findall(r"^  (-{1,2}[\w-]+)(?:[ ,]|$)", text, flags=re.M)
    assert options, text
    blocks = re.split(r"\n(?=  -)", text)
    for block in blocks[1:]:
        head = block.split("\n")[0]
        described = len(head.split("  ")) > 2 or "\n" in block.strip()
        assert described, f"{script}: option without help: {head!r}"


def test_test_sh_has_usage_and_smoke():
    text = (REPO / "test.sh").read_text()
    assert "./test.sh --smoke" in text and "set -euo pipefail" in text


def test_ruff_clean():
    beside_python = Path(sys.executable).parent / "ruff"
    ruff = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is in requirements-test.txt)")
    check = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
