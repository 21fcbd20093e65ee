"""vLLM's own routed experts (``enable_return_routed_experts``), read back as route columns.

vLLM (0.3x and later, Model Runner V2) returns on each choice of an OpenAI completion or
chat response, and on each ``CompletionOutput`` of ``LLM.generate``, ``routed_experts``:
the expert ids each token was routed to, ids only (no router weights), as base64 of a
``.npy`` array ``[tokens, num_hidden_layers, top_k]`` (uint8 up to 256 experts, else
uint16). Its rows are positions ``routed_experts_prompt_start`` (a request parameter, 0 by
default) up to the last but one token: the last sampled token never goes through the
model. Prompt tokens served from the prefix cache have rows too (routed when first
computed). A capture file holds one response body per line, as the ``openai`` client
returns it (``response.model_dump()``); ``running/routed_experts.py`` writes
``RequestOutput``s in the same shape.

Each choice becomes one request (``<response id>-<choice index>``). Its rows are placed
at their positions from the prompt and output lengths: ``prompt_token_ids`` and
``token_ids`` when the request asked ``return_token_ids`` (which also gives each row's
input token id), else the response's ``usage`` when it has one choice. Positions below
the prompt length are prefill, the rest decode. The layers whose ids are all 0 in the
first captured response are not routed (dense layers, which vLLM leaves unfilled). A
response that breaks these rules is reported with its line number and skipped (with
``strict``: fatal), as a bad log line is; a file none of whose responses has
``routed_experts`` is refused.

Blocks are token-major like a route log's: ``step`` is the request's number in the file
(a capture has no forward passes), ``token`` its position.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moe_profiler.reading.columns import DECODE, PREFILL, RouteBlock
from moe_profiler.reading.routes import RouteLogError, report_problem

_ROWS_PER_BLOCK = 1 << 16  # route lines gathered before a block is handed on


def encode_routed_experts(ids: np.ndarray) -> str:
    """``ids`` as vLLM sends them: base64 of the ``.npy`` bytes (``numpy2base64``)."""
    buffer = io.BytesIO()
    np.save(buffer, ids, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_routed_experts(text: str) -> np.ndarray:
    """A choice's ``routed_experts`` as an array (ValueError if it is not a ``.npy`` array)."""
    try:
        return np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False)
    except (binascii.Error, ValueError, TypeError, EOFError) as e:
        raise ValueError(f"routed_experts is not base64 of a .npy array ({e})") from None


def is_response(first: object) -> bool:
    """Whether a parsed first line is an OpenAI completion or chat response body."""
    return isinstance(first, dict) and isinstance(first.get("choices"), list)


class BadResponse(ValueError):
    """A response (or one of its choices) that cannot be read, and why."""


@dataclass
class CapturedRequest:
    """One choice, placed: its rows ``[tokens, layers, top_k]`` and where they sit."""

    name: str
    ids: np.ndarray
    positions: np.ndarray  # int64 [tokens]
    prompt_len: int
    token_ids: np.ndarray | None  # int64 [tokens]: the token read at each position


@dataclass
class NativeCapture:
    """A file of responses with vLLM's ``routed_experts``: its shape, and what was read."""

    path: Path
    num_layers: int  # the model's decoder layers (the arrays' second axis)
    top_k: int
    layers: list[int]  # the routed layers (ids not all 0 in the first captured response)
    model: str | None  # the response's ``model`` (the served name)
    token_ids: bool  # whether its requests asked return_token_ids (the first one did)
    responses: int = 0  # response lines read
    requests: int = 0  # choices read
    tokens: int = 0  # rows read (tokens, each with every routed layer)
    problems: list[str] = field(default_factory=list)


