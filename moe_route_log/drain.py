"""The host drain: a thread that takes staged passes and closed windows to the writer process.

It owns everything of a log that need not run on the engine thread: the pinned
host slots and the copy stream, the writer process (header at start, trailer at
close) and the totals of closed windows. The engine thread talks to it only
through messages (``messages.py``), handled in order, one handler per kind:

- a staged pass (routes mode): mark the engine's stream behind the staging
  launch and start copying the slot into its host slot on a side stream; once
  nothing newer is queued (or before any other message), wait for the copy, send
  the raw arrays to the writer and free the slot. Copies of passes queued
  meanwhile thus start before a pass is sent.
- a closed window: read its counts from the host snapshot, add them to the
  totals and, in counts mode, send its counts line.
- a start: the dump's totals restart; a control: its control line.

Every CUDA call lets other threads take the GIL, which the engine thread then
waits for (``bench/gil_probe.py``): so the copies and events are this thread's.
When every staging slot is in flight the engine thread waits for one
(``FreeSlots``: back-pressure, counted in the trailer) rather than drop routes.
"""

from __future__ import annotations

import collections
import queue
import threading
import time

import torch
from vllm.logger import init_logger

from . import log_format, wire
from .adapters.passes import positions as row_positions
from .envs import LogConfig
from .log_format import is_sampled
from .messages import (
    ControlApplied,
    Flush,
    Message,
    PassStaged,
    RecordStarted,
    Shutdown,
    WindowClosed,
)
from .totals import WindowTotals
from .writer import WriterProcess

logger = init_logger(__name__)

HOST_SLOT_BUDGET = 64 * 2**20  # bytes of (pinned) host slots per process
MIN_HOST_SLOTS, MAX_HOST_SLOTS = 4, 32


