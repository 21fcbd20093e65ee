"""Route logs -> Parquet files, one per log, for DuckDB, Spark, polars or pandas.

Each row is one route line (routes logs) or one layer of one time window (counts
logs). Every row also carries where it comes from (``run_id``, ``host``, ``dp``,
``pp``, ``tp``, ``part``), so the files of a whole fleet can be queried as one
table; the log's header goes into each file's key-value metadata
(``moe_profiler.header``, JSON). Written a row group at a time: memory stays
constant in the log's size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe_profiler.reading import routes
from moe_profiler.reading.columns import CountsWindow, RouteBlock

ROW_GROUP_LINES = 1 << 20  # rows gathered before a row group is written

ORIGIN = [
    ("run_id", pa.string()),
    ("host", pa.string()),
    ("dp", pa.int32()),
    ("pp", pa.int32()),
    ("tp", pa.int32()),
    ("part", pa.int32()),
]
ROUTES_SCHEMA = pa.schema(
    [
        *ORIGIN,
        ("step", pa.int64()),
        ("token", pa.int32()),
        ("layer", pa.int32()),
        ("req_id", pa.string()),  # null: schema 1
        ("pos", pa.int64()),  # null: schema 1
        ("tok", pa.int64()),  # null: before schema 3
        ("phase", pa.string()),  # 'prefill', 'decode', null: unknown
        ("experts", pa.list_(pa.int32())),
        ("weights", pa.list_(pa.float32())),
    ]
)
COUNTS_SCHEMA = pa.schema(
    [
        *ORIGIN,
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("steps", pa.int64()),
        ("tokens", pa.int64()),
        ("prefill_tokens", pa.int64()),
        ("layer", pa.int32()),
        ("counts", pa.list_(pa.int64())),
        ("weight_sums", pa.list_(pa.float64())),
    ]
)
_PHASES = pa.array(["decode", "prefill"])  # indexed by DECODE (0) and PREFILL (1)


def export_logs(
    logs: list[routes.LogFile],
    out_dir: Path,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    compression: str = "zstd",
) -> list[Path]:
    """Write ``out_dir/<log name>.parquet`` for each log; the paths written."""
    names = [Path(log.path).with_suffix(".parquet").name for log in logs]
    for name in {n for n in names if names.count(n) > 1}:
        raise routes.RouteLogError(f"two logs would both be exported to {name}: rename one")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for log, name in zip(logs, names, strict=True):
        counts = log.mode == routes.COUNTS_MODE
        schema = (COUNTS_SCHEMA if counts else ROUTES_SCHEMA).with_metadata(
            {"moe_profiler.header": json.dumps(log.header)}
        )
        path = out_dir / name
        partial = path.with_name(path.name + ".partial")
        try:
            _write(log, partial, schema, compression, strict, warn)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)  # a finished file only: never half a log under the real name
        written.append(path)
    return written


def _write(log, path: Path, schema: pa.Schema, compression: str, strict: bool, warn) -> None:
    counts = log.mode == routes.COUNTS_MODE
    with pq.ParquetWriter(path, schema, compression=compression) as writer:
        pending: list[pa.Table] = []
        rows = 0
        items = (
            routes.iter_counts([log], strict, warn)
            if counts
            else routes.iter_blocks([log], strict, warn)
        )
        for item in items:
            table = counts_table(item, log) if counts else routes_table(item, log)
            pending.append(table)
            rows += table.num_rows
            if rows >= ROW_GROUP_LINES:
                writer.write_table(pa.concat_tables(pending), row_group_size=rows)
                pending, rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=rows)


def routes_table(block: RouteBlock, log: routes.LogFile) -> pa.Table:
    """The lines of ``block`` as rows of ``ROUTES_SCHEMA``."""
    n, k = block.experts.shape
    used, inverse = np.unique(block.request, return_inverse=True)
    names = pa.array([block.requests[c] if c >= 0 else None for c in used], pa.string())
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    unknown_phase = block.phase < 0
    columns = [
        *_origin(log, n),
        pa.array(block.step),
        pa.array(block.token),
        pa.array(block.layer),
        names.take(pa.array(inverse.astype(np.int32))),
        pa.array(block.pos, mask=block.pos < 0),
        pa.array(block.tok, mask=block.tok < 0),
        _PHASES.take(pa.array(np.maximum(block.phase, 0).astype(np.int32), mask=unknown_phase)),
        pa.ListArray.from_arrays(offsets, pa.array(block.experts.ravel())),
        pa.ListArray.from_arrays(offsets, pa.array(block.weights.ravel())),
    ]
    return pa.Table.from_arrays(columns, schema=ROUTES_SCHEMA)


def counts_table(window: CountsWindow, log: routes.LogFile) -> pa.Table:
    """One window of a counts log as rows of ``COUNTS_SCHEMA``, one per layer."""
    n, e = window.counts.shape
    offsets = pa.array(np.arange(0, (n + 1) * e, e, dtype=np.int32))
    per_row = (window.t_start, window.t_end, window.steps, window.tokens, window.prefill_tokens)
    types = COUNTS_SCHEMA.types[len(ORIGIN) : len(ORIGIN) + len(per_row)]
    columns = [
        *_origin(log, n),
        *(pa.array(np.full(n, v), type=t) for v, t in zip(per_row, types, strict=True)),
        pa.array(window.layers.astype(np.int32)),
        pa.ListArray.from_arrays(offsets, pa.array(window.counts.ravel().astype(np.int64))),
        pa.ListArray.from_arrays(offsets, pa.array(window.weight_sums.ravel().astype(np.float64))),
    ]
    return pa.Table.from_arrays(columns, schema=COUNTS_SCHEMA)


def _origin(log: routes.LogFile, n: int) -> list[pa.Array]:
    ranks, header = log.ranks, log.header
    values = (
        header.get("run_id"),
        header.get("hostname"),
        ranks.get("dp", 0),
        ranks.get("pp", 0),
        ranks.get("tp", 0),
        log.part,
    )
    return [pa.repeat(pa.scalar(v, t), n) for v, (_, t) in zip(values, ORIGIN, strict=True)]
