"""Device side: each logged FusedMoE layer copies its routes into static buffers.

The copy is a few device ops on fixed addresses, so it is captured into CUDA
graphs and replayed with them: no host sync, no Python at replay. Rows beyond a
step's real tokens (graph padding) are written too and simply never read.

Under torch.compile without a custom-op boundary around the MoE layer (the CPU
build), the copy goes through the registered op ``vllm.moe_route_record``,
which declares that it writes the buffers, so Dynamo keeps it in the graph.
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context
from vllm.platforms import current_platform
from vllm.utils.torch_utils import direct_register_custom_op


class RouteBuffers:
    """Expert ids and weights of one forward pass: ``[rows, layers, top_k]``."""

    def __init__(self, rows: int, num_layers: int, top_k: int, device: torch.device):
        shape = (rows, num_layers, top_k)
        self.expert_ids = torch.zeros(shape, dtype=torch.int32, device=device)
        self.weights = torch.zeros(shape, dtype=torch.float32, device=device)


def store_routes(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    ids_buffer: torch.Tensor,
    weights_buffer: torch.Tensor,
    slot: int,
    row_offset: int,
    gathered_dp_rank: int,
) -> None:
    """Copy one layer's routes into buffer column ``slot`` from ``row_offset`` on.

    ``gathered_dp_rank`` >= 0: the rows are every data-parallel rank's tokens
    (naive dispatch), and only that rank's share is stored.
    """
    if gathered_dp_rank >= 0:
        counts = get_forward_context().dp_metadata.num_tokens_across_dp_cpu.tolist()
        start = sum(counts[:gathered_dp_rank])
        end = start + counts[gathered_dp_rank]
        topk_ids, topk_weights = topk_ids[start:end], topk_weights[start:end]
    rows = min(topk_ids.shape[0], ids_buffer.shape[0] - row_offset)
    ids_buffer[row_offset : row_offset + rows, slot].copy_(topk_ids[:rows])
    weights_buffer[row_offset : row_offset + rows, slot].copy_(topk_weights[:rows])


def _store_routes_fake(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    ids_buffer: torch.Tensor,
    weights_buffer: torch.Tensor,
    slot: int,
    row_offset: int,
    gathered_dp_rank: int,
) -> None:
    return None


direct_register_custom_op(
    op_name="moe_route_record",
    op_func=store_routes,
    mutates_args=["ids_buffer", "weights_buffer"],
    fake_impl=_store_routes_fake,
)


class LayerRecorder:
    """What a logged FusedMoE layer calls right after routing (``layer.moe_route_recorder``)."""

    def __init__(
        self,
        layer: torch.nn.Module,
        buffers: RouteBuffers,
        slot: int,
        dp_rank: int,
        weight_scale: float = 1.0,
    ):
        self.layer = layer
        self.buffers = buffers
        self.slot = slot
        self.dp_rank = dp_rank
        # The factor the model applies to FusedMoE's output (routing.weight_scale):
        # logged weights are what multiplies each expert's output.
        self.weight_scale = weight_scale
        # With EPLB, select_experts returns physical (replica) ids: route again,
        # purely, to log the model's own (logical) expert ids.
        self.reroute = bool(getattr(layer, "enable_eplb", False))

    def record(
        self,
        hidden_states: torch.Tensor,
        router_logits: torch.Tensor,
        topk_weights: torch.Tensor | None = None,
        topk_ids: torch.Tensor | None = None,
        row_offset: int = 0,
        gathered: bool = False,
    ) -> None:
        """Store this layer's routes; without ``topk_ids`` (monolithic kernels) route here."""
        if topk_ids is None or topk_weights is None or self.reroute:
            topk_weights, topk_ids = self._route(hidden_states, router_logits)
        if self.weight_scale != 1.0:
            topk_weights = topk_weights * self.weight_scale
        args = (
            topk_ids,
            topk_weights,
            self.buffers.expert_ids,
            self.buffers.weights,
            self.slot,
            row_offset,
            self.dp_rank if gathered else -1,
        )
        if torch.compiler.is_compiling():
            torch.ops.vllm.moe_route_record(*args)
        else:
            store_routes(*args)

    def _route(self, hidden_states: torch.Tensor, router_logits: torch.Tensor):
        """The layer's routing without side effects (no EPLB mapping or load counts)."""
        layer = self.layer
        if current_platform.is_cpu():
            # What the CPU kernels run inside apply_monolithic.
            from vllm.model_executor.layers.fused_moe.cpu_fused_moe import select_experts

            return select_experts(
                hidden_states=hidden_states,
                router_logits=router_logits,
                top_k=layer.top_k,
                use_grouped_topk=layer.use_grouped_topk,
                renormalize=layer.renormalize,
                topk_group=layer.topk_group,
                num_expert_group=layer.num_expert_group,
                custom_routing_function=layer.custom_routing_function,
                scoring_func=layer.scoring_func,
                routed_scaling_factor=layer.routed_scaling_factor,
                e_score_correction_bias=layer.e_score_correction_bias,
            )
        return layer.router._compute_routing(hidden_states, router_logits, None)
