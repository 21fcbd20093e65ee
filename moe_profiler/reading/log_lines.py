"""The lines of one log file, parsed (``jsonl_blocks``), turned into columns and checked.

Every line type is handled here: route and request lines become ``RouteBlock``
columns (request ids interned, each line told prefill or decode), counts lines
become ``CountsWindow``s, the trailer and control lines are handed back as they
are, and every line that breaks the format becomes a problem (line number, why).
Each block of lines gives one ``LinesRead``; ``routes`` adds them up per file. The
checks run on whole columns; Python only touches the lines that fail them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from moe_profiler.reading.columns import DECODE, PREFILL, UNKNOWN_PHASE, CountsWindow, RouteBlock
from moe_profiler.reading.jsonl_blocks import LineBlock

ROUTE_SCHEMA = pa.schema(
    [
        ("type", pa.string()),
        ("step", pa.int64()),
        ("token", pa.int32()),
        ("layer", pa.int32()),
        ("req_id", pa.string()),
        ("pos", pa.int64()),
        ("tok", pa.int64()),
        ("experts", pa.list_(pa.int32())),
        ("weights", pa.list_(pa.float32())),
        ("prompt_len", pa.int64()),
    ]
)
COUNTS_SCHEMA = pa.schema(
    [
        ("type", pa.string()),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("steps", pa.int64()),
        ("tokens", pa.int64()),
        ("prefill_tokens", pa.int64()),
        ("layers", pa.list_(pa.int32())),
        ("counts", pa.list_(pa.list_(pa.int64()))),
        ("weight_sums", pa.list_(pa.list_(pa.float64()))),
    ]
)
_NEVER = np.iinfo(np.int64).max

Problem = tuple[int, str]  # (line number, why)
Data = TypeVar("Data")


@dataclass
class LinesRead(Generic[Data]):
    """What one block of a file's lines held: its data, and what else the file says there."""

    data: Data  # RouteBlock (routes logs) or list[CountsWindow] (counts logs)
    problems: list[Problem]  # the lines that break the format
    trailer: dict | None = None  # the end-of-log line, if it is in this block
    controls: list[dict] = field(default_factory=list)  # recording switched off or on, in order


