"""What a logged layer's ``weights`` mean: its routing, read from the MoE layer itself.

``describe`` gives the header's ``routing`` object. ``weight_scale`` is the factor
the recorder multiplies the router's top-k weights by, so that the logged weights are
what each chosen expert's output is multiplied by, also where the
``routed_scaling_factor`` is applied to the MoE layer's output instead of inside the
router: by the model's MoE block (0.15.1) or by vLLM's MoE runner (0.24 on). The
layer comes as an ``adapters.moe_layers.MoELayer`` view, whatever the release.
"""

from __future__ import annotations

import torch

# vLLM 0.15.1 MoE blocks that build FusedMoE with routed_scaling_factor 1.0 and
# multiply its routed output by their own routed_scaling_factor (read from
# vllm/model_executor/models/: deepseek_v2.py, which also serves DeepSeek-V3 and
# Kimi-K2, glm4_moe.py, dots1.py, bailing_moe.py, kimi_linear.py, lfm2_moe.py,
# nemotron_h.py, openpangu.py). Other models pass their factor to FusedMoE, whose
# router then includes it in the top-k weights (exaone_moe.py, step3p5.py, ...).
SCALED_BY_THE_BLOCK = frozenset(
    {
        "DeepseekV2MoE",
        "Glm4MoE",
        "Dots1MoE",
        "BailingMoE",
        "KimiMoE",
        "Lfm2MoeSparseMoeBlock",
        "NemotronHMoE",
        "OpenPanguMoE",
    }
)


def moe_blocks(model: torch.nn.Module, layers) -> dict[int, torch.nn.Module]:
    """``id(MoE layer module)`` -> the module that holds it (the model's MoE block)."""
    ids = {id(layer.module) for layer in layers}
    return {
        id(child): module
        for module in model.modules()
        for child in module.children()
        if id(child) in ids
    }


def weight_scale(layer, block: torch.nn.Module | None) -> float:
    """The factor applied to the layer's routed output outside the router (else 1)."""
    if layer.output_scale != 1.0:  # 0.24+: the runner scales the routed output itself
        return layer.output_scale
    if block is None or type(block).__name__ not in SCALED_BY_THE_BLOCK:
        return 1.0
    if layer.settings.routed_scaling_factor != 1.0:  # ROCm aiter: the router applies it
        return 1.0
    return float(getattr(block, "routed_scaling_factor", 1.0) or 1.0)


def describe(layer, block: torch.nn.Module | None) -> dict:
    """The header's ``routing``: how this layer picks experts and what ``weights`` hold."""
    scale = weight_scale(layer, block)
    s = layer.settings
    custom = s.custom_routing_function
    return {
        "router": type(layer.router).__name__,
        "scoring_func": None if custom is not None else s.scoring_func,
        "custom_routing_function": None if custom is None else custom.__qualname__,
        "renormalize": bool(s.renormalize),
        "grouped_topk": (
            {"num_expert_group": s.num_expert_group, "topk_group": s.topk_group}
            if s.use_grouped_topk
            else None
        ),
        "e_score_correction_bias": s.e_score_correction_bias is not None,
        "routed_scaling_factor": float(s.routed_scaling_factor) * scale,
        "scaling_applied_by": _scaling_applied_by(layer, block, scale),
        "weights_multiply": "expert inputs" if s.apply_router_weight_on_input else "expert outputs",
        "shared_experts": layer.has_shared_experts,
        "quant_method": type(layer.quant_method).__name__,
        "monolithic_kernel": layer.monolithic,
    }


def unsupported(layer, on_cpu: bool) -> str | None:
    """Why this layer's routes cannot be logged as the kernel uses them (None: they can)."""
    simulated = type(layer.router).__name__ == "RoutingSimulatorRouter"
    if simulated and layer.monolithic and not on_cpu:
        return (
            "VLLM_MOE_ROUTING_SIMULATION_STRATEGY with a monolithic MoE kernel "
            f"({type(layer.quant_method).__name__}): the kernel routes on the router "
            "logits itself, so the simulated routes the logger would compute are not the "
            "ones used"
        )
    return None


def _scaling_applied_by(layer, block, scale: float) -> str | None:
    if layer.output_scale != 1.0:
        return "vLLM's MoE runner (multiplies the routed output); the logged weights include it"
    if scale != 1.0:
        return (
            f"the model ({type(block).__name__} multiplies FusedMoE's output); "
            "the logged weights include it"
        )
    if layer.settings.routed_scaling_factor != 1.0:
        return "vLLM's router (in the top-k weights)"
    return None
