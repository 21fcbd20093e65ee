"""The route log's JSONL format: the one place where the shape of every line is set.

Line 1 is a header (``"type": "meta"``, ``header_fields``), then one
``"type": "route"`` line per (token, logged layer), then, on a clean shutdown, a
trailer (``"type": "end"``, ``trailer_fields``). A ``"type": "request"`` line (its
prompt length) comes before the route lines of a request whenever that request
was not in the previous logged pass, so every route line can be told prefill
(``pos < prompt_len``) or decode. Counts mode writes a ``"type": "counts"`` line
per window (``counts_line``); the run-time controls a ``"type": "control"`` line
(``control_line``). Route lines are encoded in bulk with numpy (no per-line
Python), because a 24-layer log of a busy engine runs to millions of lines a minute.

The engine process builds the header, counts and control lines and its part of
the trailer as dicts and sends them to the writer process, which writes them
(``header_line``, ``json_line``, ``trailer_line``) in order with the route lines.

Pure Python + numpy: no torch, no vLLM (the writer process imports it alone).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .naming import model_display_name

SCHEMA_VERSION = 3
WEIGHT_DECIMALS = 6  # router weights are written rounded to this many decimals
_DECIMALS = 6  # of times and weight sums in counts lines, and of the engine's trailer timings

# Lines are assembled in a byte matrix, one row per line, and padding bytes are
# squeezed out at the end. JSON text never contains a NUL byte (json.dumps
# escapes it), so NUL can serve as the padding marker.
_PAD = 0
_LINES_PER_BLOCK = 65536  # bounds the byte matrix to ~15 MB


@dataclass(frozen=True)
class Ranks:
    """Where the logging process sits in the engine's parallel layout (the header's
    ``ranks``). Only tensor-parallel rank 0 logs, so ``tp`` is always 0."""

    dp: int
    dp_size: int
    pp: int
    pp_size: int
    tp_size: int
    ep: int
    ep_size: int
    eplb: bool


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class RunFacts:
    """What the header records about one logging process's run, as the engine knows it."""

    vllm_version: str
    model_id: str
    seed: int | None
    run_label: str | None  # VLLM_LOG_MOE_REQ_ID (the header's req_id)
    run_id: str
    layers: list[int]  # logged by this process
    layer_choice: str  # which rule chose them
    num_layers: int  # decoder layers of the model
    moe_layers: list[int]  # this process's MoE layers
    num_experts: int
    top_k: int
    routing: dict  # routing.describe
    ranks: Ranks
    hostname: str
    platform: str
    enforce_eager: bool
    prefix_caching: bool
    log_path: str
    mode: str
    counts_path: str  # where counts are made: in_graph or end_of_pass
    sample: float
    pid: int = field(default_factory=os.getpid)
    created: str = field(default_factory=_utc_now)


def header_fields(run: RunFacts) -> dict:
    """The header's fields in their order (the writer adds ``type``, ``schema`` and, once
    started, the engine ``writer_pid``)."""
    return {
        "vllm_version": run.vllm_version,
        "model_id": run.model_id,
        "model_name": model_display_name(run.model_id),
        "seed": run.seed,
        "req_id": run.run_label,
        "run_id": run.run_id,
        "layers": run.layers,
        "layer_choice": run.layer_choice,
        "num_layers": run.num_layers,
        "moe_layers": run.moe_layers,
        "num_experts": run.num_experts,
        "top_k": run.top_k,
        "routing": run.routing,
        "expert_ids": "logical",
        "weights_decimals": WEIGHT_DECIMALS,
        "ranks": {
            "dp": run.ranks.dp,
            "dp_size": run.ranks.dp_size,
            "pp": run.ranks.pp,
            "pp_size": run.ranks.pp_size,
            "tp": 0,
            "tp_size": run.ranks.tp_size,
            "ep": run.ranks.ep,
            "ep_size": run.ranks.ep_size,
            "eplb": run.ranks.eplb,
        },
        "hostname": run.hostname,
        "pid": run.pid,
        "created": run.created,
        "platform": run.platform,
        "enforce_eager": run.enforce_eager,
        "prefix_caching": run.prefix_caching,
        "log_path": run.log_path,
        "mode": run.mode,
        "counts_path": run.counts_path,
        "sample": run.sample,
    }


