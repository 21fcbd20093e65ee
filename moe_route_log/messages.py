"""What the engine thread tells the host drain: one small typed message per kind.

The engine thread puts them on the drain's queue in the order things happen
(``session.py``); the drain thread handles them in that order, one handler per
kind (``drain.py``). Nothing else crosses between the two threads but the
totals the controls read (``totals.py``) and the free staging slots.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from .counts import Snapshot


@dataclass(slots=True)
class PassStaged:
    """Routes mode: a pass's routes and token ids wait in device staging slot ``slot``.

    The arrays are the drain's own copies (the runner reuses its buffers)."""

    slot: int
    stream: torch.cuda.Stream | None  # the engine's, where the pass was staged
    step: int
    req_ids: list[str]
    tokens_per_req: np.ndarray
    prompt_lens: np.ndarray
    first_positions: np.ndarray  # per request; rows are expanded when the pass is written
    rows: int


@dataclass(slots=True)
class WindowClosed:
    """A window was cut; its counts are on their way to the host (``snapshot``)."""

    t_start: float
    t_end: float  # the time of its last pass
    steps: int
    tokens: int
    prefill_tokens: int
    snapshot: Snapshot


@dataclass(slots=True)
class RecordStarted:
    """Recording started: the dump's totals start again from zero."""


@dataclass(slots=True)
class ControlApplied:
    """A control (start, stop) ran at time ``t``, after pass ``step``: a control line."""

    action: str
    t: float
    step: int


@dataclass(slots=True)
class Flush:
    """Set ``done`` once everything queued before it is handled (the controls read totals)."""

    done: threading.Event


@dataclass(slots=True)
class Shutdown:
    """Nothing follows: handle what is queued, then end the drain thread."""


Message = PassStaged | WindowClosed | RecordStarted | ControlApplied | Flush | Shutdown
