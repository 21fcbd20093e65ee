"""Read route logs back: find the files of a run, check they merge, stream them as columns.

The one reader of the JSONL format written by ``moe_route_log/log_format.py``
(schemas 1 to 3; routes logs and counts logs; rotated parts). ``iter_blocks`` yields
route lines as ``RouteBlock`` columns, ``iter_counts`` the windows of counts logs;
``iter_routes`` is a per-line view of the same blocks, for small logs and tests.
Parsing is Apache Arrow's (``jsonl_blocks``), the checks are on whole columns
(``log_lines``), and memory stays constant in the log's size. Bad lines are reported
with their file and line number: skipped with a warning by default, fatal with
``strict``.

Schema 1 route lines carry no vLLM request id or position (their ``req_id`` was the
run label): their ``request`` and ``pos`` are -1 (``Route``: None).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moe_profiler.reading.columns import PREFILL, UNKNOWN_PHASE, CountsWindow, RouteBlock
from moe_profiler.reading.jsonl_blocks import BLOCK_BYTES, iter_line_blocks
from moe_profiler.reading.log_lines import (
    COUNTS_SCHEMA,
    ROUTE_SCHEMA,
    CountsLines,
    LinesRead,
    RequestIds,
    RouteLines,
)

SUPPORTED_SCHEMAS = (1, 2, 3)
ROUTES_MODE, COUNTS_MODE = "routes", "counts"


class RouteLogError(ValueError):
    """A log that cannot be read (or merged), with where and why."""


@dataclass(frozen=True)
class Route:
    """One route line: a token's experts and weights at one layer (a view of a block row)."""

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
    routes: int = 0  # good route lines read
    windows: int = 0  # good counts lines read (counts logs)
    controls: list[dict] = field(default_factory=list)  # recording switched on/off

    @property
    def schema(self) -> int:
        return self.header["schema"]

    @property
    def mode(self) -> str:
        """``routes`` (one line per token and layer) or ``counts`` (one line per time window)."""
        return self.header.get("mode", ROUTES_MODE)

    @property
    def ranks(self) -> dict:
        """dp/pp/tp ranks (schema 1 logs are single-rank)."""
        return self.header.get("ranks") or {"dp": 0, "pp": 0, "tp": 0}

    @property
    def part(self) -> int:
        """Which part of its rank's rotated log this file is (0: the first, or not rotated)."""
        return self.header.get("part", 0)

    def rank_key(self) -> tuple[int, int, int, int]:
        """(dp, pp, tp, part): no two files of one run may share it."""
        r = self.ranks
        return (r.get("dp", 0), r.get("pp", 0), r.get("tp", 0), self.part)

    def _start_reading(self) -> None:
        self.trailer, self.problems, self.routes, self.windows, self.controls = None, [], 0, 0, []

    def _add(self, read: LinesRead, strict: bool, warn: Callable[[str], None] | None) -> None:
        """Add what one block of this file's lines held (its data is counted by the caller)."""
        if read.trailer is not None:
            self.trailer = read.trailer
        self.controls += read.controls
        for line_no, why in sorted(read.problems):
            report_problem(self.problems, f"{self.path}:{line_no}: {why}", strict, warn)


def report_problem(
    problems: list[str], message: str, strict: bool, warn: Callable[[str], None] | None
) -> None:
    """A bad line (``message`` names file and line): fatal with ``strict``, else kept in
    ``problems`` and warned about (skipped)."""
    if strict:
        raise RouteLogError(message)
    problems.append(message)
    (warn or _warn)(message + " (skipped)")


