"""Route lines as columns: the block the reader yields and every analysis consumes.

A ``RouteBlock`` holds consecutive route lines of one log file as numpy arrays,
one entry per (token, logged layer) line, in file order. A block never splits a
token: all logged layers of one (step, token) are in the same block. Fields a
log's schema does not carry hold -1 (``pos`` before schema 2, ``tok`` and the
phase before schema 3).

Request ids are interned: ``request[i]`` indexes ``requests``, a table shared by
all blocks of one read (it only grows), so analyses can key state by int.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREFILL, DECODE, UNKNOWN_PHASE = 1, 0, -1


@dataclass
class RouteBlock:
    """Consecutive route lines of one file: ``n`` lines, ``top_k`` experts each."""

    source: int  # index of the file in the read (a rank of a multi-rank run)
    step: np.ndarray  # int64 [n]: the forward pass of that process
    token: np.ndarray  # int32 [n]: the row in that pass
    layer: np.ndarray  # int32 [n]: the decoder layer
    request: np.ndarray  # int32 [n]: index into ``requests`` (-1: schema 1, no request id)
    pos: np.ndarray  # int64 [n]: position in its request (-1: unknown)
    tok: np.ndarray  # int64 [n]: input token id (-1: unknown)
    phase: np.ndarray  # int8 [n]: PREFILL, DECODE or UNKNOWN_PHASE
    experts: np.ndarray  # int32 [n, top_k]: logical expert ids (order carries no meaning)
    weights: np.ndarray  # float32 [n, top_k]: router weights, paired with ``experts``
    requests: list[str]  # the interned request ids (vLLM's internal ids)

    def __len__(self) -> int:
        return len(self.layer)

    def top1(self) -> np.ndarray:
        """int32 [n]: the expert with the largest weight of each line."""
        best = np.argmax(self.weights, axis=1)
        return self.experts[np.arange(len(best)), best]

    def select(self, rows: np.ndarray | slice) -> RouteBlock:
        """The lines ``rows`` (a boolean mask, indices or a slice) as a block of their own."""
        return RouteBlock(
            self.source,
            *(getattr(self, name)[rows] for name in _ARRAYS),
            requests=self.requests,
        )

    @staticmethod
    def concat(blocks: list[RouteBlock]) -> RouteBlock:
        """Consecutive blocks of one file as one block."""
        first = blocks[0]
        return RouteBlock(
            first.source,
            *(np.concatenate([getattr(b, name) for b in blocks]) for name in _ARRAYS),
            requests=first.requests,
        )


_ARRAYS = ("step", "token", "layer", "request", "pos", "tok", "phase", "experts", "weights")


@dataclass
class CountsWindow:
    """One line of a counts log: how often each expert was chosen in a time window."""

    source: int  # index of the file in the read
    t_start: float  # window start, seconds since the epoch
    t_end: float  # window end
    steps: int  # forward passes in the window (-1: not recorded, a dump)
    tokens: int  # tokens routed in the window (each once per logged layer)
    prefill_tokens: int  # ... of which prompt tokens
    layers: np.ndarray  # int32 [L]: the layers of the rows below
    counts: np.ndarray  # int64 [L, num_experts]: times each expert was in a token's top-k
    weight_sums: np.ndarray  # float64 [L, num_experts]: sum of its router weights
