#!/usr/bin/env python3
"""The same route log parsed by each candidate library: why the reader uses Arrow.

Each engine reads every line of --log into columns (step, layer, req_id, experts,
weights, ...) in its own child process; printed per engine: wall seconds, MB/s,
MB per CPU-second (what counts when other work shares the cores) and peak RSS.
Engines whose package is missing are skipped with a note. "reader" is this
project's reader (routes.iter_blocks: Arrow plus every check); the others only
parse (orjson and msgspec: into numpy columns, as the columnar engines do).

  python3 bench/reader_alternatives.py --log /tmp/parse_bench.jsonl
  python3 bench/parse_bench.py --gb 1 --keep    # writes such a log first
"""

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BLOCK = 8 << 20
FIELDS = {
    "type": "string",
    "step": "int64",
    "token": "int32",
    "layer": "int32",
    "req_id": "string",
    "pos": "int64",
    "tok": "int64",
    "experts": "int32[]",
    "weights": "float32[]",
    "prompt_len": "int64",
}
ENGINES = {
    "orjson": "orjson.loads per line, then numpy columns (the reader before this one)",
    "msgspec": "msgspec.json.Decoder(Struct).decode_lines per block, then numpy columns",
    "polars": "polars.read_ndjson per block, explicit schema",
    "duckdb": "DuckDB read_json on the whole file, explicit columns (casts leniently)",
    "arrow-1": "pyarrow.json.read_json per block, explicit schema, 1 thread",
    "arrow": "pyarrow.json.read_json per block, explicit schema, Arrow's threads",
    "reader": "routes.iter_blocks: arrow + checks, request ids, phases (this project)",
}


def blocks(path: Path):
    with open(path, "rb") as f:
        f.readline()
        rest = b""
        while chunk := f.read(BLOCK):
            text = rest + chunk
            cut = text.rfind(b"\n") + 1
            yield text[:cut]
            rest = text[cut:]


def to_columns(records: list, is_route, get) -> np.ndarray:
    """Numpy columns of the route lines (what columnar engines give): their layer column."""
    routes = [r for r in records if is_route(r)]
    out = {name: np.array([get(r, name) for r in routes]) for name in FIELDS if name != "type"}
    return out["layer"]


def parse(engine: str, path: Path) -> int:
    """Rows read by ``engine``."""
    if engine == "orjson":
        import orjson

        rows = 0
        for text in blocks(path):
            records = [orjson.loads(line) for line in text.splitlines()]
            rows += len(to_columns(records, lambda r: r.get("type") == "route", dict.get))
        return rows
    if engine == "msgspec":
        import msgspec

        class Line(msgspec.Struct, gc=False):
            type: str
            step: int = -1
            token: int = -1
            layer: int = -1
            req_id: str = ""
            pos: int = -1
            tok: int = -1
            experts: list[int] = []
            weights: list[float] = []
            prompt_len: int = -1

        decoder = msgspec.json.Decoder(Line)
        rows = 0
        for text in blocks(path):
            records = decoder.decode_lines(text)
            rows += len(to_columns(records, lambda r: r.type == "route", getattr))
        return rows
    if engine == "polars":
        import polars as pl

        kinds = {"string": pl.String, "int64": pl.Int64, "int32": pl.Int32}
        kinds |= {"int32[]": pl.List(pl.Int32), "float32[]": pl.List(pl.Float32)}
        schema = {name: kinds[t] for name, t in FIELDS.items()}
        return sum(pl.read_ndjson(io.BytesIO(t), schema=schema).height for t in blocks(path))
    if engine == "duckdb":
        import duckdb

        kinds = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER"}
        kinds |= {"int32[]": "INTEGER[]", "float32[]": "FLOAT[]"}
        columns = ", ".join(f"{n}: '{kinds[t]}'" for n, t in FIELDS.items())
        query = (
            f"SELECT * FROM read_json('{path}', format='newline_delimited', columns={{{columns}}})"
        )
        return sum(b.num_rows for b in duckdb.sql(query).to_arrow_reader(1 << 17))
    if engine.startswith("arrow"):
        import pyarrow as pa
        import pyarrow.json as pa_json

        kinds = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32()}
        kinds |= {"int32[]": pa.list_(pa.int32()), "float32[]": pa.list_(pa.float32())}
        schema = pa.schema([(n, kinds[t]) for n, t in FIELDS.items()])
        read = pa_json.ReadOptions(use_threads=engine == "arrow", block_size=1 << 20)
        options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        return sum(
            pa_json.read_json(io.BytesIO(t), read_options=read, parse_options=options).num_rows
            for t in blocks(path)
        )
    if engine == "reader":
        sys.path.insert(0, str(REPO))
        from moe_profiler.reading import routes

        return sum(map(len, routes.iter_blocks(routes.open_logs([path]))))
    raise ValueError(engine)


def measure(engine: str, path: Path) -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    rows = parse(engine, path)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    size = path.stat().st_size / 1e6
    return {
        "engine": engine,
        "rows": rows,
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / seconds),
        "mb_per_cpu_s": round(size / cpu),
        "peak_rss_mb": round(after.ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, required=True, help="the route log to read")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma list of engines (default: all: %(default)s)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.log)))
        return
    print(f"{args.log} ({args.log.stat().st_size / 1e9:.2f} GB), {os.cpu_count()} CPUs")
    for engine in args.engines.split(","):
        load = os.getloadavg()[0]
        out = subprocess.run(
            [sys.executable, __file__, "--log", str(args.log), "--child", engine],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            print(f"  {engine:8} skipped: {last}")
            continue
        r = json.loads(out.stdout)
        print(
            f"  {engine:8} {r['rows']:>10,} rows {r['seconds']:7.2f} s {r['mb_per_s']:5} MB/s "
            f"{r['mb_per_cpu_s']:5} MB/CPU-s  RSS {r['peak_rss_mb']:5} MB  load {load:.1f}  "
            f"{ENGINES[engine]}"
        )


if __name__ == "__main__":
    main()
