"""moe_route_log/routing.py: the header's routing object and the factor the logged weights get."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moe_route_log import routing
from moe_route_log.adapters.moe_layers import MoELayer


class DeepseekV2MoE(SimpleNamespace):  # named like vLLM's block: applies the factor itself
    pass


class ExaoneMoeSparseMoeBlock(SimpleNamespace):  # passes its factor to FusedMoE instead
    pass


class GroupedTopKRouter:
    pass


class RoutingSimulatorRouter:
    pass


class Fp8MoEMethod:
    def __init__(self, monolithic: bool) -> None:
        self.is_monolithic = monolithic


def layer(
    router=GroupedTopKRouter, monolithic=False, shared_experts=True, output_scale=1.0, **settings
) -> MoELayer:
    """An MoE layer view (adapters/moe_layers.py) with these routing settings."""
    defaults = {
        "custom_routing_function": None,
        "scoring_func": "sigmoid",
        "renormalize": True,
        "use_grouped_topk": True,
        "num_expert_group": 8,
        "topk_group": 4,
        "e_score_correction_bias": object(),
        "routed_scaling_factor": 1.0,
        "apply_router_weight_on_input": False,
    }
    return MoELayer(
        module=None,
        layer_id=0,
        top_k=8,
        num_experts=256,
        router=router(),
        settings=SimpleNamespace(**{**defaults, **settings}),
        quant_method=Fp8MoEMethod(monolithic),
        has_shared_experts=shared_experts,
        output_scale=output_scale,
        eplb=False,
        gathered=False,
        chunked=False,
        cpu_monolithic_0151=False,
    )


def test_deepseek_v3_header_and_scale():
    moe, block = layer(), DeepseekV2MoE(routed_scaling_factor=2.5)
    assert routing.weight_scale(moe, block) == 2.5
    assert routing.describe(moe, block) == {
        "router": "GroupedTopKRouter",
        "scoring_func": "sigmoid",
        "custom_routing_function": None,
        "renormalize": True,
        "grouped_topk": {"num_expert_group": 8, "topk_group": 4},
        "e_score_correction_bias": True,
        "routed_scaling_factor": 2.5,
        "scaling_applied_by": (
            "the model (DeepseekV2MoE multiplies FusedMoE's output); the logged weights include it"
        ),
        "weights_multiply": "expert outputs",
        "shared_experts": True,
        "quant_method": "Fp8MoEMethod",
        "monolithic_kernel": False,
    }


def test_factor_inside_fusedmoe_is_not_applied_twice():
    aiter = layer(routed_scaling_factor=2.5)  # ROCm aiter: vLLM's router applies it
    assert routing.weight_scale(aiter, DeepseekV2MoE(routed_scaling_factor=2.5)) == 1.0
    described = routing.describe(aiter, DeepseekV2MoE(routed_scaling_factor=2.5))
    assert described["routed_scaling_factor"] == 2.5
    assert described["scaling_applied_by"] == "vLLM's router (in the top-k weights)"
    exaone = layer(routed_scaling_factor=2.5)
    assert routing.weight_scale(exaone, ExaoneMoeSparseMoeBlock(routed_scaling_factor=2.5)) == 1.0
    assert routing.weight_scale(layer(), None) == 1.0


def test_the_factor_vllms_runner_applies_to_the_output_is_in_the_weights_once():
    """vLLM 0.24+: DeepSeek passes its factor to the MoE runner, which scales the routed
    output (apply_routed_scale_to_output); the block no longer does, and the router not."""
    runner = layer(output_scale=2.5)
    block = DeepseekV2MoE(routed_scaling_factor=2.5)
    assert routing.weight_scale(runner, block) == 2.5
    described = routing.describe(runner, block)
    assert described["routed_scaling_factor"] == 2.5
    assert described["scaling_applied_by"] == (
        "vLLM's MoE runner (multiplies the routed output); the logged weights include it"
    )


def test_llama4_custom_routing_on_the_expert_input():
    def custom_routing_function(hidden_states, gating_output, topk, renormalize):
        raise AssertionError("not called")

    moe = layer(
        custom_routing_function=custom_routing_function,
        apply_router_weight_on_input=True,
        use_grouped_topk=False,
        e_score_correction_bias=None,
        shared_experts=False,
    )
    described = routing.describe(moe, None)
    assert described["scoring_func"] is None and described["grouped_topk"] is None
    assert described["custom_routing_function"].endswith("custom_routing_function")
    assert described["weights_multiply"] == "expert inputs"


@pytest.mark.parametrize(
    ("router", "monolithic", "on_cpu", "refused"),
    [
        (RoutingSimulatorRouter, True, False, True),
        (RoutingSimulatorRouter, False, False, False),  # routes come from the router: logged
        (RoutingSimulatorRouter, True, True, False),  # CPU: logger and kernel route alike
        (GroupedTopKRouter, True, False, False),
    ],
)
def test_simulated_routing_with_a_monolithic_kernel_is_refused(router, monolithic, on_cpu, refused):
    why = routing.unsupported(layer(router=router, monolithic=monolithic), on_cpu=on_cpu)
    assert (why is not None) == refused
    if refused:
        assert why.startswith("VLLM_MOE_ROUTING_SIMULATION_STRATEGY with a monolithic MoE kernel")
