"""Engine side of one process's route log: device buffers -> host -> writer process.

After each forward pass the model runner calls ``end_step``: it queues an
asynchronous copy of the pass's real rows into a free host slot (pinned memory
on CUDA) and returns. A drain thread waits for the copy, then hands the raw
arrays to the writer process through a pipe. When every slot is in flight the
next ``end_step`` waits for one (back-pressure, counted in the trailer) rather
than drop routes.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch
from vllm.logger import init_logger

from . import wire
from .envs import LogConfig
from .recorder import RouteBuffers
from .writer import WriterProcess

logger = init_logger(__name__)

HOST_SLOT_BUDGET = 64 * 2**20  # bytes of (pinned) host slots per process
MIN_HOST_SLOTS, MAX_HOST_SLOTS = 4, 32


class _HostSlot:
    def __init__(self, rows: int, num_layers: int, top_k: int, cuda: bool) -> None:
        shape = (rows, num_layers, top_k)
        self.expert_ids = torch.empty(shape, dtype=torch.int32, pin_memory=cuda)
        self.weights = torch.empty(shape, dtype=torch.float32, pin_memory=cuda)
        self.token_ids = torch.empty(rows, dtype=torch.int32, pin_memory=cuda)
        self.copied = torch.cuda.Event() if cuda else None


class RouteLogSession:
    """One process's route log, from the device buffers to the writer process."""

    def __init__(
        self,
        config: LogConfig,
        meta: dict,
        rows: int,
        num_layers: int,
        top_k: int,
        device: torch.device,
    ) -> None:
        self.path = config.path
        self.buffers = RouteBuffers(rows, num_layers, top_k, device)
        self._cuda = device.type == "cuda"
        self._shape = (num_layers, top_k)
        self._writer = WriterProcess(config.path, config.buffer_bytes)
        self._writer.send(wire.json_frame(wire.HEADER, {**meta, "writer_pid": self._writer.pid}))
        slot_bytes = rows * num_layers * top_k * 8
        count = min(MAX_HOST_SLOTS, max(MIN_HOST_SLOTS, HOST_SLOT_BUDGET // slot_bytes))
        self._slots = [_HostSlot(rows, num_layers, top_k, self._cuda) for _ in range(count)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(count):
            self._free.put(i)
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._broken = False
        self._closed = False
        self.steps = 0
        self.wait_s = 0.0
        self.waits = 0
        self._drain = threading.Thread(target=self._drain_loop, name="moe-route-log", daemon=True)
        self._drain.start()

    def end_step(
        self,
        req_ids: list[str],
        tokens_per_req: np.ndarray,
        prompt_lens: np.ndarray,
        positions: np.ndarray,
        input_ids: torch.Tensor,
    ) -> None:
        """Queue the routes of the forward pass that just ran (``len(positions)`` rows).

        ``input_ids`` is the pass's input buffer on the device: under asynchronous
        scheduling the ids of decode tokens exist only there.
        """
        if self._broken or self._closed:
            return
        rows = len(positions)
        try:
            index = self._free.get_nowait()
        except queue.Empty:
            started = time.perf_counter()
            index = self._free.get()
            self.wait_s += time.perf_counter() - started
            self.waits += 1
        slot = self._slots[index]
        slot.expert_ids[:rows].copy_(self.buffers.expert_ids[:rows], non_blocking=True)
        slot.weights[:rows].copy_(self.buffers.weights[:rows], non_blocking=True)
        slot.token_ids[:rows].copy_(input_ids[:rows], non_blocking=True)
        if slot.copied is not None:
            slot.copied.record()
        self.steps += 1
        self._pending.put((index, self.steps, req_ids, tokens_per_req, prompt_lens, positions))

    def _drain_loop(self) -> None:
        while (item := self._pending.get()) is not None:
            index, step, req_ids, tokens_per_req, prompt_lens, positions = item
            slot = self._slots[index]
            if slot.copied is not None:
                slot.copied.synchronize()
            rows = len(positions)
            if not self._broken:
                frame = wire.routes_frame(
                    step,
                    req_ids,
                    tokens_per_req,
                    prompt_lens,
                    positions,
                    slot.token_ids[:rows].numpy(),
                    slot.expert_ids[:rows].numpy(),
                    slot.weights[:rows].numpy(),
                    (rows, *self._shape),
                )
                self._send(frame)
            self._free.put(index)

    def _send(self, frame: list) -> None:
        try:
            self._writer.send(frame)
        except OSError as e:
            self._broken = True
            if not self._writer.reported_failure():  # else it has said why itself
                logger.error(
                    "VLLM_LOG_MOE: the route-log writer for %s is gone (%s); route logging "
                    "stopped, generation carries on.",
                    self.path,
                    e,
                )

    def close(self) -> None:
        """Flush every queued step, write the trailer and let the writer finish."""
        if self._closed:
            return
        self._closed = True
        self._pending.put(None)
        self._drain.join()
        if not self._broken:
            self._send(
                wire.json_frame(
                    wire.CLOSE,
                    {
                        "steps": self.steps,
                        "engine_wait_s": round(self.wait_s, 6),
                        "engine_waits": self.waits,
                    },
                )
            )
        self._writer.close()
