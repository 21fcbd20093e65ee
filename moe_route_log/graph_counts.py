"""Counts mode inside the forward pass (VLLM_LOG_MOE_COUNTS_IN_GRAPH=1).

Each logged layer adds its own routes to the device accumulators of
``counts.DeviceExpertCounts`` (slot ``s``: entries ``s * experts ...``) right
after routing, instead of copying them to the route buffer for an end-of-pass
kernel. Only the pass's real rows count: their number is read on the device, at
run time, from the model runner's ``query_start_loc`` (its last element holds
the pass's token count, written before every real pass), so a CUDA graph
captured for a padded batch counts the right rows at each replay, and the engine
thread launches nothing after a pass.

On CUDA one Triton launch per layer (``graph_kernel.py``, once it agrees with
the torch path here); elsewhere, and as the fallback, a few torch ops with a
mask built from that device scalar: static shapes, no host sync. Under
torch.compile without a custom-op boundary around the MoE layer (the CPU
build) the count goes through the registered op ``vllm.moe_route_count``, which
declares that it writes the accumulators, so Dynamo keeps it in the graph.

A CUDA pass that runs outside any graph (more tokens than the largest captured
size: vLLM then runs the layers eagerly) would pay that launch from Python at
every layer, each a release of the GIL (~40 us of Triton launch, ~100 us under
load). There the layers store their routes as in end-of-pass counting (one cheap
copy each) and ``take_uncounted`` tells the session to count the pass with the
end-of-pass kernel: graphs count inside, eager passes at their end.
"""

from __future__ import annotations

import torch
from vllm.utils.torch_utils import direct_register_custom_op

from .vllm_logging import get_logger

logger = get_logger(__name__)
_kernel = None  # graph_kernel.count_routes, once it has passed its self-check here


def count_torch(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    counts: torch.Tensor,
    weight_sums: torch.Tensor,
    n_real: torch.Tensor,
    expert_base: int,
    row_offset: int,
) -> None:
    """Count rows ``i`` with ``row_offset + i < n_real[0]`` (a 1-element device tensor)."""
    rows, top_k = topk_ids.shape
    real = torch.arange(row_offset, row_offset + rows, device=topk_ids.device) < n_real
    mask = real.unsqueeze(1).expand(rows, top_k).reshape(-1)
    index = topk_ids.reshape(-1).long() + expert_base
    counts.index_add_(0, index, mask.long())
    weight_sums.index_add_(0, index, torch.where(mask, topk_weights.reshape(-1).float(), 0.0))


def count_routes(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    counts: torch.Tensor,
    weight_sums: torch.Tensor,
    n_real_source: torch.Tensor,
    n_real_index: int,
    expert_base: int,
    row_offset: int,
) -> None:
    """Add one layer's real routes to ``counts`` / ``weight_sums`` from ``expert_base`` on;
    the pass's real token count is ``n_real_source[n_real_index]``, read on the device."""
    n_real = n_real_source[n_real_index : n_real_index + 1]
    if _kernel is not None and topk_ids.is_cuda:
        _kernel(topk_ids, topk_weights, counts, weight_sums, n_real, expert_base, row_offset)
    else:
        count_torch(topk_ids, topk_weights, counts, weight_sums, n_real, expert_base, row_offset)


def _count_routes_fake(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    counts: torch.Tensor,
    weight_sums: torch.Tensor,
    n_real_source: torch.Tensor,
    n_real_index: int,
    expert_base: int,
    row_offset: int,
) -> None:
    return None


direct_register_custom_op(
    op_name="moe_route_count",
    op_func=count_routes,
    mutates_args=["counts", "weight_sums"],
    fake_impl=_count_routes_fake,
)


class InGraphCounts:
    """What a logged layer's recorder calls instead of storing its routes."""

    def __init__(
        self,
        counts: torch.Tensor,
        weight_sums: torch.Tensor,
        num_experts: int,
        n_real_source: torch.Tensor,
    ) -> None:
        """``counts`` / ``weight_sums``: flat ``[slots * num_experts]`` accumulators;
        ``n_real_source``: 1-D int32, its last element the pass's real token count."""
        self.counts = counts
        self.weight_sums = weight_sums
        self.num_experts = num_experts
        self.n_real_source = n_real_source
        self.n_real_index = n_real_source.shape[0] - 1
        # CUDA passes outside a graph: stored, counted after the pass (see above)
        self.defer_outside_graphs = counts.is_cuda
        self._uncounted = False
        if counts.is_cuda:
            use_kernel()

    def count_or_defer(
        self, topk_ids: torch.Tensor, topk_weights: torch.Tensor, slot: int, row_offset: int
    ) -> bool:
        """Count the layer here (True), or leave a CUDA pass that runs outside any graph
        to the end-of-pass kernel (False: the caller stores its routes instead)."""
        if (
            self.defer_outside_graphs
            and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing()
        ):
            self._uncounted = True
            return False
        self.count(topk_ids, topk_weights, slot, row_offset)
        return True

    def take_uncounted(self) -> bool:
        """Did a pass leave its routes to the end-of-pass kernel since the last call?"""
        uncounted, self._uncounted = self._uncounted, False
        return uncounted

    def count(
        self, topk_ids: torch.Tensor, topk_weights: torch.Tensor, slot: int, row_offset: int
    ) -> None:
        """Count the layer of slot ``slot``; its rows start at row ``row_offset`` of the pass."""
        args = (
            topk_ids,
            topk_weights,
            self.counts,
            self.weight_sums,
            self.n_real_source,
            self.n_real_index,
            slot * self.num_experts,
            row_offset,
        )
        if torch.compiler.is_compiling():
            torch.ops.vllm.moe_route_count(*args)
        else:
            count_routes(*args)


def use_kernel() -> None:
    """Count with the Triton kernel from now on, if it builds and agrees with torch here."""
    global _kernel
    if _kernel is not None:
        return
    try:
        from . import graph_kernel

        graph_kernel.self_check()
        _kernel = graph_kernel.count_routes
    except Exception as e:  # any doubt: the torch path (a few launches per layer, in graph)
        logger.warning("VLLM_LOG_MOE: the in-graph count kernel is not used (%s)", e)
