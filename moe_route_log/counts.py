"""The end of a pass on the device: count the routes, and stage them for the host.

After each pass ``add`` folds the pass's real rows of the route buffer into two
device accumulators (per logged layer and expert: tokens, weight sums) and, in
routes mode, packs those rows and their token ids into one contiguous staging
buffer (one of ``staging_slots``, which the caller hands out), so the host gets
them with a single copy, made later by another thread. The engine thread pays for
this in launches, so on CUDA it is one Triton kernel (checked against the torch
path when the session starts; on any doubt the torch path is used, with a
warning); elsewhere it is a few torch ops. No host sync, no per-step allocation.

``snapshot`` copies the accumulators into a pinned host slot, zeroes them and
records an event: a window is cut in stream order, exactly between two passes,
and the host reads it once the event has completed.

In counts mode with in-graph counting (``graph_counts.py``) the logged layers add
to ``accumulators`` during the pass (``add`` counts only passes that ran outside
a CUDA graph), and ``zero`` clears what passes counted while nothing was recorded
(warm-up, a stopped recorder).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import numpy as np
import torch

from .recorder import RouteBuffers
from .vllm_logging import get_logger

logger = get_logger(__name__)
SNAPSHOT_SLOTS = 4  # windows in flight to the host at once
_BLOCK = 1024


@dataclass
class Snapshot:
    """A window's counts on their way to the host; ``read`` waits for them."""

    counts: torch.Tensor  # int64 [layers, experts], host
    weight_sums: torch.Tensor  # float32 [layers, experts], host
    copied: torch.cuda.Event | None
    _free: queue.SimpleQueue
    _index: int

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """The window's counts (int64) and weight sums (float64); frees the slot."""
        if self.copied is not None:
            self.copied.synchronize()
        counts = self.counts.numpy().copy()
        weight_sums = self.weight_sums.numpy().astype(np.float64)
        self._free.put(self._index)
        return counts, weight_sums


class DeviceExpertCounts:
    """Accumulates ``buffers``' routes per (logged layer, expert); optionally stages them."""

    def __init__(
        self,
        buffers: RouteBuffers,
        num_experts: int,
        staging_slots: int = 0,
    ) -> None:
        """``staging_slots``: device buffers for passes on their way to the host (routes
        mode)."""
        layers, rows, top_k = buffers.expert_ids.shape
        device = buffers.routes.device
        self.shape = (layers, num_experts)
        self._buffers = buffers
        self._counts = torch.zeros(layers * num_experts, dtype=torch.int64, device=device)
        self._weight_sums = torch.zeros(layers * num_experts, dtype=torch.float32, device=device)
        # each: [layers, rows, 2k] routes, then one token id per row: one copy to the host
        self.staging = [
            torch.empty(layers * rows * 2 * top_k + rows, dtype=torch.int32, device=device)
            for _ in range(staging_slots)
        ]
        cuda = device.type == "cuda"
        self._kernel = _fused_kernel() if cuda else None
        if self._kernel is None:  # the torch path's scratch
            offsets = torch.arange(layers, dtype=torch.int64, device=device) * num_experts
            self._offsets = offsets.view(layers, 1, 1)
            self._index = torch.empty(layers * rows * top_k, dtype=torch.int64, device=device)
            self._weights = torch.empty(layers * rows * top_k, dtype=torch.float32, device=device)
            self._ones = torch.ones(layers * rows * top_k, dtype=torch.int64, device=device)
        self._slots = [
            (
                torch.empty(self.shape, dtype=torch.int64, pin_memory=cuda),
                torch.empty(self.shape, dtype=torch.float32, pin_memory=cuda),
                torch.cuda.Event(blocking=True) if cuda else None,
            )
            for _ in range(SNAPSHOT_SLOTS)
        ]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(SNAPSHOT_SLOTS):
            self._free.put(i)

    def add(
        self, rows: int, input_ids: torch.Tensor | None = None, slot: int | None = None
    ) -> torch.Tensor | None:
        """Count the first ``rows`` rows (the pass's real tokens); given a staging ``slot``,
        also pack them and ``input_ids[:rows]`` there and return those staged ints."""
        layers, _, top_k = self._buffers.expert_ids.shape
        staged = None
        if slot is not None:
            staged = self.staging[slot][: layers * rows * 2 * top_k + rows]
        if rows == 0:
            return staged
        if self._kernel is not None:
            self._kernel(
                self._buffers.routes, rows, top_k, self.shape[1], self._counts,
                self._weight_sums, staged, input_ids,
            )  # fmt: skip
            return staged
        n = layers * rows * top_k
        index, weights = self._index[:n], self._weights[:n]
        torch.add(
            self._buffers.expert_ids[:, :rows], self._offsets, out=index.view(layers, rows, top_k)
        )
        weights.view(layers, rows, top_k).copy_(self._buffers.weights[:, :rows])
        self._counts.index_add_(0, index, self._ones[:n])
        self._weight_sums.index_add_(0, index, weights)
        if staged is not None:
            packed = layers * rows * 2 * top_k
            staged[:packed].view(layers, rows, 2 * top_k).copy_(self._buffers.routes[:, :rows])
            staged[packed:].copy_(input_ids[:rows])
        return staged

    @property
    def accumulators(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The device counts (int64) and weight sums (float32), flat ``[layers * experts]``;
        their addresses never change (CUDA graphs capture them)."""
        return self._counts, self._weight_sums

    def zero(self) -> None:
        """Clear the open window's accumulators, in stream order."""
        self._counts.zero_()
        self._weight_sums.zero_()

    def peek(self) -> tuple[np.ndarray, np.ndarray]:
        """The open window's counts and weight sums, read now (waits for the device)."""
        counts = self._counts.cpu().numpy().reshape(self.shape)
        weight_sums = self._weight_sums.cpu().numpy().astype(np.float64).reshape(self.shape)
        return counts, weight_sums

    def snapshot(self) -> Snapshot:
        """Cut a window: copy the accumulators to the host (asynchronously), zero them."""
        index = self._free.get()  # waits only if SNAPSHOT_SLOTS windows are unread
        counts, weight_sums, copied = self._slots[index]
        counts.view(-1).copy_(self._counts, non_blocking=True)
        weight_sums.view(-1).copy_(self._weight_sums, non_blocking=True)
        if copied is not None:
            copied.record()
        self.zero()
        return Snapshot(counts, weight_sums, copied, self._free, index)


def _fused_kernel():
    """The one-launch end of a pass (Triton), if it builds and agrees with torch here."""
    try:
        from . import step_kernel

        step_kernel.self_check()
        return step_kernel.end_of_pass
    except Exception as e:  # any doubt: the torch path (a few more launches per pass)
        logger.warning("VLLM_LOG_MOE: the fused end-of-pass kernel is not used (%s)", e)
        return None
