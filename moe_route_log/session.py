"""Engine side of one process's route log: each pass, the open window, the controls.

After each forward pass the model runner calls ``end_step`` (only while
recording). It folds the pass into the device expert counts and, in routes mode,
packs the pass's real rows into a free device staging slot (one kernel launch:
the engine thread's only CUDA call per pass), hands the slot to the host drain
(``drain.py``) as a message and returns; the drain copies it to the host and on
to the writer process, off the engine thread.

In counts mode with in-graph counting (``counter``; ``graph_counts.py``) the
logged layers have already counted a pass that a CUDA graph ran: ``end_step``
only keeps the host's account of the open window (``window.py``); a pass that
ran outside the graphs, it counts with the end-of-pass kernel. Those layers
count every pass, also while nothing is recorded, so ``start`` and
``warm_up_done`` zero the accumulators (in stream order, before the next pass).

A window closes on the first pass ``interval_s`` after it opened (and on stop
and shutdown): its counts are cut in stream order and sent to the drain, which
adds them to the totals behind the dump and the metrics (``totals.py``) and, in
counts mode, writes them as a ``counts`` line. The dump and the metrics also read
the open window, from the device. ``start``, ``stop``, ``dump``, ``status`` and
``totals`` are the run-time controls (``control.py``); they run on the engine's
own thread between passes, like ``end_step``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import naming
from .counts import DeviceExpertCounts
from .drain import HostDrain, host_slot_count
from .envs import LogConfig
from .graph_counts import InGraphCounts
from .messages import ControlApplied, PassStaged, RecordStarted
from .recorder import RouteBuffers
from .totals import Totals
from .vllm_logging import get_logger
from .window import OpenWindow, prefill_tokens

logger = get_logger(__name__)


class RouteLogSession:
    """One process's route log, as the engine thread sees it."""

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
        """``meta``: the header's fields (``log_format.header_fields``); ``rows``: the most
        tokens a pass has. ``n_real_source`` (counts mode): count inside the forward pass;
        the device tensor whose last element is each pass's real token count
        (``graph_counts.py``)."""
        self.path = config.path
        self.mode = config.mode
        self.layers: list[int] = meta["layers"]
        # who answers a control call: what the client needs to merge the answers
        self.identity = {
            key: meta[key]
            for key in ("ranks", "num_layers", "num_experts", "top_k", "model_name", "hostname")
        }
        self._interval_s = config.interval_s
        self.buffers = RouteBuffers(rows, num_layers, top_k, device)
        self._cuda = device.type == "cuda"
        slots = host_slot_count(rows, num_layers, top_k) if self.mode == "routes" else 0
        self._counts = DeviceExpertCounts(self.buffers, num_experts, staging_slots=slots)
        # what the logged layers count with, when they count in the graph
        self.counter: InGraphCounts | None = None
        if n_real_source is not None:
            if config.mode != "counts":
                raise ValueError("in-graph counting is for counts mode only")
            counts, weight_sums = self._counts.accumulators
            self.counter = InGraphCounts(counts, weight_sums, num_experts, n_real_source)
        # the engine thread's device (``device`` may not name its index)
        device_index = torch.cuda.current_device() if self._cuda else None
        self._drain = HostDrain(
            config, meta, self._counts.staging, (num_layers, top_k), num_experts, device_index
        )
        self._free_slots = self._drain.free_slots
        self._closed = False
        self.recording = False
        self.steps = 0  # passes recorded (the `step` of route lines)
        self.end_step_s = 0.0  # the engine thread's time in end_step (a self-profile)
        self._window = OpenWindow(0.0)
        if config.start_on:
            self.start(announce=False)  # a log that starts recording needs no control line

    # ---- the engine's step ------------------------------------------------------------

    def end_step(
        self,
        req_ids: Sequence[str],
        tokens_per_req: np.ndarray,
        prompt_lens: np.ndarray,
        first_positions: np.ndarray,
        input_ids: torch.Tensor,
    ) -> None:
        """Record the forward pass that just ran: ``tokens_per_req[i]`` rows of request
        ``req_ids[i]`` (prompt length ``prompt_lens[i]``), at positions
        ``first_positions[i]``, ``first_positions[i] + 1``, ...

        The runner's own buffers may be passed as they are: only the first
        ``len(tokens_per_req)`` requests are read, and what is kept past the call is
        copied (the drain expands the rows' positions, off this thread). ``input_ids`` is
        the pass's input buffer on the device: under asynchronous scheduling the ids of
        decode tokens exist only there.
        """
        if not self.recording or self._closed:
            return
        began = time.perf_counter()
        reqs, rows = len(tokens_per_req), int(tokens_per_req.sum())
        prompt_lens, first_positions = prompt_lens[:reqs], first_positions[:reqs]
        self.steps += 1
        if self._counts.staging and not self._drain.broken:
            index = self._free_slots.take()
            self._counts.add(rows, input_ids, slot=index)
            stream = torch.cuda.current_stream() if self._cuda else None
            self._drain.put(
                PassStaged(
                    index,
                    stream,
                    self.steps,
                    list(req_ids[:reqs]),
                    np.copy(tokens_per_req),
                    np.copy(prompt_lens),
                    np.copy(first_positions),
                    rows,
                )
            )
        elif self.counter is None or self.counter.take_uncounted():
            self._counts.add(rows)  # graphs counted in-graph passes; the rest count here
        prefill = prefill_tokens(tokens_per_req, prompt_lens, first_positions)
        if self._window.add_pass(rows, prefill, self._interval_s):
            self._cut_window()
        self.end_step_s += time.perf_counter() - began

    def _cut_window(self) -> None:
        """Close the open window (its end: its last pass), on the engine's stream."""
        now = time.time()
        self._drain.put(self._window.close(self._counts.snapshot()))
        self._window = OpenWindow(now)

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
            self._drain.put(RecordStarted())
            if announce:
                self._control("start")
            self._window = OpenWindow(time.time())
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
        record = self._with_open_window(self._drain.totals.record)
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
        lifetime = self._with_open_window(self._drain.totals.lifetime)
        return {
            **self.status(),
            "counts": lifetime.counts.tolist(),
            "weight_sums": lifetime.weight_sums.tolist(),
            "tokens": lifetime.tokens,
            "last_window": self._drain.totals.last_window(),
        }

    def _with_open_window(self, read: Callable[[], Totals]) -> Totals:
        """The totals ``read`` returns, with every window still queued and the open one
        (read from the device)."""
        self._drain.flush()  # first: a queued start restarts the record
        totals = read()
        if self.recording:
            totals.add(self._window, *self._counts.peek())
        return totals

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
            "route_lines": self._drain.route_lines,
            "steps": self.steps,  # passes recorded so far: the last route line's step
        }

    def _control(self, action: str) -> None:
        self._drain.put(ControlApplied(action, time.time(), self.steps))

    def close(self) -> None:
        """Flush every queued pass and window, write the trailer, let the writer finish."""
        if self._closed:
            return
        if self.recording:
            self._cut_window()
        self._closed = True
        self.recording = False
        self._drain.close(self.steps, self.end_step_s)
