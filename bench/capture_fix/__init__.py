"""Turn on the bench-only fix of vLLM 0.15.1's routed-experts capture (see sitecustomize.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def enable() -> None:
    """Fix the capture in this process and in every process it starts from now on."""
    spec = importlib.util.spec_from_file_location("moe_capture_fix", HERE / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # installs the wrap
    path = os.environ.get("PYTHONPATH", "")
    if str(HERE) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), path) if p)
