"""One Triton kernel for the end of a pass: count the routes, and stage them for the host.

Reads the first ``rows`` rows of each logged layer's block of the route buffer
(``[layers, rows_max, 2k]`` int32: ids, then weight bits) and, in one launch:
adds 1 and the weight to each chosen (layer, expert)'s accumulators (atomics),
and, when a staging buffer is given, writes those rows contiguously followed by
the rows' token ids, so that one copy brings everything to the host. The engine
thread pays one launch instead of the half-dozen torch ops of ``counts.py``'s
fallback, which is what it pays at every pass.

``self_check`` runs the kernel on a small random case against the torch
reference before a session uses it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["rows"])  # one compiled kernel for every pass size
def _end_of_pass(
    routes_ptr,
    counts_ptr,
    weight_sums_ptr,
    staged_ptr,
    token_ids_ptr,
    rows,
    layer_stride,
    num_experts,
    TOP_K: tl.constexpr,
    STAGE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    layer = tl.program_id(1)
    cell = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (row, choice) of this layer
    valid = cell < rows * TOP_K
    row = cell // TOP_K
    choice = cell % TOP_K
    source = routes_ptr + layer * layer_stride + row * (2 * TOP_K) + choice
    expert = tl.load(source, mask=valid, other=0)
    bits = tl.load(source + TOP_K, mask=valid, other=0)
    weight = bits.to(tl.float32, bitcast=True)
    target = layer * num_experts + expert
    tl.atomic_add(counts_ptr + target, tl.full([BLOCK], 1, tl.int64), mask=valid)
    tl.atomic_add(weight_sums_ptr + target, weight, mask=valid)
    if STAGE:
        packed = staged_ptr + layer * rows * (2 * TOP_K) + row * (2 * TOP_K) + choice
        tl.store(packed, expert, mask=valid)
        tl.store(packed + TOP_K, bits, mask=valid)
        first = valid & (choice == 0) & (layer == 0)
        token = tl.load(token_ids_ptr + row, mask=first, other=0)
        tl.store(staged_ptr + tl.num_programs(1) * rows * (2 * TOP_K) + row, token, mask=first)


def end_of_pass(
    routes: torch.Tensor,
    rows: int,
    top_k: int,
    num_experts: int,
    counts: torch.Tensor,
    weight_sums: torch.Tensor,
    staged: torch.Tensor | None,
    token_ids: torch.Tensor | None,
) -> None:
    """Count ``routes[:, :rows]`` into ``counts``/``weight_sums``; stage them if asked."""
    layers = routes.shape[0]
    stage = staged is not None
    grid = (triton.cdiv(rows * top_k, 1024), layers)
    _end_of_pass[grid](
        routes,
        counts,
        weight_sums,
        staged if stage else counts,  # unused pointers when not staging
        token_ids if stage else counts,
        rows,
        routes.stride(0),
        num_experts,
        TOP_K=top_k,
        STAGE=stage,
        BLOCK=1024,
    )


def reference(
    routes: torch.Tensor, rows: int, top_k: int, num_experts: int, token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``end_of_pass`` computes, in plain torch: counts, weight sums, staged ints."""
    layers = routes.shape[0]
    ids = (
        routes[:, :rows, :top_k].long()
        + torch.arange(layers, device=routes.device).view(-1, 1, 1) * num_experts
    )
    weights = routes[:, :rows, top_k:].contiguous().view(torch.float32)
    counts = torch.bincount(ids.flatten(), minlength=layers * num_experts)
    sums = torch.zeros(layers * num_experts, dtype=torch.float64, device=routes.device)
    sums.index_add_(0, ids.flatten(), weights.flatten().double())
    staged = torch.cat([routes[:, :rows].flatten(), token_ids[:rows].to(torch.int32)])
    return counts, sums, staged


def self_check(device: str = "cuda") -> None:
    """Raise unless the kernel agrees with ``reference`` on a small random pass."""
    generator = torch.Generator().manual_seed(0)
    layers, rows_max, top_k, experts, rows = 3, 40, 4, 16, 37
    ids = torch.stack(
        [torch.randperm(experts, generator=generator)[:top_k] for _ in range(layers * rows_max)]
    ).view(layers, rows_max, top_k)
    weights = torch.rand((layers, rows_max, top_k), generator=generator)
    routes = torch.cat([ids.int(), weights.view(torch.int32)], dim=2).to(device)
    token_ids = torch.randint(0, 100_000, (rows_max,), generator=generator).int().to(device)
    counts = torch.zeros(layers * experts, dtype=torch.int64, device=device)
    sums = torch.zeros(layers * experts, dtype=torch.float32, device=device)
    staged = torch.empty(layers * rows * 2 * top_k + rows, dtype=torch.int32, device=device)
    end_of_pass(routes, rows, top_k, experts, counts, sums, staged, token_ids)
    want_counts, want_sums, want_staged = reference(routes, rows, top_k, experts, token_ids)
    if not torch.equal(counts.cpu(), want_counts.cpu()):
        raise RuntimeError("counts differ from the torch reference")
    if not torch.allclose(sums.double().cpu(), want_sums.cpu(), atol=1e-5):
        raise RuntimeError("weight sums differ from the torch reference")
    if not torch.equal(staged.cpu(), want_staged.cpu()):
        raise RuntimeError("staged routes differ from the torch reference")
