"""Shared fixtures: paths, the GSM8K questions, the overlay package importable without vLLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import vllm_under_test

REPO = Path(__file__).resolve().parent.parent
GSM8K = REPO.parent / "shared/data/gsm8k/test.jsonl"

# moe_route_log (the logger) and moe_profiler (the toolkit) import from the repo.
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, questions) -> Path:
    """A random-weight Qwen2MoeForCausalLM (safetensors) with a tokenizer made locally."""
    import e2e_helpers

    from moe_profiler.running.local_models import build_tiny_moe

    return build_tiny_moe(
        tmp_path_factory.mktemp("tiny-moe"),
        questions[:400],
        num_layers=e2e_helpers.NUM_LAYERS,
        num_experts=e2e_helpers.NUM_EXPERTS,
        top_k=e2e_helpers.TOP_K,
    )


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """This project pip-installed into a folder of its own: the vLLM plugin as users get it."""
    return vllm_under_test.install_plugin(tmp_path_factory.mktemp("plugin-site"))


@pytest.fixture(scope="session")
def pristine_vllm(tmp_path_factory) -> Path:
    """(vLLM 0.15.1) A pristine copy of the environment's vLLM, to put first on an engine's
    PYTHONPATH: the environment's own copy is patched."""
    if not vllm_under_test.patch_release():
        pytest.skip(f"the patch is for vLLM {vllm_under_test.PATCH_RELEASE} only")
    target = tmp_path_factory.mktemp("pristine-vllm")
    return vllm_under_test.unpack_pristine_vllm(vllm_under_test.cached_wheel(), target)


@pytest.fixture(scope="session")
def patched(request):
    """The logger in the engines the tests start: in vLLM 0.15.1 the environment's vLLM
    patched by apply_hook.py (re-applied afterwards); in later releases the plugin,
    pip-installed into a folder the engines find first on their PYTHONPATH."""
    import e2e_helpers

    if not vllm_under_test.patch_release():
        e2e_helpers.ENGINE_PATHS[:] = [str(request.getfixturevalue("plugin_site"))]
        yield
        e2e_helpers.ENGINE_PATHS.clear()
        return
    out = subprocess.run(
        [sys.executable, "apply_hook.py"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    yield
    subprocess.run([sys.executable, "apply_hook.py"], cwd=REPO, check=True, capture_output=True)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, questions) -> dict[str, Path]:
    """Every tiny MoE family of moe_profiler/verification/tiny_families.py, saved through
    transformers."""
    from moe_profiler.verification import tiny_families

    out = tmp_path_factory.mktemp("families")
    return {
        name: tiny_families.build(family, out / name, questions[:400])
        for name, family in tiny_families.FAMILIES.items()
    }
