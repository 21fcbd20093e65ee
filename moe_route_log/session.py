"""Engine side of one process's route log: device buffers -> host -> writer process.

After each forward pass the model runner calls ``end_step`` (only while the
recorder runs). It folds the pass into the device expert counts and, in routes
mode, packs the pass's real rows into a free device staging slot (one kernel
launch: the engine thread's only CUDA call per pass), queues the slot and
returns. A drain thread marks the engine's stream behind that launch, copies the
slot into its pinned host slot on a side stream once the pass is done (copies of
passes queued meanwhile start before it encodes), and hands the raw arrays to the
writer process through a pipe. When every slot is in
flight the next ``end_step`` waits for one (back-pressure, counted in the
trailer) rather than drop routes. Every CUDA call lets other threads take the
GIL, which the engine thread then waits for (``bench/gil_probe.py``): so the
copies and events are the drain thread's.

In counts mode with in-graph counting (``counter``; ``graph_counts.py``) the
logged layers have already counted a pass that a CUDA graph ran: ``end_step``
only keeps the host's account (passes, tokens, prefill tokens, the window
clock); a pass that ran outside the graphs, it counts with the end-of-pass kernel.
Those layers count every pass, also while nothing is recorded, so ``start`` and
``warm_up_done`` zero the accumulators (in stream order, before the next pass).

The first pass ``interval_s`` after a window opened closes it (so do stop and
shutdown): its counts are cut in stream order, and the drain thread adds them to
the totals behind the dump and the metrics; in counts mode the window also
becomes a ``counts`` line, whose ``t_end`` is the time of its last pass. The dump
and the metrics also read the open window, from the device. ``start``,
``stop``, ``dump`` and ``status`` are the run-time controls (``control.py``).
They run on the engine's own thread between passes, like ``end_step``.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import naming, wire
from .counts import DeviceExpertCounts, Snapshot
from .envs import LogConfig
from .graph_counts import InGraphCounts
from .log_format import is_sampled
from .recorder import RouteBuffers
from .vllm_logging import get_logger
from .writer import WriterProcess

logger = get_logger(__name__)

HOST_SLOT_BUDGET = 64 * 2**20  # bytes of (pinned) host slots per process
MIN_HOST_SLOTS, MAX_HOST_SLOTS = 4, 32


class _HostSlot:
    """Host memory for one pass: its staged ints (``counts.py``): routes, then token ids."""

    def __init__(self, size: int, cuda: bool) -> None:
        self.data = torch.empty(size, dtype=torch.int32, pin_memory=cuda)
        # blocking: the drain thread sleeps until the pass / the copy is done, not spins
        self.staged = torch.cuda.Event(blocking=True) if cuda else None
        self.copied = torch.cuda.Event(blocking=True) if cuda else None


@dataclass
class _Routes:
    slot: int
    stream: torch.cuda.Stream | None  # the engine's, where the pass was staged
    step: int
    req_ids: list[str]
    tokens_per_req: np.ndarray
    prompt_lens: np.ndarray
    positions: np.ndarray


@dataclass
class _Window:
    t_start: float
    t_end: float
    steps: int
    tokens: int
    prefill_tokens: int
    snapshot: Snapshot


@dataclass
class _Totals:
    """Counts summed over windows, on the host (float64 weight sums)."""

    counts: np.ndarray
    weight_sums: np.ndarray
    tokens: int = 0
    prefill_tokens: int = 0
    steps: int = 0
    since: float = 0.0  # when these totals started

    @classmethod
    def zeros(cls, shape: tuple[int, int]) -> _Totals:
        return cls(np.zeros(shape, np.int64), np.zeros(shape, np.float64), since=time.time())

    def add(self, window: _Window, counts: np.ndarray, weight_sums: np.ndarray) -> None:
        self.counts += counts
        self.weight_sums += weight_sums
        self.tokens += window.tokens
        self.prefill_tokens += window.prefill_tokens
        self.steps += window.steps


class RouteLogSession:
    """One process's route log, from the device buffers to the writer process."""

    def __init__(
        self,
        config: LogConfig,
        meta: dict,
        rows: int,
        num_layers: int,
        top_k: int,
        num_experts: int,
        device: torch.device,
        n_real_source: torch.Tensor | None = None,
    ) -> None:
        """``n_real_source`` (counts mode): count inside the forward pass; the device
        tensor whose last element is each pass's real token count (``graph_counts.py``)."""
        self.path = config.path
        self.mode = config.mode
        self.layers: list[int] = meta["layers"]
        # who answers a control call: what the client needs to merge the answers
        self.identity = {
            key: meta[key]
            for key in ("ranks", "num_layers", "num_experts", "top_k", "model_name", "hostname")
        }
        self._interval_s = config.interval_s
        self._sample = config.sample
        self.buffers = RouteBuffers(rows, num_layers, top_k, device)
        self._cuda = device.type == "cuda"
        # the engine thread's device (``device`` may not name its index)
        self._device_index = torch.cuda.current_device() if self._cuda else None
        self._shape = (num_layers, top_k)
        slots = 0
        if self.mode == "routes":
            slot_bytes = rows * num_layers * top_k * 8
            slots = min(MAX_HOST_SLOTS, max(MIN_HOST_SLOTS, HOST_SLOT_BUDGET // slot_bytes))
        self._counts = DeviceExpertCounts(self.buffers, num_experts, staging_slots=slots)
        # what the logged layers count with, when they count in the graph
        self.counter: InGraphCounts | None = None
        if n_real_source is not None:
            if config.mode != "counts":
                raise ValueError("in-graph counting is for counts mode only")
            counts, weight_sums = self._counts.accumulators
            self.counter = InGraphCounts(counts, weight_sums, num_experts, n_real_source)
        self._slots = [_HostSlot(len(staging), self._cuda) for staging in self._counts.staging]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(slots):
            self._free.put(i)
        self._copy_stream = torch.cuda.Stream(self._device_index) if self._cuda and slots else None
        self._writer = WriterProcess(
            config.path, config.buffer_bytes, config.max_bytes, config.keep
        )
        self._writer.send(wire.json_frame(wire.HEADER, {**meta, "writer_pid": self._writer.pid}))
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._broken = False
        self._closed = False
        self.recording = False
        self.steps = 0  # passes recorded (the `step` of route lines)
        self.wait_s = 0.0
        self.waits = 0
        self.end_step_s = 0.0  # the engine thread's time in hooks.end_step (a self-profile)
        self.drain_cpu_s = 0.0  # the drain thread's CPU time (about its GIL time)
        # the open window (engine thread)
        self._window_start = self._window_last = 0.0
        self._window_steps = self._window_tokens = self._window_prefill = 0
        # filled by the drain thread
        self._lock = threading.Lock()
        shape = (num_layers, num_experts)
        self._record = _Totals.zeros(shape)  # since the last start (the dump)
        self._lifetime = _Totals.zeros(shape)  # since the engine started (metrics)
        self._last_window: dict | None = None
        self._route_lines = 0  # route lines handed to the writer (after sampling)
        self._drain = threading.Thread(target=self._drain_loop, name="moe-route-log", daemon=True)
        self._drain.start()
        if config.start_on:
            self.start(announce=False)  # a log that starts recording needs no control line

    # ---- the engine's step ------------------------------------------------------------

    def end_step(
        self,
        req_ids: list[str],
        tokens_per_req: np.ndarray,
        prompt_lens: np.ndarray,
        positions: np.ndarray,
        input_ids: torch.Tensor,
    ) -> None:
        """Record the forward pass that just ran (``len(positions)`` rows).

        ``input_ids`` is the pass's input buffer on the device: under asynchronous
        scheduling the ids of decode tokens exist only there.
        """
        if not self.recording or self._closed:
            return
        rows = len(positions)
        self.steps += 1
        if self._slots and not self._broken:
            index = self._free_slot()
            self._counts.add(rows, input_ids, slot=index)
            stream = torch.cuda.current_stream() if self._cuda else None
            self._pending.put(
                _Routes(index, stream, self.steps, req_ids, tokens_per_req, prompt_lens, positions)
            )
        elif self.counter is None or self.counter.take_uncounted():
            self._counts.add(rows)  # graphs counted in-graph passes; the rest count here
        self._window_steps += 1
        self._window_tokens += rows
        self._window_prefill += _prefill_tokens(tokens_per_req, prompt_lens, positions)
        self._window_last = time.time()
        if self._window_last - self._window_start >= self._interval_s:
            self._cut_window()

    def _free_slot(self) -> int:
        """A free staging slot; waits (and counts the wait) while every slot is in flight."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            started = time.perf_counter()
            index = self._free.get()
            self.wait_s += time.perf_counter() - started
            self.waits += 1
            return index

    def _cut_window(self) -> None:
        """Close the open window (its end: its last pass), on the engine's stream."""
        now = time.time()
        self._pending.put(
            _Window(
                self._window_start,
                max(self._window_last, self._window_start),
                self._window_steps,
                self._window_tokens,
                self._window_prefill,
                self._counts.snapshot(),
            )
        )
        self._window_start = now
        self._window_steps = self._window_tokens = self._window_prefill = 0

    def warm_up_done(self) -> None:
        """The engine's dummy passes (profile, warm-up, graph capture) are over:
        forget what they counted in the graph."""
        if self.counter is not None:
            self._forget_uncounted()
            logger.info("VLLM_LOG_MOE: warm-up over; counts inside the graphs start from zero")

    def _forget_uncounted(self) -> None:
        """Zero the in-graph counts, and forget a pass left to the end-of-pass kernel."""
        self._counts.zero()
        self.counter.take_uncounted()

    # ---- run-time control (engine thread, between passes) ------------------------------

    def start(self, announce: bool = True) -> dict:
        """Start recording; the dump's totals start again from zero."""
        if not self.recording and not self._closed:
            self._pending.put("reset")
            if announce:
                self._control("start")
            self._window_start = time.time()
            self._window_steps = self._window_tokens = self._window_prefill = 0
            if self.counter is not None:  # the layers counted every pass while stopped
                self._forget_uncounted()
            self.recording = True
        return self.status()

    def stop(self) -> dict:
        """Stop recording (the open window is written first); nothing is written until start."""
        if self.recording:
            self._cut_window()
            self._control("stop")
            self.recording = False
        return self.status()

    def dump(self) -> dict:
        """Counts since the last start, up to the last pass."""
        record = self._with_open_window("_record")
        return {
            **self.status(),
            "counts": record.counts.tolist(),
            "weight_sums": record.weight_sums.tolist(),
            "tokens": record.tokens,
            "prefill_tokens": record.prefill_tokens,
            "record_steps": record.steps,
            "since": record.since,
        }

    def totals(self) -> dict:
        """Counts since the engine started (the Prometheus counters), and the last window."""
        lifetime = self._with_open_window("_lifetime")
        with self._lock:
            last_window = self._last_window
        return {
            **self.status(),
            "counts": lifetime.counts.tolist(),
            "weight_sums": lifetime.weight_sums.tolist(),
            "tokens": lifetime.tokens,
            "last_window": last_window,
        }

    def _with_open_window(self, name: str) -> _Totals:
        """Totals ``name`` with every window still queued and the open one (from the device)."""
        self._flush()  # first: a queued start replaces self._record
        with self._lock:
            totals = getattr(self, name)
            merged = replace(
                totals, counts=totals.counts.copy(), weight_sums=totals.weight_sums.copy()
            )
        if self.recording:
            counts, weight_sums = self._counts.peek()
            merged.counts += counts
            merged.weight_sums += weight_sums
            merged.tokens += self._window_tokens
            merged.prefill_tokens += self._window_prefill
            merged.steps += self._window_steps
        return merged

    def status(self) -> dict:
        """On/off, mode, files on disk, route lines written, bytes."""
        files = naming.log_files(self.path)
        sizes = []
        for f in files:
            try:
                sizes.append(os.path.getsize(f))
            except OSError:  # rotated away meanwhile
                sizes.append(0)
        return {
            "recording": self.recording,
            "mode": self.mode,
            "layers": self.layers,
            "files": files,
            "bytes": sum(sizes),
            "route_lines": self._route_lines,
            "steps": self.steps,  # passes recorded so far: the last route line's step
        }

    def _control(self, action: str) -> None:
        self._pending.put(
            wire.json_frame(
                wire.LINE,
                {"type": "control", "action": action, "t": time.time(), "step": self.steps},
            )
        )

    def _flush(self) -> None:
        done = threading.Event()
        self._pending.put(done)
        done.wait()

    # ---- the drain thread ----------------------------------------------------------------

    def _drain_loop(self) -> None:
        if self._cuda:  # this thread's copies and events belong to the engine's device
            torch.cuda.set_device(self._device_index)
        try:
            self._drain_items()
        finally:
            self.drain_cpu_s = time.thread_time()

    def _drain_items(self) -> None:
        """Handle queued items in order. A pass's copy starts as soon as its item arrives;
        its wait and encoding come once nothing newer is queued (or before any other item),
        so a copy never waits behind the previous pass's encoding."""
        copying: collections.deque[_Routes] = collections.deque()
        while True:
            if copying:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    self._drain_routes(copying.popleft())
                    continue
            else:
                item = self._pending.get()
            if isinstance(item, _Routes):
                self._start_copy(item)
                copying.append(item)
                continue
            while copying:
                self._drain_routes(copying.popleft())
            if item is None:
                return
            if isinstance(item, _Window):
                self._drain_window(item)
            elif isinstance(item, threading.Event):
                item.set()
            elif item == "reset":
                with self._lock:
                    self._record = _Totals.zeros(self._record.counts.shape)
            elif not self._broken:
                self._send(item)  # a ready frame

    def _size(self, item: _Routes) -> tuple[int, int]:
        """How many staged ints ``item``'s pass has: its routes, then all with token ids."""
        layers, top_k = self._shape
        packed = layers * len(item.positions) * 2 * top_k
        return packed, packed + len(item.positions)

    def _start_copy(self, item: _Routes) -> None:
        """Start copying ``item``'s staged pass into its host slot."""
        slot, size = self._slots[item.slot], self._size(item)[1]
        staged = self._counts.staging[item.slot][:size]
        if self._copy_stream is None:
            slot.data[:size].copy_(staged)
            return
        slot.staged.record(item.stream)  # behind the staging launch, queued before item
        self._copy_stream.wait_event(slot.staged)
        with torch.cuda.stream(self._copy_stream):
            slot.data[:size].copy_(staged, non_blocking=True)
        slot.copied.record(self._copy_stream)

    def _drain_routes(self, item: _Routes) -> None:
        """Wait for ``item``'s copy, send its routes to the writer, free its slot."""
        slot = self._slots[item.slot]
        if slot.copied is not None:
            slot.copied.synchronize()
        if not self._broken:
            layers, top_k = self._shape
            rows, (packed, size) = len(item.positions), self._size(item)
            data = slot.data.numpy()
            frame = wire.routes_frame(
                item.step,
                item.req_ids,
                item.tokens_per_req,
                item.prompt_lens,
                item.positions,
                data[packed:size],
                data[:packed],
                (rows, layers, top_k),
            )
            self._send(frame)
            if self._sample >= 1.0:
                self._route_lines += rows * layers
            else:
                sampled = [is_sampled(r, self._sample) for r in item.req_ids]
                self._route_lines += int(item.tokens_per_req[sampled].sum()) * layers
        self._free.put(item.slot)

    def _drain_window(self, window: _Window) -> None:
        counts, weight_sums = window.snapshot.read()
        line = {
            "type": "counts",
            "t_start": round(window.t_start, 6),
            "t_end": round(window.t_end, 6),
            "steps": window.steps,
            "tokens": window.tokens,
            "prefill_tokens": window.prefill_tokens,
            "layers": self.layers,
            "counts": counts.tolist(),
            "weight_sums": np.round(weight_sums, 6).tolist(),
        }
        with self._lock:
            self._record.add(window, counts, weight_sums)
            self._lifetime.add(window, counts, weight_sums)
            if window.tokens:
                self._last_window = line
        if self.mode == "counts" and window.steps and not self._broken:
            self._send(wire.json_frame(wire.LINE, line))

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
        """Flush every queued step and window, write the trailer, let the writer finish."""
        if self._closed:
            return
        if self.recording:
            self._cut_window()
        self._closed = True
        self.recording = False
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
                        "end_step_s": round(self.end_step_s, 6),
                        "drain_cpu_s": round(self.drain_cpu_s, 6),
                    },
                )
            )
        self._writer.close()


def _prefill_tokens(
    tokens_per_req: np.ndarray, prompt_lens: np.ndarray, positions: np.ndarray
) -> int:
    """How many of the pass's rows are prompt tokens (position < the prompt's length).

    Runs on the engine thread after every pass: few numpy calls, no masks (a request
    with no rows gets some other row's position, and min(..., 0) makes it count 0)."""
    if not len(positions):
        return 0
    starts = np.cumsum(tokens_per_req) - tokens_per_req
    first = positions[np.minimum(starts, len(positions) - 1)]
    return int(np.minimum(np.maximum(prompt_lens - first, 0), tokens_per_req).sum())
