"""Device side: each logged FusedMoE layer copies its routes into one static buffer.

``RouteBuffers.routes`` is ``[layers, rows, 2 * top_k]`` int32: a layer's expert
ids, then the bits of its float32 weights. One ``torch.cat`` into the layer's
contiguous block writes both, so a logged layer costs one device kernel per
pass; it runs on fixed addresses, so it is captured into CUDA graphs and replayed
with them: no host sync, no Python at replay. Rows beyond a pass's real tokens
(graph padding) are written too and simply never read.

Under torch.compile without a custom-op boundary around the MoE layer (the CPU
build), the copy goes through the registered op ``vllm.moe_route_record``,
which declares that it writes the buffers, so Dynamo keeps it in the graph.

In counts mode with VLLM_LOG_MOE_COUNTS_IN_GRAPH=1 a layer counts its routes
instead of copying them (``graph_counts.py``).
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context
from vllm.utils.torch_utils import direct_register_custom_op

from .graph_counts import InGraphCounts


class RouteBuffers:
    """The routes of one forward pass: ``routes`` ``[layers, rows, 2 * top_k]`` int32."""

    def __init__(self, rows: int, num_layers: int, top_k: int, device: torch.device):
        self.top_k = top_k
        self.routes = torch.zeros((num_layers, rows, 2 * top_k), dtype=torch.int32, device=device)

    @property
    def expert_ids(self) -> torch.Tensor:
        """``[layers, rows, top_k]`` int32 view."""
        return self.routes[..., : self.top_k]

    @property
    def weights(self) -> torch.Tensor:
        """``[layers, rows, top_k]`` float32 view."""
        return self.routes[..., self.top_k :].view(torch.float32)


def store_routes(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    routes: torch.Tensor,
    slot: int,
    row_offset: int,
    gathered_dp_rank: int,
) -> None:
    """Copy one layer's routes into ``routes[slot]`` from row ``row_offset`` on.

    ``gathered_dp_rank`` >= 0: the rows are every data-parallel rank's tokens
    (naive dispatch), and only that rank's share is stored.
    """
    if gathered_dp_rank >= 0:
        counts = get_forward_context().dp_metadata.num_tokens_across_dp_cpu.tolist()
        start = sum(counts[:gathered_dp_rank])
        end = start + counts[gathered_dp_rank]
        topk_ids, topk_weights = topk_ids[start:end], topk_weights[start:end]
    rows = min(topk_ids.shape[0], routes.shape[1] - row_offset)
    block = routes[slot, row_offset : row_offset + rows]
    if topk_ids.dtype == torch.int32 and topk_weights.dtype == torch.float32:
        torch.cat([topk_ids[:rows], topk_weights[:rows].view(torch.int32)], dim=1, out=block)
    else:  # other dtypes (int64 ids, bf16 weights): convert, two kernels
        top_k = topk_ids.shape[1]
        block[:, :top_k].copy_(topk_ids[:rows])
        block[:, top_k:].view(torch.float32).copy_(topk_weights[:rows])


def _store_routes_fake(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    routes: torch.Tensor,
    slot: int,
    row_offset: int,
    gathered_dp_rank: int,
) -> None:
    return None


direct_register_custom_op(
    op_name="moe_route_record",
    op_func=store_routes,
    mutates_args=["routes"],
    fake_impl=_store_routes_fake,
)


class LayerRecorder:
    """What a logged MoE layer calls right after routing (``layer.moe_route_recorder``)."""

    def __init__(
        self,
        layer,  # adapters.moe_layers.MoELayer
        buffers: RouteBuffers,
        slot: int,
        dp_rank: int,
        weight_scale: float = 1.0,
        counter: InGraphCounts | None = None,
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
        self.reroute = layer.eplb
        # counts mode in the graph: count here; the route buffer only for passes that
        # run outside a graph (graph_counts.py)
        self.counter = counter

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
            topk_weights, topk_ids = self.layer.route(hidden_states, router_logits)
        if self.weight_scale != 1.0:
            topk_weights = topk_weights * self.weight_scale
        # one data-parallel rank: never gathered
        if self.counter is not None and self.counter.count_or_defer(
            topk_ids, topk_weights, self.slot, row_offset
        ):
            return
        args = (
            topk_ids,
            topk_weights,
            self.buffers.routes,
            self.slot,
            row_offset,
            self.dp_rank if gathered else -1,
        )
        if torch.compiler.is_compiling():
            torch.ops.vllm.moe_route_record(*args)
        else:
            store_routes(*args)
