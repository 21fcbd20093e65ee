"""Route lines from ROUTES frames, in the writer process or in a pool of encoder processes.

Encoding text is the writer's heavy work. With
``processes`` > 1 the writer forks that many encoder processes and hands them
passes in turn; ``EncoderPool.results`` gives the encoded passes back in the
order they came, so the log is the same whatever the pool's size. What depends
on the order of passes (which requests need a ``request`` line, when to rotate)
stays in the writer.

Pure Python + numpy: no torch, no vLLM.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import log_format, wire


@dataclass
class EncodedPass:
    """One pass's route lines, and what the writer needs to place them."""

    data: bytes
    step: int
    req_ids: list[str]  # the written (sampled) requests, in order
    prompt_lens: list[int]
    lines: int
    tokens: int


def encode_pass(payload: bytes, layers: Sequence[int], fraction: float) -> EncodedPass:
    """The route lines of a ROUTES frame's sampled requests (all when ``fraction`` is 1)."""
    r = _sampled(wire.decode_routes(payload), fraction)
    if r is None:
        return EncodedPass(b"", wire.peek_step(payload), [], [], 0, 0)
    data = log_format.encode_routes(
        r.step,
        layers,
        r.req_ids,
        r.tokens_per_req,
        r.positions,
        r.token_ids,
        r.expert_ids,
        r.weights,
        r.token_rows,
    )
    tokens, num_layers = r.expert_ids.shape[:2]
    return EncodedPass(
        data, r.step, list(r.req_ids), r.prompt_lens.tolist(), tokens * num_layers, tokens
    )


def _sampled(r: wire.RoutesFrame, fraction: float) -> wire.RoutesFrame | None:
    """The pass's rows of sampled requests only (None: no request of it is sampled)."""
    if fraction >= 1.0:
        return r
    keep = np.array([log_format.is_sampled(req, fraction) for req in r.req_ids], dtype=bool)
    if keep.all():
        return r
    if not keep.any():
        return None
    rows = np.repeat(keep, r.tokens_per_req)
    return wire.RoutesFrame(
        r.step,
        [req for req, k in zip(r.req_ids, keep, strict=True) if k],
        r.tokens_per_req[keep],
        r.prompt_lens[keep],
        r.positions[rows],
        r.token_ids[rows],
        r.expert_ids[rows],
        r.weights[rows],
        np.flatnonzero(rows),
    )


def _encoder_loop(conn) -> None:
    """An encoder process: (payload, layers, fraction) in, EncodedPass out, until None."""
    while (job := conn.recv()) is not None:
        payload, layers, fraction = job
        conn.send(encode_pass(payload, layers, fraction))


class EncoderPool:
    """Encodes passes, in this process (``processes`` 1) or in forked encoder processes."""

    def __init__(self, processes: int) -> None:
        self._conns = []
        self._procs = []
        if processes > 1:
            ctx = multiprocessing.get_context("fork")
            for _ in range(processes):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_encoder_loop, args=(child,), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        self._in_flight: deque = deque()  # connections with a pass, oldest first
        self._done: deque[EncodedPass] = deque()
        self._next = 0

    def submit(self, payload: bytes, layers: Sequence[int], fraction: float) -> None:
        """Queue one pass; its result comes out of ``results`` after every earlier one."""
        if not self._conns:
            self._done.append(encode_pass(payload, layers, fraction))
            return
        if len(self._in_flight) == len(self._conns):
            # one pass per encoder at most: an encoder never has a result unread when it is
            # sent the next pass, so neither side can block the other on a full pipe
            self._done.append(self._in_flight.popleft().recv())
        conn = self._conns[self._next]
        self._next = (self._next + 1) % len(self._conns)
        conn.send((payload, layers, fraction))
        self._in_flight.append(conn)

    def results(self, wait: bool = False) -> Iterator[EncodedPass]:
        """Encoded passes in order: those ready now, or (``wait``) every one submitted."""
        while self._done or (wait and self._in_flight):
            if not self._done:
                self._done.append(self._in_flight.popleft().recv())
            yield self._done.popleft()

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=10)
