"""Counts of closed windows, summed on the host: what the dump and the metrics read.

The drain thread adds each closed window; the controls read copies on the
engine thread, so a lock guards the sums. Two sums: since recording last started
(the dump's) and since the engine started (the Prometheus counters'); and the
last window that had tokens, as its counts line.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np


class PassAccount(Protocol):
    """A window's host account (open or closed)."""

    steps: int
    tokens: int
    prefill_tokens: int


@dataclass
class Totals:
    """Counts summed over windows (int64; float64 weight sums)."""

    counts: np.ndarray
    weight_sums: np.ndarray
    tokens: int = 0
    prefill_tokens: int = 0
    steps: int = 0
    since: float = 0.0  # when these totals started

    @classmethod
    def zeros(cls, shape: tuple[int, int]) -> Totals:
        return cls(np.zeros(shape, np.int64), np.zeros(shape, np.float64), since=time.time())

    def add(self, window: PassAccount, counts: np.ndarray, weight_sums: np.ndarray) -> None:
        self.counts += counts
        self.weight_sums += weight_sums
        self.tokens += window.tokens
        self.prefill_tokens += window.prefill_tokens
        self.steps += window.steps

    def copy(self) -> Totals:
        return replace(self, counts=self.counts.copy(), weight_sums=self.weight_sums.copy())


class WindowTotals:
    """The sums of closed windows: written by the drain thread, read by the controls."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self._lock = threading.Lock()
        self._record = Totals.zeros(shape)  # since the last start (the dump)
        self._lifetime = Totals.zeros(shape)  # since the engine started (metrics)
        self._last_window: dict | None = None

    def restart_record(self) -> None:
        with self._lock:
            self._record = Totals.zeros(self._record.counts.shape)

    def add(
        self, window: PassAccount, counts: np.ndarray, weight_sums: np.ndarray, line: dict
    ) -> None:
        """Add a closed window; ``line`` (its counts line) is the last window if it had tokens."""
        with self._lock:
            self._record.add(window, counts, weight_sums)
            self._lifetime.add(window, counts, weight_sums)
            if window.tokens:
                self._last_window = line

    def record(self) -> Totals:
        """A copy of the sums since the last start."""
        with self._lock:
            return self._record.copy()

    def lifetime(self) -> Totals:
        """A copy of the sums since the engine started."""
        with self._lock:
            return self._lifetime.copy()

    def last_window(self) -> dict | None:
        with self._lock:
            return self._last_window