def open_capture(path: Path) -> NativeCapture:
    """The capture in ``path``, its shape taken from the first response with routed experts."""
    for _, body, _ in _lines(path):
        if body is None:
            continue  # reported when the file is read
        captured = (c for c in body["choices"] if isinstance(c, dict) and c.get("routed_experts"))
        choice = next(captured, None)
        if choice is None:
            continue
        try:
            ids = _ids_array(choice["routed_experts"])
        except BadResponse as e:
            raise RouteLogError(f"{path}: {e}") from None
        routed = np.flatnonzero(ids.any(axis=(0, 2)))
        if not len(routed):
            raise RouteLogError(
                f"{path}: routed_experts holds only zeros: nothing was captured "
                "(vLLM 0.15.1's own capture returns zeros)"
            )
        prompt = choice.get("prompt_token_ids", body.get("prompt_token_ids"))
        return NativeCapture(
            path,
            num_layers=ids.shape[1],
            top_k=ids.shape[2],
            layers=routed.tolist(),
            model=body.get("model"),
            token_ids=prompt is not None and choice.get("token_ids") is not None,
        )
    raise RouteLogError(
        f"{path}: no response in it has routed_experts: start vllm serve with "
        "--enable-return-routed-experts (vLLM 0.3x and later puts them on each choice)"
    )