class RequestIds:
    """Request ids interned as int codes, shared by every file of one read."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._code: dict[str, int] = {}

    def codes(self, strings: pa.Array) -> np.ndarray:
        """int32 code of each string (-1 where null)."""
        encoded = pc.dictionary_encode(strings)
        table = []
        for s in encoded.dictionary.to_pylist():
            code = self._code.get(s)
            if code is None:
                code = self._code[s] = len(self.ids)
                self.ids.append(s)
            table.append(code)
        lookup = np.array([*table, -1], dtype=np.int32)  # index -1 (null) -> -1
        return lookup[encoded.indices.fill_null(-1).to_numpy()]


class FileLines:
    """What every log file has besides its data: the trailer, control lines, bad lines.

    ``sort`` hands back the rows of each data line type, and the rest of the block
    as a ``LinesRead`` without data (trailer, control lines, problems).
    """

    def __init__(self, data_types: tuple[str, ...]) -> None:
        self.data_types = data_types
        self.trailer_line: int | None = None

    def sort(self, lines: LineBlock) -> tuple[dict[str, np.ndarray], LinesRead[None]]:
        rows, line_no = lines.rows, lines.line_no
        read = LinesRead(None, list(lines.bad))
        if self.trailer_line is None and rows.num_rows:
            kinds = _array(rows, "type")
            ends = np.flatnonzero(_equal(kinds, "end"))
            if len(ends):
                self.trailer_line = int(line_no[ends[0]])
                read.trailer = _json(lines, self.trailer_line)
        after = self.trailer_line if self.trailer_line is not None else _NEVER
        read.problems = [
            (n, "line after the end-of-log trailer" if n > after else why)
            for n, why in read.problems
        ]
        read.problems += [
            (int(n), "line after the end-of-log trailer") for n in line_no[line_no > after]
        ]
        if not rows.num_rows:
            return {t: np.zeros(0, dtype=np.int64) for t in self.data_types}, read
        kinds = _array(rows, "type")
        before = line_no <= after
        of_type = {t: np.flatnonzero(_equal(kinds, t) & before) for t in self.data_types}
        other = before & (line_no != after)
        for rows_of_type in of_type.values():
            other[rows_of_type] = False
        for i in np.flatnonzero(other):  # control lines and strays: few
            kind, number = kinds[int(i)].as_py(), int(line_no[i])
            if kind == "control":
                read.controls.append(_json(lines, number))
            else:
                read.problems.append((number, f"unexpected line type {kind!r}"))
        return of_type, read


class RouteLines:
    """Route and request rows of one file -> ``RouteBlock``s, every route line checked."""

    def __init__(self, header: dict, source: int, requests: RequestIds) -> None:
        self.source, self.requests = source, requests
        self.schema = header["schema"]
        self.top_k, self.num_experts = header["top_k"], header["num_experts"]
        self.logged = np.zeros(max(header["layers"], default=0) + 1, dtype=bool)
        self.logged[header["layers"]] = True
        self.lines = FileLines(("route", "request") if self.schema >= 3 else ("route",))
        # the fields a route line must have, in the order a missing one is reported
        self.required = ["experts", "weights", "layer", "step", "token"]
        self.required += ["req_id", "pos"] if self.schema >= 2 else []
        self.required += ["tok"] if self.schema >= 3 else []
        self.int_fields = [
            f for f in ("layer", "step", "token", "pos", "tok") if f in self.required
        ]
        self.prompt_len = np.zeros(0, dtype=np.int64)  # per request code, this file's
        self.seen_from = np.zeros(0, dtype=np.int64)  # line of its first request line here

    def block(self, lines: LineBlock) -> LinesRead[RouteBlock]:
        """The good route lines of ``lines`` as one block; the problems of the others."""
        of_type, read = self.lines.sort(lines)
        problems = read.problems
        rows, line_no = lines.rows, lines.line_no
        codes = None
        if self.schema >= 2 and rows.num_rows:
            codes = self.requests.codes(_array(rows, "req_id"))
            self._grow(len(self.requests.ids))
        if "request" in of_type and len(of_type["request"]):
            problems += self._request_lines(rows, of_type["request"], line_no, codes)
        route = of_type["route"]
        block, bad = self._route_lines(rows, route, line_no, codes)
        return LinesRead(block, problems + bad, read.trailer, read.controls)

    def _grow(self, n: int) -> None:
        if len(self.prompt_len) < n:
            extra = max(n, 2 * len(self.prompt_len)) - len(self.prompt_len)
            self.prompt_len = np.concatenate([self.prompt_len, np.full(extra, -1, np.int64)])
            self.seen_from = np.concatenate([self.seen_from, np.full(extra, _NEVER, np.int64)])

    def _request_lines(self, rows, index, line_no, codes) -> list[Problem]:
        prompt_len, missing_len = _ints(_array(rows, "prompt_len"), index)
        code = codes[index]
        checks = _Checks(line_no[index])
        checks.add(code < 0, lambda i: "request line without 'req_id'")
        checks.add(missing_len, lambda i: "request line without 'prompt_len'")
        ok = checks.good()
        ok = slice(None) if ok is None else ok
        np.minimum.at(self.seen_from, code[ok], line_no[index][ok])
        self.prompt_len[code[ok]] = prompt_len[ok]
        return checks.problems

    def _route_lines(self, rows, index, line_no, codes) -> tuple[RouteBlock, list[Problem]]:
        n, k, schema = len(index), self.top_k, self.schema
        if n == 0:
            return self._empty(), []
        ints = {name: _ints(_array(rows, name), index) for name in self.int_fields}
        experts_arr, weights_arr = _array(rows, "experts"), _array(rows, "weights")
        experts, n_experts = _lists(experts_arr, index, k, np.int32, -1)
        weights, n_weights = _lists(weights_arr, index, k, np.float32, np.nan)
        missing = {name: miss for name, (_, miss) in ints.items()}
        missing["experts"], missing["weights"] = n_experts < 0, n_weights < 0
        request = codes[index] if schema >= 2 else np.full(n, -1, dtype=np.int32)
        missing["req_id"] = request < 0 if schema >= 2 else None
        checks = _Checks(line_no[index])
        for name in self.required:
            checks.add(missing[name], lambda i, name=name: f"route line without {name!r}")
        layer = ints["layer"][0]
        checks.add(
            _outside(layer, self.logged), lambda i: f"layer {int(layer[i])} is not a logged layer"
        )
        checks.add(
            (n_experts != k) | (n_weights != k),
            lambda i: f"{n_experts[i]} experts / {n_weights[i]} weights, not top_k={k}",
        )
        checks.add(
            _bad_ids(experts, self.num_experts),
            lambda i: (
                f"expert ids {experts_arr[int(index[i])].as_py()} are not {k} distinct "
                f"ids in 0..{self.num_experts - 1}"
            ),
        )
        checks.add(
            None if np.isfinite(weights).all() else ~np.isfinite(weights).all(axis=1),
            lambda i: f"router weights {weights_arr[int(index[i])].as_py()} are not numbers",
        )
        for name in ("step", "token", "pos", "tok"):
            if name in ints:
                v = ints[name][0]
                checks.add(
                    v < 0 if v.min() < 0 else None,
                    lambda i, v=v, name=name: f"negative {name} {int(v[i])}",
                )
        keep = checks.good()
        pick = (lambda a: a) if keep is None else (lambda a: a[keep])
        m = n if keep is None else int(keep.sum())
        unknown = np.full(m, -1, dtype=np.int64)
        request = pick(request)
        pos = pick(ints["pos"][0]) if schema >= 2 else unknown
        phase = np.full(m, UNKNOWN_PHASE, dtype=np.int8)
        if schema >= 3:
            known = self.seen_from[request] < pick(line_no[index])
            prefill = pos < self.prompt_len[request]
            phase[known] = np.where(prefill[known], PREFILL, DECODE)
        block = RouteBlock(
            self.source,
            step=pick(ints["step"][0]),
            token=pick(ints["token"][0]),
            layer=pick(layer),
            request=request,
            pos=pos,
            tok=pick(ints["tok"][0]) if schema >= 3 else unknown,
            phase=phase,
            experts=pick(experts),
            weights=pick(weights),
            requests=self.requests.ids,
        )
        return block, checks.problems

    def _empty(self) -> RouteBlock:
        none = np.zeros(0, dtype=np.int64)
        return RouteBlock(
            self.source,
            none,
            none.astype(np.int32),
            none.astype(np.int32),
            none.astype(np.int32),
            none,
            none,
            none.astype(np.int8),
            np.zeros((0, self.top_k), dtype=np.int32),
            np.zeros((0, self.top_k), dtype=np.float32),
            self.requests.ids,
        )


class _Checks:
    """Which lines failed a check, each line reported for its first failure only."""

    def __init__(self, line_no: np.ndarray) -> None:
        self.line_no = line_no
        self.bad = np.zeros(len(line_no), dtype=bool)
        self.problems: list[Problem] = []

    def add(self, failed: np.ndarray | None, why: Callable[[int], str]) -> None:
        """``failed``: where the check failed (None: nowhere); ``why(i)``: the message."""
        if failed is None or not failed.any():
            return
        new = failed & ~self.bad
        self.problems.extend((int(self.line_no[i]), why(i)) for i in np.flatnonzero(new))
        self.bad |= new

    def good(self) -> np.ndarray | None:
        """Where no check failed (None: everywhere)."""
        return ~self.bad if self.problems else None


def _outside(values: np.ndarray, allowed: np.ndarray) -> np.ndarray | None:
    """Where ``values`` are not indices i with ``allowed[i]`` (None: nowhere)."""
    if values.min() >= 0 and values.max() < len(allowed) and allowed[values].all():
        return None
    inside = (values >= 0) & (values < len(allowed))
    return ~inside | ~allowed[np.where(inside, values, 0)]


def _bad_ids(experts: np.ndarray, num_experts: int) -> np.ndarray | None:
    """Rows whose ids are not distinct ids in 0..num_experts-1 (None: no such row)."""
    bad = None
    if experts.min() < 0 or experts.max() >= num_experts:
        bad = ((experts < 0) | (experts >= num_experts)).any(axis=1)
    k = experts.shape[1]
    for a in range(k):
        for b in range(a + 1, k):
            same = experts[:, a] == experts[:, b]
            bad = same if bad is None else bad | same
    return bad


class CountsLines:
    """Counts rows of one file -> ``CountsWindow``s, each line checked."""

    REQUIRED = ("t_start", "t_end", "steps", "tokens", "prefill_tokens", "layers", "counts")

    def __init__(self, header: dict, source: int) -> None:
        self.source = source
        self.layers = set(header["layers"])
        self.num_experts = header["num_experts"]
        self.lines = FileLines(("counts",))

    def windows(self, lines: LineBlock) -> LinesRead[list[CountsWindow]]:
        """The good counts lines of ``lines`` as windows; the problems of the others."""
        of_type, read = self.lines.sort(lines)
        windows, problems = [], read.problems
        for i in of_type["counts"]:  # one line per time window: few, each checked in Python
            record = {
                name: _array(lines.rows, name)[int(i)].as_py() for name in COUNTS_SCHEMA.names
            }
            number = int(lines.line_no[i])
            try:
                windows.append(self._window(record))
            except ValueError as e:
                problems.append((number, str(e)))
        return LinesRead(windows, problems, read.trailer, read.controls)

    def _window(self, r: dict) -> CountsWindow:
        for name in self.REQUIRED:
            if r[name] is None:
                raise ValueError(f"counts line without {name!r}")
        layers = r["layers"]
        if any(layer is None or layer not in self.layers for layer in layers):
            raise ValueError(f"layers {layers} are not all logged layers")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers {layers} repeat a layer")
        shape = (len(layers), self.num_experts)
        counts = _matrix(r["counts"], shape, np.int64, "counts")
        sums = r["weight_sums"]
        sums = np.zeros(shape) if sums is None else _matrix(sums, shape, np.float64, "weight_sums")
        if (counts < 0).any():
            raise ValueError("negative count")
        if r["t_end"] < r["t_start"]:
            raise ValueError(f"t_end {r['t_end']} is before t_start {r['t_start']}")
        return CountsWindow(
            self.source,
            r["t_start"],
            r["t_end"],
            r["steps"],
            r["tokens"],
            r["prefill_tokens"],
            np.array(layers, dtype=np.int32),
            counts,
            sums,
        )


def _matrix(rows: list, shape: tuple[int, int], dtype, name: str) -> np.ndarray:
    if len(rows) != shape[0] or any(row is None or len(row) != shape[1] for row in rows):
        raise ValueError(f"{name} is not {shape[0]} layers x {shape[1]} experts")
    if any(v is None for row in rows for v in row):
        raise ValueError(f"{name} has a null")
    return np.array(rows, dtype=dtype).reshape(shape)


def _array(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _equal(strings: pa.Array, value: str) -> np.ndarray:
    return pc.equal(strings, pa.scalar(value)).fill_null(False).to_numpy(zero_copy_only=False)


def _json(lines: LineBlock, number: int) -> dict:
    return json.loads(lines.line(number))


def _ints(array: pa.Array, index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Values at ``index`` (nulls read as 0) and where they were null (None: nowhere),
    straight from Arrow's buffers."""
    validity, data = array.buffers()[:2]
    span = slice(array.offset, array.offset + len(array))
    values = np.frombuffer(data, dtype=array.type.to_pandas_dtype())[span][index]
    if not array.null_count:
        return values, None
    valid = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")[span]
    missing = valid[index] == 0
    return np.where(missing, 0, values), missing


def _lists(
    array: pa.ListArray, index: np.ndarray, k: int, dtype, null_value
) -> tuple[np.ndarray, np.ndarray]:
    """[len(index), k] values of the lists at ``index`` (where a list's length is not k: filler),
    and each list's length (-1: null)."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[
        array.offset : array.offset + len(array) + 1
    ]
    lengths = np.diff(offsets)[index]
    if array.null_count:
        lengths[array.is_null().to_numpy(zero_copy_only=False)[index]] = -1
    child = array.values
    values = (child.fill_null(null_value) if child.null_count else child).to_numpy()
    values = values.astype(dtype, copy=False)
    n = len(index)
    first = offsets[index[0]] if n else 0
    if (lengths == k).all() and offsets[index[-1]] - first == (n - 1) * k:
        return values[first : first + n * k].reshape(n, k), lengths  # consecutive: no copy
    starts = np.where(lengths == k, offsets[index], 0)
    gather = starts[:, None] + np.arange(k)
    out = values[np.minimum(gather, max(len(values) - 1, 0))] if len(values) else None
    if out is None:
        out = np.full((n, k), null_value, dtype=dtype)
    out[lengths != k] = null_value
    return out, lengths