def host_slot_count(rows: int, num_layers: int, top_k: int) -> int:
    """How many passes may be in flight to the host at once (routes mode)."""
    slot_bytes = rows * num_layers * top_k * 8
    return min(MAX_HOST_SLOTS, max(MIN_HOST_SLOTS, HOST_SLOT_BUDGET // slot_bytes))


class FreeSlots:
    """The staging slots no pass is in: the engine thread takes one per pass, the drain
    gives it back once the pass is sent; taking waits while every slot is in flight."""

    def __init__(self, count: int) -> None:
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(count):
            self._free.put(i)
        self.wait_s = 0.0  # the engine thread's waits for a slot (the trailer's)
        self.waits = 0

    def take(self) -> int:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            started = time.perf_counter()
            index = self._free.get()
            self.wait_s += time.perf_counter() - started
            self.waits += 1
            return index

    def give_back(self, index: int) -> None:
        self._free.put(index)


class _HostSlot:
    """Host memory for one pass: its staged ints (``counts.py``): routes, then token ids."""

    def __init__(self, size: int, cuda: bool) -> None:
        self.data = torch.empty(size, dtype=torch.int32, pin_memory=cuda)
        # blocking: the drain thread sleeps until the pass / the copy is done, not spins
        self.staged = torch.cuda.Event(blocking=True) if cuda else None
        self.copied = torch.cuda.Event(blocking=True) if cuda else None


class HostDrain:
    """One process's drain thread, its host slots and its writer process."""

    def __init__(
        self,
        config: LogConfig,
        meta: dict,
        staging: list[torch.Tensor],
        shape: tuple[int, int],
        num_experts: int,
        device_index: int | None,
    ) -> None:
        """``staging``: the device staging slots (routes mode); ``shape``: logged layers
        and top-k; ``device_index``: the engine's CUDA device, None off CUDA."""
        self.path = config.path
        self._mode = config.mode
        self._sample = config.sample
        self._layers: list[int] = meta["layers"]
        self._shape = shape
        self._cuda = device_index is not None
        self._device_index = device_index
        self._staging = staging
        self._slots = [_HostSlot(len(slot), self._cuda) for slot in staging]
        self.free_slots = FreeSlots(len(staging))
        self._copy_stream = torch.cuda.Stream(device_index) if self._cuda and staging else None
        self._writer = WriterProcess(
            config.path, config.buffer_bytes, config.max_bytes, config.keep, config.encoders
        )
        self._writer.send(wire.json_frame(wire.HEADER, {**meta, "writer_pid": self._writer.pid}))
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.broken = False  # the writer is gone: nothing more is sent
        self.totals = WindowTotals((shape[0], num_experts))
        self.route_lines = 0  # route lines handed to the writer (after sampling)
        self.drain_cpu_s = 0.0  # this thread's CPU time (about its GIL time)
        self._copying: collections.deque[PassStaged] = collections.deque()
        self._running = True
        self._handlers = {
            PassStaged: self._on_pass_staged,
            WindowClosed: self._on_window_closed,
            RecordStarted: self._on_record_started,
            ControlApplied: self._on_control_applied,
            Flush: self._on_flush,
            Shutdown: self._on_shutdown,
        }
        self._thread = threading.Thread(target=self._run, name="moe-route-log", daemon=True)
        self._thread.start()

    def put(self, message: Message) -> None:
        self._inbox.put(message)

    def flush(self) -> None:
        """Wait until everything queued so far is handled."""
        done = threading.Event()
        self._inbox.put(Flush(done))
        done.wait()

    def close(self, steps: int, end_step_s: float) -> None:
        """Handle everything queued, write the trailer (with the engine thread's ``steps``
        and time in ``end_step``), let the writer finish."""
        self._inbox.put(Shutdown())
        self._thread.join()
        if not self.broken:
            fields = log_format.trailer_engine_fields(
                steps=steps,
                wait_s=self.free_slots.wait_s,
                waits=self.free_slots.waits,
                end_step_s=end_step_s,
                drain_cpu_s=self.drain_cpu_s,
            )
            self._send(wire.json_frame(wire.CLOSE, fields))
        self._writer.close()

    # ---- the drain thread ----------------------------------------------------------------

    def _run(self) -> None:
        if self._cuda:  # this thread's copies and events belong to the engine's device
            torch.cuda.set_device(self._device_index)
        try:
            self._handle_messages()
        finally:
            self.drain_cpu_s = time.thread_time()

    def _handle_messages(self) -> None:
        """Handle messages in order. A pass's copy starts as soon as it arrives; its wait
        and sending come once nothing newer is queued (or before any other message), so a
        copy never waits behind the previous pass's sending."""
        while self._running:
            if self._copying:
                try:
                    message = self._inbox.get_nowait()
                except queue.Empty:
                    self._send_pass(self._copying.popleft())
                    continue
            else:
                message = self._inbox.get()
            if type(message) is not PassStaged:
                while self._copying:  # every earlier pass goes first
                    self._send_pass(self._copying.popleft())
            self._handlers[type(message)](message)

    def _on_pass_staged(self, message: PassStaged) -> None:
        """Start copying the staged pass into its host slot."""
        slot, size = self._slots[message.slot], self._size(message)[1]
        staged = self._staging[message.slot][:size]
        if self._copy_stream is None:
            slot.data[:size].copy_(staged)
        else:
            slot.staged.record(message.stream)  # behind the staging launch
            self._copy_stream.wait_event(slot.staged)
            with torch.cuda.stream(self._copy_stream):
                slot.data[:size].copy_(staged, non_blocking=True)
            slot.copied.record(self._copy_stream)
        self._copying.append(message)

    def _size(self, message: PassStaged) -> tuple[int, int]:
        """How many staged ints the pass has: its routes, then all with token ids."""
        layers, top_k = self._shape
        packed = layers * message.rows * 2 * top_k
        return packed, packed + message.rows

    def _send_pass(self, message: PassStaged) -> None:
        """Wait for the pass's copy, send its routes to the writer, free its slot."""
        slot = self._slots[message.slot]
        if slot.copied is not None:
            slot.copied.synchronize()
        if not self.broken:
            layers, top_k = self._shape
            rows, (packed, size) = message.rows, self._size(message)
            data = slot.data.numpy()
            frame = wire.routes_frame(
                message.step,
                message.req_ids,
                message.tokens_per_req,
                message.prompt_lens,
                row_positions(message.first_positions, message.tokens_per_req),
                data[packed:size],
                data[:packed],
                (rows, layers, top_k),
            )
            self._send(frame)
            if self._sample >= 1.0:
                self.route_lines += rows * layers
            else:
                sampled = [is_sampled(r, self._sample) for r in message.req_ids]
                self.route_lines += int(message.tokens_per_req[sampled].sum()) * layers
        self.free_slots.give_back(message.slot)

    def _on_window_closed(self, window: WindowClosed) -> None:
        counts, weight_sums = window.snapshot.read()
        line = log_format.counts_line(
            t_start=window.t_start,
            t_end=window.t_end,
            steps=window.steps,
            tokens=window.tokens,
            prefill_tokens=window.prefill_tokens,
            layers=self._layers,
            counts=counts,
            weight_sums=weight_sums,
        )
        self.totals.add(window, counts, weight_sums, line)
        if self._mode == "counts" and window.steps and not self.broken:
            self._send(wire.json_frame(wire.LINE, line))

    def _on_record_started(self, _: RecordStarted) -> None:
        self.totals.restart_record()

    def _on_control_applied(self, control: ControlApplied) -> None:
        if not self.broken:
            line = log_format.control_line(control.action, control.t, control.step)
            self._send(wire.json_frame(wire.LINE, line))

    def _on_flush(self, flush: Flush) -> None:
        flush.done.set()

    def _on_shutdown(self, _: Shutdown) -> None:
        self._running = False

    def _send(self, frame: list) -> None:
        try:
            self._writer.send(frame)
        except OSError as e:
            self.broken = True
            if not self._writer.reported_failure():  # else it has said why itself
                logger.error(
                    "VLLM_LOG_MOE: the route-log writer for %s is gone (%s); route logging "
                    "stopped, generation carries on.",
                    self.path,
                    e,
                )
