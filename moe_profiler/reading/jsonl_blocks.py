"""A JSON-lines file as Arrow tables, a few megabytes of lines at a time.

Apache Arrow's JSON reader (C++, multi-threaded) parses each block of lines against
an explicit schema: fields the schema does not name are ignored, missing ones are
null, and a value of the wrong type is an error (never a silent cast). A block that
fails, or that gives fewer or more rows than it has lines (Arrow skips blank lines),
is split in halves until every bad line stands alone: each one is reported with its
line number and why, and the rest of the block is kept. A background thread reads
and parses the next blocks while the caller works on the current one; at most
``prefetch`` blocks wait, so memory stays constant in the file's size.
"""

from __future__ import annotations

import io
import json
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

BLOCK_BYTES = 8 << 20  # bytes of lines parsed at once (Arrow splits them over its threads)
_ARROW_BLOCK = 1 << 20  # Arrow's own unit of parallel parsing inside a block


@dataclass
class LineBlock:
    """Consecutive lines of a file: the good ones as rows, the bad ones by number."""

    rows: pa.Table  # one row per good line, in file order, a single chunk per column
    line_no: np.ndarray  # int64 [rows]: the line number of each row (1 = first line)
    bad: list[tuple[int, str]]  # (line number, why) of each line that could not be read
    text: bytes = field(repr=False)  # the block's bytes, for ``line``
    ends: np.ndarray = field(repr=False)  # where each line ends (its newline) in ``text``
    first_line: int = 1  # number of the block's first line

    def line(self, number: int) -> bytes:
        """The text of line ``number`` of this block (without its newline)."""
        i = number - self.first_line
        start = 0 if i == 0 else int(self.ends[i - 1]) + 1
        return self.text[start : int(self.ends[i])]

    def number_from(self, first_line: int) -> None:
        """Number the lines from ``first_line`` (blocks are parsed before they are numbered)."""
        shift = first_line - self.first_line
        self.line_no += shift
        self.bad = [(n + shift, why) for n, why in self.bad]
        self.first_line = first_line


def iter_line_blocks(
    path: Path,
    schema: pa.Schema,
    skip_lines: int = 1,
    block_bytes: int = BLOCK_BYTES,
    prefetch: int = 2,
) -> Iterator[LineBlock]:
    """The lines of ``path`` after the first ``skip_lines`` (the header), block by block."""
    with open(path, "rb") as f, ThreadPoolExecutor(1, thread_name_prefix="jsonl") as pool:
        for _ in range(skip_lines):
            f.readline()
        pending: deque[Future] = deque()
        next_line = skip_lines + 1
        rest = b""
        try:
            while True:
                chunk = f.read(block_bytes)
                if chunk:  # whole lines now, the unfinished last one with the next chunk
                    text = rest + chunk
                    cut = text.rfind(b"\n") + 1
                    text, rest = text[:cut], text[cut:]
                else:  # end of file: what is left is a last line without a newline
                    text, rest = rest, b""
                if text:
                    pending.append(pool.submit(_read_block, text, schema))
                while pending and (len(pending) > prefetch or not chunk):
                    block = pending.popleft().result()
                    block.number_from(next_line)
                    next_line += len(block.ends)
                    yield block
                if not chunk:
                    return
        finally:
            for job in pending:
                job.cancel()


def _line_ends(text: bytes) -> np.ndarray:
    """Offset of each line's newline (the last line may have none: the text's end)."""
    ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 10)
    return ends if text.endswith(b"\n") else np.append(ends, len(text))


def _parse(text: bytes, schema: pa.Schema) -> tuple[pa.Table | None, str]:
    try:
        table = pa_json.read_json(
            io.BytesIO(text),
            read_options=pa_json.ReadOptions(use_threads=True, block_size=_ARROW_BLOCK),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        return None, str(e)
    return table, ""


def _one_row_per_line(table: pa.Table | None, text: bytes, ends: np.ndarray) -> bool:
    """Whether row i of ``table`` is line i of ``text``. Arrow reads a stream of JSON
    values: a blank line gives no row, two values on one line give two, so the row
    count alone could hide one of each. Every line ending in "}" (an object's end,
    maybe followed by spaces) rules out blank lines and values spread over lines."""
    if table is None or table.num_rows != len(ends):
        return False
    if len(ends) == 1:
        return True
    last_chars = np.frombuffer(text, dtype=np.uint8)[ends - 1]
    for i in np.flatnonzero(last_chars != ord("}")):  # none in a log as written
        start = int(ends[i - 1]) + 1 if i else 0
        if not text[start : int(ends[i])].rstrip().endswith(b"}"):
            return False
    return True


def _read_block(text: bytes, schema: pa.Schema) -> LineBlock:
    """The lines of ``text`` (whole lines), numbered from 1."""
    ends = _line_ends(text)
    lines = len(ends)
    table, _ = _parse(text, schema)
    if _one_row_per_line(table, text, ends):
        line_no = np.arange(1, lines + 1, dtype=np.int64)
        return LineBlock(table.combine_chunks(), line_no, [], text, ends)
    # Some line is bad: halve until each bad line stands alone.
    good: list[tuple[int, pa.Table]] = []
    bad: list[tuple[int, str]] = []

    def span(lo: int, hi: int) -> bytes:
        return text[(0 if lo == 0 else int(ends[lo - 1]) + 1) : int(ends[hi - 1]) + 1]

    def split(lo: int, hi: int) -> None:
        part, error = _parse(span(lo, hi), schema)
        if _one_row_per_line(part, span(lo, hi), ends[lo:hi] - (ends[lo - 1] + 1 if lo else 0)):
            good.append((lo, part))
        elif hi - lo == 1:
            bad.append((lo + 1, why_bad(span(lo, hi), error)))
        else:
            mid = (lo + hi) // 2
            split(lo, mid)
            split(mid, hi)

    mid = lines // 2
    if lines == 1:
        split(0, 1)
    else:
        split(0, mid)
        split(mid, lines)
    rows = pa.concat_tables(t for _, t in good).combine_chunks() if good else schema.empty_table()
    line_no = np.concatenate(
        [np.arange(lo + 1, lo + 1 + t.num_rows, dtype=np.int64) for lo, t in good]
        or [np.zeros(0, dtype=np.int64)]
    )
    return LineBlock(rows, line_no, bad, text, ends)


def why_bad(line: bytes, arrow_error: str) -> str:
    """Why one line was refused, in words (``arrow_error``: what Arrow said, if anything)."""
    if not line.strip():
        return "empty line"
    try:
        value = json.loads(line)
    except ValueError:
        return "not valid JSON" if line.endswith(b"\n") else "truncated last line"
    if not isinstance(value, dict):
        return "not a JSON object"
    reason = re.sub(r"^JSON parse error: | in row \d+$", "", arrow_error) or "unreadable"
    return f"a field has the wrong type ({reason})"