def header_line(meta: dict) -> bytes:
    """The first line of a log: ``meta`` plus ``type`` and ``schema``."""
    return _json_line({"type": "meta", "schema": SCHEMA_VERSION, **meta})


def counts_line(
    *,
    t_start: float,
    t_end: float,
    steps: int,
    tokens: int,
    prefill_tokens: int,
    layers: list[int],
    counts: np.ndarray,
    weight_sums: np.ndarray,
) -> dict:
    """One window of counts mode: per logged layer and expert, the tokens that chose it
    (``counts``) and the sum of their weights, over ``steps`` passes."""
    return {
        "type": "counts",
        "t_start": round(t_start, _DECIMALS),
        "t_end": round(t_end, _DECIMALS),
        "steps": steps,
        "tokens": tokens,
        "prefill_tokens": prefill_tokens,
        "layers": layers,
        "counts": counts.tolist(),
        "weight_sums": np.round(weight_sums, _DECIMALS).tolist(),
    }


def control_line(action: str, t: float, step: int) -> dict:
    """A run-time control (start, stop) at time ``t``, after pass ``step``."""
    return {"type": "control", "action": action, "t": t, "step": step}


def trailer_engine_fields(
    *, steps: int, wait_s: float, waits: int, end_step_s: float, drain_cpu_s: float
) -> dict:
    """The engine's part of the trailer: passes recorded and its self-profile (the
    engine thread's waits for a free slot and time in ``end_step``, the drain's CPU)."""
    return {
        "steps": steps,
        "engine_wait_s": round(wait_s, _DECIMALS),
        "engine_waits": waits,
        "end_step_s": round(end_step_s, _DECIMALS),
        "drain_cpu_s": round(drain_cpu_s, _DECIMALS),
    }


def trailer_fields(
    engine: dict,
    *,
    lines: int,
    tokens: int,
    buffer_peak_bytes: int,
    buffer_full_waits: int,
    encoders: int,
    cpu_s: float,
    part: int | None = None,
) -> dict:
    """A cleanly closed log's trailer: the engine's fields, then the writer's account
    (route lines and tokens in this file, its buffer, encoders, CPU time)."""
    fields = {
        **engine,
        "lines": lines,
        "tokens": tokens,
        "writer_buffer_peak_mb": round(buffer_peak_bytes / 2**20, 3),
        "writer_buffer_full_waits": buffer_full_waits,
        "writer_encoders": encoders,
        "writer_cpu_s": round(cpu_s, 3),
    }
    if part is not None:
        fields["part"] = part
    return fields


def rotated_trailer_fields(part: int, lines: int, tokens: int) -> dict:
    """The trailer of a part the log rotated away from (its route lines and tokens)."""
    return {"reason": "rotated", "part": part, "lines": lines, "tokens": tokens}


def trailer_line(stats: dict) -> bytes:
    """The last line of a cleanly closed log (or part)."""
    return _json_line({"type": "end", **stats})


def request_lines(step: int, req_ids: Sequence[str], prompt_lens: Sequence[int]) -> bytes:
    """One ``request`` line per request: its prompt length, seen at pass ``step``."""
    return b"".join(
        b'{"type":"request","step":%d,"req_id":%s,"prompt_len":%d}\n'
        % (step, json.dumps(r).encode(), int(n))
        for r, n in zip(req_ids, prompt_lens, strict=True)
    )


def json_line(obj: dict) -> bytes:
    """Any other line (``counts``, ``control``), written as given."""
    return _json_line(obj)


def is_sampled(req_id: str, fraction: float) -> bool:
    """Whether request ``req_id``'s routes are written at sampling ``fraction``.

    Decided by a CRC-32 of the caller's part of the id (vLLM appends ``-`` and 8
    random hex digits internally), so a request id is in or out on every run.
    """
    if fraction >= 1.0:
        return True
    caller_id = req_id.rsplit("-", 1)[0]
    return zlib.crc32(caller_id.encode()) < fraction * 2**32


