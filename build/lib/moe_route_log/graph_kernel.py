"""The in-graph count of one layer's routes in one Triton launch (CUDA only).

Inside the forward pass each logged layer adds, for each (row, choice) of its
``topk_ids`` / ``topk_weights`` whose row is a real token of the pass, 1 and the
weight to its slot's accumulators (atomics). The pass's real token count is read
through a pointer when the kernel runs, so a CUDA graph captured for a padded
batch size counts only the real rows of each replay. ``rows`` and ``row_offset``
are not specialised: one compiled kernel serves every captured size.

``self_check`` runs the kernel on a small case against ``graph_counts.count_torch``
before a session uses it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit(do_not_specialize=["rows", "row_offset", "expert_base"])
def _count_routes(
    ids_ptr,
    weights_ptr,
    counts_ptr,
    weight_sums_ptr,
    n_real_ptr,
    rows,
    row_offset,
    ids_stride,
    ids_col_stride,
    weights_stride,
    weights_col_stride,
    expert_base,
    TOP_K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    cell = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (row, choice)
    row = cell // TOP_K
    choice = cell % TOP_K
    n_real = tl.load(n_real_ptr)
    valid = (cell < rows * TOP_K) & (row + row_offset < n_real)
    ids = ids_ptr + row * ids_stride + choice * ids_col_stride
    expert = tl.load(ids, mask=valid, other=0).to(tl.int64)
    weight = tl.load(
        weights_ptr + row * weights_stride + choice * weights_col_stride, mask=valid, other=0.0
    )
    target = expert_base + expert
    tl.atomic_add(counts_ptr + target, tl.full([BLOCK], 1, tl.int64), mask=valid)
    tl.atomic_add(weight_sums_ptr + target, weight.to(tl.float32), mask=valid)


def count_routes(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    counts: torch.Tensor,
    weight_sums: torch.Tensor,
    n_real: torch.Tensor,
    expert_base: int,
    row_offset: int,
) -> None:
    """Count the rows ``i`` of ``topk_ids`` with ``row_offset + i < n_real[0]`` from
    ``expert_base`` on in the flat ``counts`` (int64) and ``weight_sums`` (float32)."""
    rows, top_k = topk_ids.shape
    if rows == 0:
        return
    _count_routes[(triton.cdiv(rows * top_k, _BLOCK),)](
        topk_ids,
        topk_weights,
        counts,
        weight_sums,
        n_real,
        rows,
        row_offset,
        topk_ids.stride(0),
        topk_ids.stride(1),
        topk_weights.stride(0),
        topk_weights.stride(1),
        expert_base,
        TOP_K=top_k,
        BLOCK=_BLOCK,
    )


def self_check(device: str = "cuda") -> None:
    """Raise unless the kernel agrees with the torch path on a padded pass."""
    from .graph_counts import count_torch

    generator = torch.Generator().manual_seed(0)
    rows, top_k, experts, slots = 48, 4, 16, 2
    ids = torch.stack([torch.randperm(experts, generator=generator)[:top_k] for _ in range(rows)])
    weights = torch.rand((rows, top_k), generator=generator)
    n_real = torch.tensor([0, 37], dtype=torch.int32, device=device)[1:]
    results = []
    for count in (count_routes, count_torch):
        counts = torch.zeros(slots * experts, dtype=torch.int64, device=device)
        sums = torch.zeros(slots * experts, dtype=torch.float32, device=device)
        count(ids.int().to(device), weights.to(device), counts, sums, n_real, experts, 5)
        results.append((counts.cpu(), sums.double().cpu()))
    (counts, sums), (want_counts, want_sums) = results
    if not torch.equal(counts, want_counts) or int(counts.sum()) != (37 - 5) * top_k:
        raise RuntimeError("in-graph counts differ from the torch path")
    if not torch.allclose(sums, want_sums, atol=1e-5):
        raise RuntimeError("in-graph weight sums differ from the torch path")