def read_header(path: Path) -> dict:
    """The meta line of ``path``, checked."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first:
        raise RouteLogError(f"{path}: empty file, no header line")
    try:
        header = json.loads(first)
    except ValueError:
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
    if header.get("mode", ROUTES_MODE) not in (ROUTES_MODE, COUNTS_MODE):
        raise RouteLogError(f"{path}:1: mode {header['mode']!r} is not 'routes' or 'counts'")
    if not isinstance(header.get("part", 0), int) or header.get("part", 0) < 0:
        raise RouteLogError(f"{path}:1: part {header['part']!r} is not a part number (0, 1, ...)")
    return header


def iter_blocks(
    logs: list[LogFile],
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    block_bytes: int = BLOCK_BYTES,
    first_source: int = 0,
) -> Iterator[RouteBlock]:
    """The good route lines of ``logs`` (a routes log each), file by file, as column blocks.

    ``source`` is ``first_source`` + the file's index in ``logs``; request ids are interned
    in one table for all files. A block never splits a (step, token): all its logged layers are in
    one block. Each file's ``trailer``, ``problems``, ``routes`` and ``controls`` are
    filled in as it is read.
    """
    requests = RequestIds()
    for source, log in enumerate(logs, start=first_source):
        _expect_mode(log, ROUTES_MODE)
        log._start_reading()
        lines = RouteLines(log.header, source, requests)
        held: RouteBlock | None = None  # the last token's lines, until its group is complete
        for parsed in iter_line_blocks(log.path, ROUTE_SCHEMA, block_bytes=block_bytes):
            read = lines.block(parsed)
            log._add(read, strict, warn)
            log.routes += len(read.data)
            block = read.data
            if held is not None:
                block = RouteBlock.concat([held, block])
            cut = _last_token_start(block)
            block, held = block.select(slice(0, cut)), block.select(slice(cut, None))
            if len(block):
                yield block
        if held is not None and len(held):
            yield held


def iter_counts(
    logs: list[LogFile],
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    first_source: int = 0,
) -> Iterator[CountsWindow]:
    """The windows of counts logs, file by file (``source``: ``first_source`` + the file's
    index in ``logs``)."""
    for source, log in enumerate(logs, start=first_source):
        _expect_mode(log, COUNTS_MODE)
        log._start_reading()
        lines = CountsLines(log.header, source)
        for parsed in iter_line_blocks(log.path, COUNTS_SCHEMA):
            read = lines.windows(parsed)
            log._add(read, strict, warn)
            log.windows += len(read.data)
            yield from read.data


def iter_routes(
    log: LogFile, strict: bool = False, warn: Callable[[str], None] | None = None
) -> Iterator[Route]:
    """Every good route line of ``log`` as a ``Route`` (one Python object a line: small logs)."""
    for block in iter_blocks([log], strict, warn):
        known = block.phase != UNKNOWN_PHASE
        for i in range(len(block)):
            request = int(block.request[i])
            pos, tok = int(block.pos[i]), int(block.tok[i])
            yield Route(
                int(block.step[i]),
                int(block.token[i]),
                int(block.layer[i]),
                block.experts[i].tolist(),
                block.weights[i].tolist(),
                block.requests[request] if request >= 0 else None,
                pos if pos >= 0 else None,
                tok if tok >= 0 else None,
                bool(block.phase[i] == PREFILL) if known[i] else None,
            )


def _expect_mode(log: LogFile, mode: str) -> None:
    if log.mode != mode:
        reader = "iter_counts" if log.mode == COUNTS_MODE else "iter_blocks"
        raise RouteLogError(f"{log.path} is a {log.mode} log: read it with {reader}")


def _last_token_start(block: RouteBlock) -> int:
    """Where the lines of the block's last (step, token) begin (they are consecutive)."""
    if not len(block):
        return 0
    other = (block.step != block.step[-1]) | (block.token != block.token[-1])
    earlier = np.flatnonzero(other)
    return int(earlier[-1]) + 1 if len(earlier) else 0


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


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
    """Headers of logs to be merged: refused unless they come from one run.

    One run: the same schema, mode, ``run_id``, model and expert counts; every file a
    different (dp, pp, tp) rank or a different part of one rank's rotated log.
    """
    logs = [LogFile(p, read_header(p)) for p in paths]
    first = logs[0]
    for log in logs[1:]:
        for what, a, b in (("schema", first.schema, log.schema), ("mode", first.mode, log.mode)):
            if a != b:
                raise RouteLogError(
                    f"cannot merge {first.path} ({what} {a}) with {log.path} ({what} {b})"
                )
        for key in ("run_id", "model_id", "num_experts", "top_k"):
            if log.header.get(key) != first.header.get(key):
                raise RouteLogError(
                    f"cannot merge {first.path} and {log.path}: they are from different runs "
                    f"({key} {first.header.get(key)!r} != {log.header.get(key)!r})"
                )
    seen: dict[tuple, Path] = {}
    for log in logs:
        key = log.rank_key()
        if key in seen:
            raise RouteLogError(
                f"{seen[key]} and {log.path} both hold dp/pp/tp ranks {key[:3]}, part {key[3]}, "
                "of one run"
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
    """The files of a run with ``VLLM_LOG_MOE=path``: the path itself, one per rank
    (``<stem>.<host>.dp<d>-pp<p><suffix>``), and the parts of rotated logs
    (``<stem>[.<host>.dp<d>-pp<p>].p<k><suffix>``), see the README."""
    stem, suffix = os.path.splitext(str(path))
    name = re.compile(
        re.escape(stem) + r"(\.[^/]+\.dp\d+-pp\d+)?(\.p\d+)?" + re.escape(suffix) + r"\Z"
    )
    candidates = glob.glob(glob.escape(stem) + ".*" + glob.escape(suffix))
    files = [Path(path)] if Path(path).exists() else []
    return files + sorted(Path(p) for p in candidates if name.match(p) and p != str(path))
