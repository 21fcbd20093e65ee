"""The bench-only fix of vLLM's routed-experts capture reaches processes started later."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

PROBE = (
    "from vllm.v1.worker.gpu_model_runner import GPUModelRunner as R; "
    "print(R.init_routed_experts_capturer.__name__)"
)


def run_probe(pythonpath: str) -> str:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_sitecustomize_wraps_the_model_runner_in_a_new_process():
    assert run_probe(str(REPO / "bench" / "capture_fix")) == "create_and_bind"


def test_without_it_vllm_is_untouched():
    assert run_probe(str(REPO)) == "init_routed_experts_capturer"
