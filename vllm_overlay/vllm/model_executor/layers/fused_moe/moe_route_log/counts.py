"""Expert counts on the device: per logged layer and expert, tokens and weight sums.

After each pass ``add`` folds the pass's real rows of the route buffers into two
device accumulators with four kernels (offset the ids by layer, gather the
weights, two ``index_add_``), on the engine's stream, with no host sync and no
per-step allocation. ``snapshot`` copies the accumulators into a pinned host slot, zeroes
them and records an event: a window is cut in stream order, exactly between two
passes, and the host reads it once the event has completed.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import numpy as np
import torch

from .recorder import RouteBuffers

SNAPSHOT_SLOTS = 4  # windows in flight to the host at once


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
    """Accumulates ``buffers``' routes per (logged layer, expert) on their device."""

    def __init__(self, buffers: RouteBuffers, num_experts: int) -> None:
        layers, rows, top_k = buffers.expert_ids.shape
        device = buffers.routes.device
        self.shape = (layers, num_experts)
        self._buffers = buffers
        self._counts = torch.zeros(layers * num_experts, dtype=torch.int64, device=device)
        self._weight_sums = torch.zeros(layers * num_experts, dtype=torch.float32, device=device)
        offsets = torch.arange(layers, dtype=torch.int64, device=device) * num_experts
        self._offsets = offsets.view(layers, 1, 1)
        self._index = torch.empty(layers * rows * top_k, dtype=torch.int64, device=device)
        self._weights = torch.empty(layers * rows * top_k, dtype=torch.float32, device=device)
        self._ones = torch.ones(layers * rows * top_k, dtype=torch.int64, device=device)
        cuda = device.type == "cuda"
        self._slots = [
            (
                torch.empty(self.shape, dtype=torch.int64, pin_memory=cuda),
                torch.empty(self.shape, dtype=torch.float32, pin_memory=cuda),
                torch.cuda.Event() if cuda else None,
            )
            for _ in range(SNAPSHOT_SLOTS)
        ]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(SNAPSHOT_SLOTS):
            self._free.put(i)

    def add(self, rows: int) -> None:
        """Count the first ``rows`` rows of the route buffers (the pass's real tokens)."""
        if rows == 0:
            return
        layers, _, top_k = self._buffers.expert_ids.shape
        n = layers * rows * top_k
        index, weights = self._index[:n], self._weights[:n]
        torch.add(
            self._buffers.expert_ids[:, :rows], self._offsets, out=index.view(layers, rows, top_k)
        )
        weights.view(layers, rows, top_k).copy_(self._buffers.weights[:, :rows])
        self._counts.index_add_(0, index, self._ones[:n])
        self._weight_sums.index_add_(0, index, weights)

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
        self._counts.zero_()
        self._weight_sums.zero_()
        return Snapshot(counts, weight_sums, copied, self._free, index)
