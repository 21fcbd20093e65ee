"""Read route logs back: one file, several files, a folder or a glob, as a stream.

This is the one place that parses the JSONL format written by
``vllm_overlay/.../moe_route_log/log_format.py`` (schema 2, and schema 1 of the
first releases). Memory stays constant in the log's size: lines are parsed one
at a time (with orjson when installed). Bad lines are reported with their file
and line number; by default they are skipped with a warning, ``strict`` makes
the first one fatal.

Schema 1 route lines carry no vLLM request id or position (their ``req_id``
was the run label); they are read with ``req_id`` and ``pos`` None.
"""

from __future__ import annotations

import fcntl
import glob
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import orjson

    _loads: Callable = orjson.loads
    _DecodeError: tuple = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    import json

    _loads = json.loads
    _DecodeError = (json.JSONDecodeError, UnicodeDecodeError)

SUPPORTED_SCHEMAS = (1, 2, 3)


class RouteLogError(ValueError):
    """A log that cannot be read (or merged), with where and why."""


@dataclass(frozen=True)
class Route:
    """One route line: a token's experts and weights at one layer."""

    step: int
    token: int
    layer: int
    experts: list[int]
    weights: list[float]
    req_id: str | None  # vLLM's request id (schema 2)
    pos: int | None  # position in its request (schema 2)
    tok: int | None = None  # input token id (schema 3)
    prefill: bool | None = None  # pos < the request's prompt length (schema 3)

    @property
    def request(self) -> str | None:
        """The id the user's request had: vLLM appends '-<8 hex>' internally."""
        return None if self.req_id is None else self.req_id.rsplit("-", 1)[0]


@dataclass
class LogFile:
    """One log file: its header, and once read to the end, its trailer and problems."""

    path: Path
    header: dict
    trailer: dict | None = None
    problems: list[str] = field(default_factory=list)
    routes: int = 0

    @property
    def schema(self) -> int:
        return self.header["schema"]

    @property
    def ranks(self) -> dict:
        """dp/pp/tp ranks (schema 1 logs are single-rank)."""
        return self.header.get("ranks") or {"dp": 0, "pp": 0, "tp": 0}