def iter_capture_blocks(
    capture: NativeCapture,
    num_experts: int,
    source: int = 0,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Iterator[RouteBlock]:
    """The captured routes as blocks of route lines (no weights: NaN), request by request."""
    capture.responses = capture.requests = capture.tokens = 0
    capture.problems = []
    names: list[str] = []
    pending: list[tuple[int, CapturedRequest]] = []
    rows = 0
    for line_no, body, why in _lines(capture.path):
        try:
            if body is None:
                raise BadResponse(why)
            placed = list(_requests(body, capture, num_experts))
        except BadResponse as e:
            report_problem(capture.problems, f"{capture.path}:{line_no}: {e}", strict, warn)
            continue
        capture.responses += 1
        for request in placed:
            names.append(request.name)
            pending.append((len(names) - 1, request))
            rows += len(request.positions)
            capture.requests += 1
            capture.tokens += len(request.positions)
        if rows * len(capture.layers) >= _ROWS_PER_BLOCK:
            yield _block(pending, capture, names, source)
            pending, rows = [], 0
    if pending:
        yield _block(pending, capture, names, source)


def _lines(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, parsed body or None, why not) of each non-blank line."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except ValueError:
                why = "not valid JSON" if line.endswith(b"\n") else "truncated last line"
                yield line_no, None, why
                continue
            if not is_response(body):
                yield line_no, None, "not an OpenAI completion or chat response (no 'choices')"
                continue
            yield line_no, body, ""


def _ids_array(text: object) -> np.ndarray:
    if not isinstance(text, str):
        raise BadResponse("a choice has no routed_experts (aborted before any forward pass?)")
    try:
        ids = decode_routed_experts(text)
    except ValueError as e:
        raise BadResponse(str(e)) from None
    if ids.ndim != 3 or ids.dtype.kind not in "iu":
        shape = list(ids.shape)
        raise BadResponse(f"routed_experts is {ids.dtype} {shape}, not ids [tokens, layers, top_k]")
    return ids


def _requests(body: dict, capture: NativeCapture, num_experts: int) -> Iterator[CapturedRequest]:
    """Each choice of ``body``, checked and placed (BadResponse: skip the whole response)."""
    choices = body["choices"]
    for i, choice in enumerate(choices):
        index = choice.get("index", i) if isinstance(choice, dict) else i
        ids = _ids_array(choice.get("routed_experts") if isinstance(choice, dict) else None)
        if ids.shape[1:] != (capture.num_layers, capture.top_k):
            raise BadResponse(
                f"routed_experts is [tokens, {ids.shape[1]}, {ids.shape[2]}], the file's "
                f"first response [tokens, {capture.num_layers}, {capture.top_k}]"
            )
        _check_ids(ids, capture.layers, num_experts)
        yield _place(body, choice, len(choices), ids, capture, f"{body.get('id')}-{index}")


def _check_ids(ids: np.ndarray, layers: list[int], num_experts: int) -> None:
    others = np.setdiff1d(np.arange(ids.shape[1]), layers)
    filled = others[ids[:, others].any(axis=(0, 2))]
    if len(filled):
        raise BadResponse(
            f"layer {int(filled[0])} has expert ids, but not in the file's first response"
        )
    routed = ids[:, layers].astype(np.int64)
    if routed.size and routed.max() >= num_experts:
        raise BadResponse(f"expert id {int(routed.max())}: the model has {num_experts} experts")
    k = routed.shape[2]
    ordered = np.sort(routed, axis=2)
    repeated = (ordered[:, :, 1:] == ordered[:, :, :-1]).any(axis=2) if k > 1 else None
    if repeated is not None and repeated.any():
        row, col = (int(x[0]) for x in np.nonzero(repeated))
        raise BadResponse(
            f"row {row}, layer {layers[col]}: expert ids {routed[row, col].tolist()} are not "
            f"{k} distinct ids (all 0: not captured)"
        )


def _place(
    body: dict, choice: dict, choices: int, ids: np.ndarray, capture: NativeCapture, name: str
) -> CapturedRequest:
    """Where the rows of ``ids`` sit: positions from the prompt and output lengths."""
    prompt = choice.get("prompt_token_ids", body.get("prompt_token_ids"))
    outputs = choice.get("token_ids")
    if capture.token_ids and (prompt is None or outputs is None):
        raise BadResponse(
            "no prompt_token_ids/token_ids, unlike the file's first response "
            "(some requests asked return_token_ids, some did not)"
        )
    usage = body.get("usage") or {}
    prompt_len = _length(prompt, usage, "prompt_tokens", choices)
    output_len = _length(outputs, usage, "completion_tokens", choices)
    end = prompt_len + output_len - 1  # the last sampled token is never routed
    start = end - len(ids)
    if not 0 <= start <= prompt_len:
        raise BadResponse(
            f"{len(ids)} rows do not fit a prompt of {prompt_len} and {output_len} output tokens"
        )
    positions = np.arange(start, end, dtype=np.int64)
    token_ids = None
    if capture.token_ids:
        token_ids = np.asarray(list(prompt) + list(outputs), dtype=np.int64)[start:end]
    return CapturedRequest(name, ids, positions, prompt_len, token_ids)


def _length(ids: list | None, usage: dict, key: str, choices: int) -> int:
    """How many ids there are: ``ids``' length, else the response's ``usage[key]``."""
    if ids is not None:
        return len(ids)
    value = usage.get(key)
    if choices != 1 or not isinstance(value, int):
        raise BadResponse(
            "cannot place its rows: no prompt_token_ids/token_ids (ask with "
            "return_token_ids) and no usage of a single choice"
        )
    return value


def _block(
    pending: list[tuple[int, CapturedRequest]], capture: NativeCapture, names: list[str], source
) -> RouteBlock:
    """Route lines of whole requests, token-major (each position's layers together)."""
    layers = np.asarray(capture.layers, dtype=np.int32)
    per_token = len(layers)
    parts = {name: [] for name in ("step", "request", "pos", "tok", "phase", "experts")}
    for code, request in pending:
        n = len(request.positions)
        parts["step"].append(np.full(n, code + 1, dtype=np.int64))
        parts["request"].append(np.full(n, code, dtype=np.int32))
        parts["pos"].append(request.positions)
        tok = request.token_ids if request.token_ids is not None else np.full(n, -1, np.int64)
        parts["tok"].append(tok)
        parts["phase"].append(
            np.where(request.positions < request.prompt_len, PREFILL, DECODE).astype(np.int8)
        )
        parts["experts"].append(request.ids[:, layers].astype(np.int32))
    column = {name: np.concatenate(values) for name, values in parts.items()}
    experts = column.pop("experts")
    lines = len(column["pos"]) * per_token
    repeat = lambda a: np.repeat(a, per_token)  # noqa: E731
    return RouteBlock(
        source,
        step=repeat(column["step"]),
        token=repeat(column["pos"]).astype(np.int32),
        layer=np.tile(layers, len(column["pos"])),
        request=repeat(column["request"]),
        pos=repeat(column["pos"]),
        tok=repeat(column["tok"]),
        phase=repeat(column["phase"]),
        experts=experts.reshape(lines, capture.top_k),
        weights=np.full((lines, capture.top_k), np.nan, dtype=np.float32),
        requests=names,
    )
