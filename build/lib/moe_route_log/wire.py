"""Frames on the pipe from the engine process to its writer process.

Each frame: a 16-byte head (magic, kind, payload length) and a payload.
HEADER, CLOSE and LINE carry a JSON object (LINE: one log line as it is, e.g. a
``counts`` window or a ``control`` event); ROUTES carries one forward pass's
routes as raw arrays, so the engine side never encodes text.

Pure Python + numpy: no torch, no vLLM.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"MRL3"
HEADER, ROUTES, CLOSE, LINE = 1, 2, 3, 4
_HEAD = struct.Struct("<4sB3xQ")
_ROUTES_HEAD = struct.Struct("<qIIII")  # step, tokens, layers, top_k, req json bytes
EXPERT_DTYPE = np.dtype("<i4")
WEIGHT_DTYPE = np.dtype("<f4")
POSITION_DTYPE = np.dtype("<i8")
COUNT_DTYPE = np.dtype("<i4")
TOKEN_DTYPE = np.dtype("<i4")


@dataclass
class RoutesFrame:
    """One forward pass: ``tokens_per_req[i]`` rows belong to ``req_ids[i]``."""

    step: int
    req_ids: list[str]
    tokens_per_req: np.ndarray
    prompt_lens: np.ndarray  # per request
    positions: np.ndarray
    token_ids: np.ndarray  # per token: the input token id
    expert_ids: np.ndarray  # [tokens, layers, top_k]
    weights: np.ndarray  # [tokens, layers, top_k]
    token_rows: np.ndarray | None = None  # rows in the pass, when only some are kept


def json_frame(kind: int, obj: dict) -> list[bytes]:
    """Buffers of a HEADER, CLOSE or LINE frame."""
    payload = json.dumps(obj).encode()
    return [_HEAD.pack(MAGIC, kind, len(payload)), payload]


def routes_frame(
    step: int,
    req_ids: list[str],
    tokens_per_req: np.ndarray,
    prompt_lens: np.ndarray,
    positions: np.ndarray,
    token_ids: memoryview | np.ndarray,
    packed: memoryview | np.ndarray,
    shape: tuple[int, int, int],
) -> list[bytes | memoryview]:
    """Buffers of a ROUTES frame; the big arrays are passed through uncopied.

    ``packed`` is ``[layers, tokens, 2 * top_k]`` int32 as the device buffer holds
    it (``pack_routes``); ``shape`` is ``(tokens, layers, top_k)``.
    """
    tokens, layers, top_k = shape
    reqs = json.dumps(req_ids).encode()
    parts: list[bytes | memoryview] = [
        _ROUTES_HEAD.pack(step, tokens, layers, top_k, len(reqs)),
        reqs,
        np.ascontiguousarray(tokens_per_req, dtype=COUNT_DTYPE).tobytes(),
        np.ascontiguousarray(prompt_lens, dtype=COUNT_DTYPE).tobytes(),
        np.ascontiguousarray(positions, dtype=POSITION_DTYPE).tobytes(),
        memoryview(token_ids).cast("B"),
        memoryview(packed).cast("B"),
    ]
    size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    return [_HEAD.pack(MAGIC, ROUTES, size), *parts]


def write_frame(fd: int, buffers: list[bytes | memoryview]) -> None:
    """Write every byte of ``buffers`` to ``fd`` (a blocking pipe)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def read_frame(stream) -> tuple[int, bytes] | None:
    """Next (kind, payload) from a binary stream; None at a clean end of stream."""
    head = stream.read(_HEAD.size)
    if not head:
        return None
    if len(head) < _HEAD.size:
        raise EOFError("stream ended inside a frame head")
    magic, kind, size = _HEAD.unpack(head)
    if magic != MAGIC:
        raise ValueError(f"bad frame magic {magic!r}")
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("stream ended inside a frame")
    return kind, payload


def decode_json(payload: bytes) -> dict:
    """Payload of a HEADER, CLOSE or LINE frame."""
    return json.loads(payload)


def peek_step(payload: bytes) -> int:
    """The pass number of a ROUTES payload, without decoding the rest."""
    return _ROUTES_HEAD.unpack_from(payload)[0]


def decode_routes(payload: bytes) -> RoutesFrame:
    """Payload of a ROUTES frame (arrays are views into ``payload``)."""
    step, tokens, layers, top_k, req_bytes = _ROUTES_HEAD.unpack_from(payload)
    offset = _ROUTES_HEAD.size
    req_ids = json.loads(payload[offset : offset + req_bytes])
    offset += req_bytes
    arrays = []
    for dtype, count in (
        (COUNT_DTYPE, len(req_ids)),
        (COUNT_DTYPE, len(req_ids)),
        (POSITION_DTYPE, tokens),
        (TOKEN_DTYPE, tokens),
        (EXPERT_DTYPE, tokens * layers * 2 * top_k),
    ):
        arrays.append(np.frombuffer(payload, dtype=dtype, count=count, offset=offset))
        offset += dtype.itemsize * count
    counts, prompt_lens, positions, token_ids, packed = arrays
    packed = packed.reshape(layers, tokens, 2 * top_k)
    return RoutesFrame(
        step,
        req_ids,
        counts,
        prompt_lens,
        positions,
        token_ids,
        packed[:, :, :top_k].transpose(1, 0, 2),
        packed[:, :, top_k:].view(WEIGHT_DTYPE).transpose(1, 0, 2),
    )


def pack_routes(expert_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[tokens, layers, top_k]`` ids and weights -> the device layout ``[layers, tokens, 2k]``."""
    ids = np.asarray(expert_ids, dtype=EXPERT_DTYPE)
    bits = np.asarray(weights, dtype=WEIGHT_DTYPE).view(EXPERT_DTYPE)
    return np.ascontiguousarray(np.concatenate([ids, bits], axis=2).transpose(1, 0, 2))
