"""The open window: the engine thread's account of the passes since it opened.

A window opens when recording starts and whenever the previous one closes; the
first pass ``interval_s`` after it opened closes it (so do stop and shutdown).
Its passes, tokens and prompt tokens are counted here on the host, after every
pass; its expert counts stay on the device until it closes
(``counts.DeviceExpertCounts.snapshot``). One object, so that opening a window
is one assignment and closing it one message (``messages.WindowClosed``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .counts import Snapshot
from .messages import WindowClosed


@dataclass(slots=True)
class OpenWindow:
    """The passes since the window opened at ``t_start``, counted on the host."""

    t_start: float
    t_last: float = 0.0  # the time of its last pass
    steps: int = 0
    tokens: int = 0
    prefill_tokens: int = 0

    def add_pass(self, rows: int, prefill_tokens: int, interval_s: float) -> bool:
        """Count a pass of ``rows`` tokens; whether the window is now due to close."""
        self.steps += 1
        self.tokens += rows
        self.prefill_tokens += prefill_tokens
        self.t_last = time.time()
        return self.t_last - self.t_start >= interval_s

    def close(self, snapshot: Snapshot) -> WindowClosed:
        """The window as closed (it ends at its last pass), with its device counts."""
        return WindowClosed(
            self.t_start,
            max(self.t_last, self.t_start),
            self.steps,
            self.tokens,
            self.prefill_tokens,
            snapshot,
        )


def prefill_tokens(
    tokens_per_req: np.ndarray, prompt_lens: np.ndarray, first_positions: np.ndarray
) -> int:
    """How many of the pass's rows are prompt tokens (position < the prompt's length):
    a request's rows from ``first_positions[i]`` on, as many as are below its prompt length.

    Runs on the engine thread after every pass: three numpy calls, no masks."""
    return int(np.minimum(np.maximum(prompt_lens - first_positions, 0), tokens_per_req).sum())
