"""Every MoE family the CPU build of vLLM 0.15.1 runs, checked against transformers; on
later releases (the plugin) two of them: OLMoE (softmax top-k) and DeepSeek-V3 (sigmoid,
grouped top-k, a score bias and a scaling factor applied by vLLM's MoE runner).

One engine per family (a tiny random-weight model saved through transformers,
moe_profiler/verification/tiny_families.py), shared by the checks of that family: the header
names the layers and the routing, every token has one line per logged layer, and
the prompt routes equal transformers' own forward pass (tests/hf_reference.py:
the factor each expert's output is multiplied by), ids and weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import REPO, assert_one_line_per_token_and_layer, engine, read_log
from hf_reference import dense_routes, top_k
from vllm_under_test import patch_release

from moe_profiler.reading import routes
from moe_profiler.verification import oracle, tiny_families
from moe_profiler.verification.tiny_families import FAMILIES

pytestmark = pytest.mark.e2e

CPU_FAMILIES = [name for name, f in FAMILIES.items() if f.cpu_unsupported is None]
RUN_FAMILIES = CPU_FAMILIES if patch_release() else ["olmoe", "deepseek_v3"]
FIRST_MOE_LAYER = "default (VLLM_LOG_MOE_LAYER unset): the model's first MoE layer"

# What the CPU build needs to run a family (none of it touches routing):
# - DeepSeek's latent attention (MLA) has no CPU backend ("MLA is not supported on
#   CPU."): VLLM_MLA_DISABLE=1 runs it unabsorbed. In eager mode its rotary custom
#   op mishandles the 3-D query of that path (only the native one is right), so it
#   is turned off; under torch.compile vLLM uses the native one anyway.
# - gpt-oss: the CPU attention kernel reads the sinks as bfloat16 only
#   (tests/cpu_sinks_fix hands them over in bfloat16; the model stays float32).
UNABSORBED_MLA = {"env": {"VLLM_MLA_DISABLE": "1"}}
NATIVE_ROPE = {"compilation_config": {"custom_ops": ["-rotary_embedding"]}}
CPU_SETUP = {
    "qwen3_moe": {"layers": "3,1"},  # MoE layers 1 and 3 of 4, as a list
    "deepseek_v2": {**UNABSORBED_MLA, "llm": NATIVE_ROPE, "layers": None},  # the default
    "deepseek_v3": {**UNABSORBED_MLA, "eager": False},  # torch.compile, vLLM's default
    "kimi_k2": {**UNABSORBED_MLA, "llm": NATIVE_ROPE},
    "gpt_oss": {"env": {"PYTHONPATH": f"{REPO / 'tests/cpu_sinks_fix'}:{REPO}"}},
}

SOFTMAX_TOP_K = {
    "router": "FusedTopKRouter",
    "scoring_func": "softmax",
    "custom_routing_function": None,
    "renormalize": False,
    "grouped_topk": None,
    "e_score_correction_bias": False,
    "routed_scaling_factor": 1.0,
    "scaling_applied_by": None,
    "weights_multiply": "expert outputs",
    "shared_experts": False,
    "quant_method": "UnquantizedFusedMoEMethod",
    "monolithic_kernel": True,  # the CPU build's MoE kernel routes inside
}
SIGMOID_GROUPED = {
    **SOFTMAX_TOP_K,
    "router": "GroupedTopKRouter",
    "scoring_func": "sigmoid",
    "renormalize": True,
    "grouped_topk": {"num_expert_group": 1, "topk_group": 1},
    "e_score_correction_bias": True,
    "shared_experts": True,
}
DEEPSEEK_SCALING = (
    "the model (DeepseekV2MoE multiplies FusedMoE's output); the logged weights include it"
)
EXPECTED_ROUTING = {
    "mixtral": {**SOFTMAX_TOP_K, "renormalize": True},
    "qwen3_moe": {**SOFTMAX_TOP_K, "renormalize": True},
    "olmoe": SOFTMAX_TOP_K,
    "deepseek_v2": {
        **SOFTMAX_TOP_K,
        "router": "GroupedTopKRouter",
        "grouped_topk": {"num_expert_group": 4, "topk_group": 2},
        "routed_scaling_factor": 16.0,
        "scaling_applied_by": DEEPSEEK_SCALING,
        "shared_experts": True,
    },
    "deepseek_v3": {
        **SIGMOID_GROUPED,
        "grouped_topk": {"num_expert_group": 4, "topk_group": 2},
        "routed_scaling_factor": 2.5,
        "scaling_applied_by": DEEPSEEK_SCALING,
    },
    "kimi_k2": {
        **SIGMOID_GROUPED,
        "routed_scaling_factor": 2.827,
        "scaling_applied_by": DEEPSEEK_SCALING,
    },
    "glm4_moe": {
        **SIGMOID_GROUPED,
        "routed_scaling_factor": 2.5,
        "scaling_applied_by": (
            "the model (Glm4MoE multiplies FusedMoE's output); the logged weights include it"
        ),
    },
    "gpt_oss": {**SOFTMAX_TOP_K, "renormalize": True},
}


@dataclass
class FamilyRun:
    family: tiny_families.Family
    model: Path
    records: list[dict]
    log: routes.LogFile
    got: list[routes.Route]


def expected_routing(name: str) -> dict:
    """The header's routing on this release's CPU build: from 0.24 on every family routes
    through CPURouter outside the (modular) kernel, and DeepSeek's factor is applied by
    vLLM's MoE runner instead of the model's block."""
    expected = EXPECTED_ROUTING[name]
    if patch_release():
        return expected
    expected = {**expected, "router": "CPURouter", "monolithic_kernel": False}
    if expected["scaling_applied_by"] == DEEPSEEK_SCALING:
        expected["scaling_applied_by"] = (
            "vLLM's MoE runner (multiplies the routed output); the logged weights include it"
        )
    return expected


@pytest.fixture(scope="module", params=RUN_FAMILIES)
def family_run(request, family_models, questions, tmp_path_factory, patched) -> FamilyRun:
    """One engine per family: vLLM's defaults but eager (except DeepSeek-V3), all layers."""
    family, setup = FAMILIES[request.param], CPU_SETUP.get(request.param, {})
    tmp = tmp_path_factory.mktemp(family.name)
    log = tmp / "moe.jsonl"
    env = {"VLLM_LOG_MOE": str(log), **setup.get("env", {})}
    if setup.get("layers", "all") is not None:
        env["VLLM_LOG_MOE_LAYER"] = setup.get("layers", "all")
    spec = {
        "model": str(family_models[family.name]),
        "prompts": questions[:8],
        "max_tokens": 8,
        "eager": setup.get("eager", True),
        "llm": setup.get("llm", {}),
    }
    records, proc = engine(tmp, spec, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_file, got = read_log(log)
    return FamilyRun(family, family_models[family.name], records, log_file, got)


def logged_layers(run: FamilyRun) -> list[int]:
    """VLLM_LOG_MOE_LAYER's layers: unset the first MoE layer, 'all' every one, or a list."""
    spec = CPU_SETUP.get(run.family.name, {}).get("layers", "all")
    if spec is None:
        return [run.family.moe_layers[0]]
    if spec == "all":
        return list(run.family.moe_layers)
    return sorted(int(layer) for layer in spec.split(","))


def layer_choice(run: FamilyRun) -> str:
    spec = CPU_SETUP.get(run.family.name, {}).get("layers", "all")
    return FIRST_MOE_LAYER if spec is None else f"VLLM_LOG_MOE_LAYER={spec!r}"


@pytest.mark.every_release
def test_header_names_the_layers_and_the_routing(family_run):
    header, family = family_run.log.header, family_run.family
    assert header["layers"] == logged_layers(family_run)
    assert header["moe_layers"] == list(family.moe_layers)
    assert header["layer_choice"] == layer_choice(family_run)
    assert (header["num_experts"], header["top_k"]) == (family.num_experts, family.top_k)
    assert header["routing"] == expected_routing(family.name)


@pytest.mark.every_release
def test_every_token_once_per_logged_layer(family_run):
    layers = logged_layers(family_run)
    family = family_run.family
    assert_one_line_per_token_and_layer(
        family_run.records, family_run.got, layers, family.top_k, family.num_experts
    )


@pytest.mark.every_release
def test_prompt_routes_equal_transformers(family_run):
    """Ids as sets on >= 99 % of prompt (token, layer) pairs; weights equal where ids are."""
    family, layers = family_run.family, logged_layers(family_run)
    prompts = {r["request_id"]: r["prompt_token_ids"] for r in family_run.records}
    dense = dense_routes(family_run.model, prompts, family.num_experts)
    columns = [family.moe_layers.index(layer) for layer in layers]
    dense = {request: d[:, columns] for request, d in dense.items()}
    reference = {request: top_k(d, family.top_k) for request, d in dense.items()}
    result = oracle.compare([family_run.log], reference, layers)
    assert result.missing == 0 and result.duplicates == 0
    assert result.pairs == sum(len(p) for p in prompts.values()) * len(layers)
    assert result.agreement >= 0.99, result.as_dict()
    compared = close = 0
    for route in family_run.got:
        ref = dense[route.request]
        if route.pos >= len(ref):
            continue  # a generated token: transformers saw the prompt only
        want = ref[route.pos, layers.index(route.layer)]
        if set(np.flatnonzero(want)) == set(route.experts):
            compared += 1
            close += all(
                abs(w - want[e]) <= 1e-6 + 1e-5 * want[e]
                for e, w in zip(route.experts, route.weights, strict=True)
            )
    assert compared == result.identical and close / compared >= 0.99


@pytest.fixture(scope="module")
def dense_first_model(family_models) -> Path:
    return family_models["deepseek_v2"]


def test_an_explicit_dense_layer_is_refused_at_engine_start(dense_first_model, tmp_path, patched):
    env = {"VLLM_LOG_MOE": str(tmp_path / "moe.jsonl"), "VLLM_LOG_MOE_LAYER": "0,1"}
    env |= CPU_SETUP["deepseek_v2"]["env"]
    spec = {"model": str(dense_first_model), "prompts": ["x"], "max_tokens": 2, "eager": True}
    records, proc = engine(tmp_path, spec, env)
    assert proc.returncode != 0 and records is None
    assert (
        "VLLM_LOG_MOE_LAYER='0,1': layer 0 is not an MoE layer of this model; "
        "its MoE layers are 1-2"
    ) in proc.stderr


def test_llama4_does_not_run_on_the_cpu_build(family_models, tmp_path, patched):
    """Why the coverage matrix has no CPU row for Llama 4 (a vLLM limit, not the logger's)."""
    spec = {"model": str(family_models["llama4"]), "prompts": ["x"], "max_tokens": 2, "eager": True}
    records, proc = engine(tmp_path, spec, {"VLLM_LOG_MOE": str(tmp_path / "moe.jsonl")})
    assert proc.returncode != 0 and records is None
    assert "assert not apply_router_weight_on_input" in proc.stderr
    assert FAMILIES["llama4"].cpu_unsupported
