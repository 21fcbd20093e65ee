"""Shared fixtures: paths, the GSM8K questions, the overlay package importable without vLLM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OVERLAY_PACKAGE_PARENT = REPO / "vllm_overlay/vllm/model_executor/layers/fused_moe"
GSM8K = REPO.parent / "shared/data/gsm8k/test.jsonl"

# The overlay's pure modules (envs, log_format, wire, writer, naming) import as
# `moe_route_log.*` from the repo, exactly as the writer process imports them.
sys.path.append(str(OVERLAY_PACKAGE_PARENT))
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    if not GSM8K.exists():
        pytest.fail(f"{GSM8K} is missing: the tests need the shared GSM8K test split")
    return GSM8K


@pytest.fixture(scope="session")
def questions(gsm8k_path) -> list[str]:
    with open(gsm8k_path, encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f if line.strip()]