def read_header(path: Path) -> dict:
    """The meta line of ``path``, checked."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first:
        raise RouteLogError(f"{path}: empty file, no header line")
    try:
        header = _loads(first)
    except _DecodeError:
        raise RouteLogError(f"{path}:1: the header line is not JSON") from None
    if not isinstance(header, dict) or header.get("type") != "meta":
        raise RouteLogError(f'{path}:1: the first line is not a header ({{"type": "meta", ...}})')
    if header.get("schema") not in SUPPORTED_SCHEMAS:
        raise RouteLogError(
            f"{path}:1: schema {header.get('schema')!r} is not one this reader knows "
            f"({', '.join(map(str, SUPPORTED_SCHEMAS))})"
        )
    for key in ("layers", "num_experts", "top_k"):
        if key not in header:
            raise RouteLogError(f"{path}:1: the header has no {key!r}")
    return header


def iter_routes(
    log: LogFile, strict: bool = False, warn: Callable[[str], None] | None = None
) -> Iterator[Route]:
    """Every valid route line of ``log``, in file order. Fills ``log.trailer``/``problems``."""
    log.trailer, log.problems, log.routes = None, [], 0
    header = log.header
    top_k, num_experts = header["top_k"], header["num_experts"]
    layers = set(header["layers"])
    schema2, schema3 = log.schema >= 2, log.schema >= 3
    prompt_len: dict[str, int] = {}
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))

    def problem(line_no: int, what: str) -> None:
        message = f"{log.path}:{line_no}: {what}"
        if strict:
            raise RouteLogError(message)
        log.problems.append(message)
        warn(message + " (skipped)")

    with open(log.path, "rb") as f:
        f.readline()
        for line_no, line in enumerate(f, start=2):
            if log.trailer is not None:
                problem(line_no, "line after the end-of-log trailer")
                continue
            try:
                rec = _loads(line)
            except _DecodeError:
                complete = line.endswith(b"\n")
                problem(line_no, "not valid JSON" if complete else "truncated last line")
                continue
            kind = rec.get("type") if isinstance(rec, dict) else None
            if kind == "end":
                log.trailer = rec
                continue
            if kind == "request" and schema3:
                prompt_len[rec.get("req_id")] = rec.get("prompt_len")
                continue
            if kind in ("control", "counts") and schema3:
                continue  # run-time start/stop; counts windows (not routes)
            if kind != "route":
                problem(line_no, f"unexpected line type {kind!r}")
                continue
            try:
                experts, weights, layer = rec["experts"], rec["weights"], rec["layer"]
                route = Route(
                    rec["step"],
                    rec["token"],
                    layer,
                    experts,
                    weights,
                    rec["req_id"] if schema2 else None,
                    rec["pos"] if schema2 else None,
                    rec["tok"] if schema3 else None,
                    _is_prefill(rec["pos"], prompt_len.get(rec["req_id"])) if schema3 else None,
                )
            except (KeyError, TypeError) as e:
                problem(line_no, f"route line without {e}")
                continue
            if layer not in layers:
                problem(line_no, f"layer {layer!r} is not a logged layer")
            elif len(experts) != top_k or len(weights) != top_k:
                problem(
                    line_no, f"{len(experts)} experts / {len(weights)} weights, not top_k={top_k}"
                )
            elif len(set(experts)) != top_k or not all(
                type(e) is int and 0 <= e < num_experts for e in experts
            ):
                problem(
                    line_no,
                    f"expert ids {experts} are not {top_k} distinct ids in 0..{num_experts - 1}",
                )
            else:
                log.routes += 1
                yield route


def _is_prefill(pos: int, prompt_len: int | None) -> bool | None:
    return None if prompt_len is None else pos < prompt_len


def find_logs(specs: list[str]) -> list[Path]:
    """Files named by paths, folders (their *.jsonl) or glob patterns, sorted, deduplicated."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(path.glob("*.jsonl"))
        elif any(c in spec for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(spec))
        else:
            if not path.exists():
                raise RouteLogError(f"{spec}: no such file")
            matches = [path]
        if not matches:
            raise RouteLogError(f"{spec}: no route logs found there")
        found.extend(matches)
    return list(dict.fromkeys(p.resolve() for p in found))


def open_logs(paths: list[Path]) -> list[LogFile]:
    """Headers of logs to be merged: refused unless they come from one run."""
    logs = [LogFile(p, read_header(p)) for p in paths]
    first = logs[0]
    for log in logs[1:]:
        if log.schema != first.schema:
            raise RouteLogError(
                f"cannot merge {first.path} (schema {first.schema}) with {log.path} "
                f"(schema {log.schema})"
            )
        for key in ("run_id", "model_id", "num_experts", "top_k"):
            if log.header.get(key) != first.header.get(key):
                raise RouteLogError(
                    f"cannot merge {first.path} and {log.path}: they are from different runs "
                    f"({key} {first.header.get(key)!r} != {log.header.get(key)!r})"
                )
    seen: dict[tuple, Path] = {}
    for log in logs:
        key = (log.ranks.get("dp", 0), log.ranks.get("pp", 0), log.ranks.get("tp", 0))
        if key in seen:
            raise RouteLogError(
                f"{seen[key]} and {log.path} both hold dp/pp/tp ranks {key} of one run"
            )
        seen[key] = log.path
    return logs


def wait_until_complete(path: Path, timeout: float = 600.0) -> None:
    """Block until the writer process has released ``path`` (all lines written)."""
    deadline = time.monotonic() + timeout
    with open(path, "rb") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RouteLogError(
                        f"{path}: still being written after {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)


def rank_files(path: Path) -> list[Path]:
    """The files of a run with ``VLLM_LOG_MOE=path``: the path itself, or one per rank
    (``<stem>.<host>.dp<d>-pp<p><suffix>``, see the README)."""
    stem, suffix = os.path.splitext(str(path))
    pattern = glob.escape(stem) + ".*.dp*-pp*" + glob.escape(suffix)
    files = [Path(path)] if Path(path).exists() else []
    return files + sorted(Path(p) for p in glob.glob(pattern))
