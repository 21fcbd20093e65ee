"""The README and --help texts stay true: env table, every option explained, ruff clean,
every import of the project's own modules names one that exists."""

import ast
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


PACKAGES = ("moe_profiler", "moe_route_log")


def _own_modules_imported(source: str) -> set[str]:
    """The project's modules ``source`` imports, at the top or inside functions."""
    named = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            named.add(node.module)
    return {name for name in named if name.split(".")[0] in PACKAGES}


def test_every_import_of_the_projects_modules_names_one_that_exists():
    """An import inside a function runs only when it is called (the benches' main), so a
    moved module leaves it broken where neither ruff nor the other tests look."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(tracked) > 100, tracked
    missing = []
    for name in tracked:
        for module in _own_modules_imported((REPO / name).read_text()):
            path = REPO.joinpath(*module.split("."))
            if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
                missing.append(f"{name}: {module}")
    assert missing == []