def _json_line(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def encode_routes(
    step: int,
    layers: Sequence[int],
    req_ids: Sequence[str],
    tokens_per_req: np.ndarray,
    positions: np.ndarray,
    token_ids: np.ndarray,
    expert_ids: np.ndarray,
    weights: np.ndarray,
    token_rows: np.ndarray | None = None,
) -> bytes:
    """Route lines of one forward pass, token-major (token 0's layers first).

    ``expert_ids`` and ``weights`` are ``[tokens, len(layers), top_k]``;
    ``tokens_per_req[i]`` consecutive rows belong to ``req_ids[i]``;
    ``positions[t]`` is row t's position in its request, ``token_ids[t]`` the
    token id the model read there. ``token_rows`` (default 0, 1, ...) are the rows'
    indices in the pass (the ``token`` field) when only some rows are written.
    """
    n, num_layers, _ = expert_ids.shape
    if weights.shape != expert_ids.shape:
        raise ValueError(f"weights {weights.shape} != expert_ids {expert_ids.shape}")
    if len(layers) != num_layers or len(positions) != n or len(token_ids) != n:
        raise ValueError("layers/positions/token ids do not match the routes' shape")
    if int(np.sum(tokens_per_req)) != n or len(req_ids) != len(tokens_per_req):
        raise ValueError("tokens_per_req does not add up to the number of tokens")
    if n == 0:
        return b""
    req_of_token = np.repeat(np.arange(len(req_ids)), tokens_per_req)
    req_table = _string_table([json.dumps(r) for r in req_ids])
    if token_rows is None:
        token_rows = np.arange(n, dtype=np.int64)
    chunks = []
    per_block = max(1, _LINES_PER_BLOCK // num_layers)
    for start in range(0, n, per_block):
        rows = slice(start, min(n, start + per_block))
        chunks.append(
            _encode_block(
                step,
                np.asarray(token_rows[rows], dtype=np.int64),
                np.asarray(layers, dtype=np.int64),
                req_table[req_of_token[rows]],
                np.asarray(positions[rows], dtype=np.int64),
                np.asarray(token_ids[rows], dtype=np.int64),
                np.asarray(expert_ids[rows], dtype=np.int64),
                np.asarray(weights[rows], dtype=np.float64),
            )
        )
    return b"".join(chunks)


def _encode_block(step, tokens, layers, req_strings, positions, token_ids, ids, weights) -> bytes:
    n, num_layers, top_k = ids.shape
    per_token = lambda a: np.repeat(a, num_layers, axis=0)  # noqa: E731
    lines = n * num_layers
    pieces = [
        _const(f'{{"type":"route","step":{step},"token":', lines),
        per_token(_ints(tokens)),
        _const(',"layer":', lines),
        np.tile(_ints(layers), (n, 1)),
        _const(',"req_id":', lines),
        per_token(req_strings),
        _const(',"pos":', lines),
        per_token(_ints(positions)),
        _const(',"tok":', lines),
        per_token(_ints(token_ids)),
        _const(',"experts":[', lines),
    ]
    pieces.append(_int_list(ids.reshape(lines, top_k)))
    pieces.append(_const('],"weights":[', lines))
    pieces.append(_decimal_list(weights.reshape(lines, top_k)))
    pieces.append(_const("]}\n", lines))
    matrix = np.concatenate(pieces, axis=1).ravel()
    return matrix[matrix != _PAD].tobytes()


def _const(text: str, lines: int) -> np.ndarray:
    row = np.frombuffer(text.encode(), dtype=np.uint8)
    return np.broadcast_to(row, (lines, len(row)))


def _ints(values: np.ndarray) -> np.ndarray:
    """Non-negative ints -> ASCII digit rows, leading zeros as padding."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and values.min() < 0:
        raise ValueError("negative value in an unsigned field of a route line")
    width = len(str(int(values.max()))) if values.size else 1
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    quotients = values[:, None] // powers
    digits = (quotients % 10 + 48).astype(np.uint8)
    digits[(quotients == 0) & (powers > 1)] = _PAD
    return digits


def _lookup_table(width: int, size: int) -> np.ndarray:
    """``[size, width]`` ASCII digit rows of 0..size-1, leading zeros as padding."""
    return _ints(np.arange(size))[:, -width:] if size > 1 else np.full((1, width), 48, np.uint8)


_SMALL = 1000  # ids below this come from a table: expert ids, layers, whole weights
_SMALL_DIGITS = _lookup_table(3, _SMALL)
_FRACTIONS: np.ndarray | None = None  # [10**WEIGHT_DECIMALS, WEIGHT_DECIMALS], built once


def _fraction_table() -> np.ndarray:
    """Every fraction 0..999999 as its decimals with trailing zeros dropped (one kept)."""
    global _FRACTIONS
    if _FRACTIONS is None:
        frac = np.arange(10**WEIGHT_DECIMALS, dtype=np.int64)
        powers = 10 ** np.arange(WEIGHT_DECIMALS - 1, -1, -1, dtype=np.int64)
        digits = (frac[:, None] // powers % 10 + 48).astype(np.uint8)
        trailing = (digits == ord("0")) & (frac[:, None] % powers == 0)
        trailing[:, 0] = False  # keep one decimal: 1.0, 0.5
        digits[trailing] = _PAD
        _FRACTIONS = digits
    return _FRACTIONS


def _int_list(values: np.ndarray) -> np.ndarray:
    """``[lines, k]`` non-negative ints -> rows ``a,b,...`` (the JSON list's inside)."""
    lines, k = values.shape
    if values.size and values.min() >= 0 and values.max() < _SMALL:
        cells = np.empty((lines, k, 4), dtype=np.uint8)
        cells[:, :, :3] = _SMALL_DIGITS[values]
    else:
        digits = _ints(values.ravel())
        cells = np.empty((lines, k, digits.shape[1] + 1), dtype=np.uint8)
        cells[:, :, :-1] = digits.reshape(lines, k, -1)
    cells[:, :, -1] = ord(",")
    cells[:, -1, -1] = _PAD
    return cells.reshape(lines, -1)


def _decimal_list(values: np.ndarray) -> np.ndarray:
    """``[lines, k]`` floats -> rows of JSON numbers with WEIGHT_DECIMALS decimals, ``a,b,...``."""
    lines, k = values.shape
    cells = _decimals(values.ravel())
    out = np.empty((lines, k, cells.shape[1] + 1), dtype=np.uint8)
    out[:, :, :-1] = cells.reshape(lines, k, -1)
    out[:, :, -1] = ord(",")
    out[:, -1, -1] = _PAD
    return out.reshape(lines, -1)


def _decimals(values: np.ndarray) -> np.ndarray:
    """Floats -> JSON numbers with WEIGHT_DECIMALS decimals, trailing zeros dropped."""
    if not np.all(np.isfinite(values)):
        raise ValueError("non-finite router weight")
    scaled = np.rint(np.abs(values) * 10**WEIGHT_DECIMALS).astype(np.int64)
    whole, frac = np.divmod(scaled, 10**WEIGHT_DECIMALS)
    negative = (values < 0) & (scaled > 0)  # -0.0000001 rounds to 0.0, unsigned
    whole_digits = _SMALL_DIGITS[whole] if whole.size and whole.max() < _SMALL else _ints(whole)
    width = 1 + whole_digits.shape[1] + 1 + WEIGHT_DECIMALS
    out = np.empty((len(values), width), dtype=np.uint8)
    out[:, 0] = np.where(negative, ord("-"), _PAD)
    out[:, 1 : 1 + whole_digits.shape[1]] = whole_digits
    out[:, -WEIGHT_DECIMALS - 1] = ord(".")
    out[:, -WEIGHT_DECIMALS:] = _fraction_table()[frac]
    return out


def _string_table(strings: Sequence[str]) -> np.ndarray:
    """ASCII strings -> one padded byte row each."""
    encoded = [s.encode("ascii") for s in strings]
    width = max(len(e) for e in encoded)
    table = np.zeros((len(encoded), width), dtype=np.uint8)
    for i, e in enumerate(encoded):
        table[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    return table
