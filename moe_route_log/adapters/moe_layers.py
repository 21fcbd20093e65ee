"""Which modules of a model are MoE layers, read through one interface in every release.

vLLM 0.15.1 has one class, ``FusedMoE`` (``model_executor/layers/fused_moe/layer.py``):
it holds the router (``self.router``, l. 520-560), the routing settings
(``renormalize``, ``scoring_func``, ... l. 480-500), the quant method, the shared
experts, and routes in ``forward_impl`` (l. 1771-1925). From 0.24 on, ``FusedMoE``
is a factory (0.34.0 ``layer.py:93 FusedMoEFactory``) returning a ``MoERunner``
(``runner/moe_runner.py:233``): the runner holds the router, the shared experts, the
``moe_config`` and the output scale (``routed_scaling_factor`` when
``apply_routed_scale_to_output``, l. 411-429); the routing settings and the quant
method moved to its ``RoutedExperts`` (``routed_experts.py:132-164``), which routes
in ``MoERunner._apply_quant_method`` (l. 606-666).

``find`` tells the two apart by what a module has (no version strings); both views
answer the same questions, so nothing else in the logger knows the release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class MoELayer:
    """One MoE layer of the model as the logger needs it, whatever the release."""

    module: torch.nn.Module  # FusedMoE (0.15.1) or MoERunner (0.24+)
    layer_id: int  # the decoder layer's index
    top_k: int
    num_experts: int  # logical experts (the model's own ids, without EPLB replicas)
    router: Any  # vLLM's router: select_experts (modular), _compute_routing (pure)
    settings: Any  # the object with renormalize, scoring_func, grouped top-k, ...
    quant_method: Any
    has_shared_experts: bool
    output_scale: float  # what the runner multiplies the routed output by (0.24+)
    eplb: bool  # select_experts returns physical (replica) ids
    gathered: bool  # naive dispatch: the layer routes every data-parallel rank's tokens
    chunked: bool  # 0.15.1's forward_impl_chunked (DP with all2all kernels)
    cpu_monolithic_0151: bool  # 0.15.1's CPU kernel: routes with cpu_fused_moe itself

    @property
    def monolithic(self) -> bool:
        """The kernel routes itself from the router logits (no top-k ids outside it)."""
        return bool(self.quant_method.is_monolithic)

    def route(self, hidden_states: torch.Tensor, router_logits: torch.Tensor):
        """(weights, ids) the layer routes to, computed without side effects: no EPLB
        mapping or load counts, logical ids. For monolithic kernels and EPLB."""
        if self.cpu_monolithic_0151:
            # 0.15.1 fused_moe/cpu_fused_moe.py select_experts: what its CPU kernels run
            from vllm.model_executor.layers.fused_moe.cpu_fused_moe import select_experts

            s = self.settings
            return select_experts(
                hidden_states=hidden_states,
                router_logits=router_logits,
                top_k=self.top_k,
                use_grouped_topk=s.use_grouped_topk,
                renormalize=s.renormalize,
                topk_group=s.topk_group,
                num_expert_group=s.num_expert_group,
                custom_routing_function=s.custom_routing_function,
                scoring_func=s.scoring_func,
                routed_scaling_factor=s.routed_scaling_factor,
                e_score_correction_bias=s.e_score_correction_bias,
            )
        # router/base_router.py BaseRouter._compute_routing: the pure part of
        # select_experts (0.15.1 and 0.34.0 alike); the class's own, never a tap
        compute = type(self.router)._compute_routing
        return compute(self.router, hidden_states, router_logits, None)


def find(model: torch.nn.Module) -> dict[int, MoELayer]:
    """Every MoE layer of ``model`` (this pipeline stage's), by decoder layer index."""
    layers = {}
    for module in model.modules():
        layer = view(module)
        if layer is not None:
            layers[layer.layer_id] = layer
    return layers


def view(module: torch.nn.Module) -> MoELayer | None:
    """``module`` as an MoE layer, or None when it is not one."""
    if _is_runner(module):
        return _runner_view(module)
    if _is_fused_moe(module):
        return _fused_moe_view(module)
    return None


def _is_runner(module) -> bool:
    # 0.24+ runner/moe_runner.py MoERunner: router, routed_experts, moe_config
    return all(hasattr(module, a) for a in ("router", "routed_experts", "moe_config"))


def _is_fused_moe(module) -> bool:
    # 0.15.1 layer.py FusedMoE: router, quant_method, forward_impl, logical_num_experts
    needs = ("router", "quant_method", "forward_impl", "logical_num_experts")
    return all(hasattr(module, a) for a in needs)


def _runner_view(runner) -> MoELayer:
    experts = runner.routed_experts
    config = runner.moe_config
    return MoELayer(
        module=runner,
        layer_id=runner.layer_id,
        top_k=config.experts_per_token,
        num_experts=config.num_logical_experts,
        router=runner.router,
        settings=experts,
        quant_method=experts.quant_method,
        has_shared_experts=runner.shared_experts is not None,
        output_scale=float(getattr(runner, "routed_scaling_factor", 1.0) or 1.0),
        eplb=getattr(runner.router, "eplb_state", None) is not None,
        gathered=bool(runner.do_naive_dispatch_combine),
        chunked=False,
        cpu_monolithic_0151=False,
    )


def _fused_moe_view(layer) -> MoELayer:
    from vllm.platforms import current_platform

    # layer.py:1793: naive dispatch gathers every DP rank's tokens before routing
    modular = type(layer.quant_method).__name__ == "FusedMoEModularMethod"
    return MoELayer(
        module=layer,
        layer_id=layer.layer_id,
        top_k=layer.top_k,
        num_experts=layer.logical_num_experts,
        router=layer.router,
        settings=layer,
        quant_method=layer.quant_method,
        has_shared_experts=layer.shared_experts is not None,
        output_scale=1.0,
        eplb=bool(layer.enable_eplb),
        gathered=layer.dp_size > 1 and not modular,
        chunked=bool(layer.use_dp_chunking),
        cpu_monolithic_0151=bool(current_platform.is_cpu() and layer.quant_method.is_monolithic),
    )
