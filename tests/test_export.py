"""Parquet export (moe_profiler/reading/export.py) and the README's DuckDB query on its files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import distinct_ids, write_log
from test_blocks import write_counts_log

from moe_profiler.analysis.load import ExpertLoad
from moe_profiler.reading import export, routes
from moe_profiler.reading.columns import RouteBlock

REPO = Path(__file__).resolve().parent.parent


def two_ranks(tmp_path: Path) -> list[Path]:
    """Two data-parallel ranks of one run (the second with one bad line)."""
    rng = np.random.default_rng(5)
    paths = []
    for dp, host in ((0, "gpu-a"), (1, "gpu-b")):
        steps = [distinct_ids(rng, n, 3, 4, 12) for n in (6, 2, 3)]
        requests = [(f"{dp}{i}-cafe000{i}", 2 * i) for i in range(3)]
        paths.append(
            write_log(
                tmp_path / f"logs/routes.{host}.dp{dp}-pp0.jsonl",
                steps,
                layers=(1, 4, 6),
                num_experts=12,
                top_k=4,
                requests=requests,
                prompt_len=3,
                hostname=host,
                ranks={"dp": dp, "pp": 0, "tp": 0},
            )
        )
    lines = paths[1].read_bytes().splitlines(keepends=True)
    lines[5] = b'{"type":"route","step":1,"token":1,"layer":4,"experts":[1]}\n'
    paths[1].write_bytes(b"".join(lines))
    return paths


def test_every_route_line_becomes_a_row(tmp_path):
    logs = routes.open_logs(two_ranks(tmp_path))
    written = export.export_logs(logs, tmp_path / "pq", warn=lambda m: None)
    assert [p.name for p in written] == [
        "routes.gpu-a.dp0-pp0.parquet",
        "routes.gpu-b.dp1-pp0.parquet",
    ]
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == [p.name for p in written]
    for log, path in zip(logs, written, strict=True):
        table = pq.read_table(path)
        block = RouteBlock.concat(list(routes.iter_blocks([log], warn=lambda m: None)))
        assert table.num_rows == len(block) == log.routes
        assert table.column("experts").to_pylist() == block.experts.tolist()
        assert table.column("weights").to_pylist() == block.weights.tolist()
        assert table.column("req_id").to_pylist() == [block.requests[r] for r in block.request]
        for name in ("step", "token", "layer", "pos", "tok"):
            assert table.column(name).to_pylist() == getattr(block, name).tolist(), name
        phases = {1: "prefill", 0: "decode"}
        assert table.column("phase").to_pylist() == [phases[p] for p in block.phase]
        origin = {
            name: set(table.column(name).to_pylist()) for name in export.ROUTES_SCHEMA.names[:6]
        }
        dp = log.ranks["dp"]
        assert origin == {
            "run_id": {"run-1"},
            "host": {log.header["hostname"]},
            "dp": {dp},
            "pp": {0},
            "tp": {0},
            "part": {0},
        }
        metadata = pq.read_schema(path).metadata
        assert json.loads(metadata[b"moe_profiler.header"]) == log.header
    assert len(logs[1].problems) == 1 and logs[0].routes == 33 and logs[1].routes == 32


def test_unknown_fields_are_nulls(tmp_path):
    schema1 = REPO / "tests/data/schema1.jsonl"
    (path,) = export.export_logs(routes.open_logs([schema1]), tmp_path)
    table = pq.read_table(path)
    assert table.column("req_id").null_count == table.column("pos").null_count == 3
    assert table.column("phase").null_count == 3 and table.column("tok").null_count == 3
    assert table.column("host").to_pylist() == [None] * 3


def readme_query() -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- duckdb: expert counts per layer -->\s*```sql\n(.*?)```", readme, re.S)
    assert match, "README.md lost its DuckDB query"
    return match.group(1)


def test_the_readme_duckdb_query_counts_what_the_reader_counts(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    paths = two_ranks(tmp_path)
    out = tmp_path / "parquet"
    cli = subprocess.run(
        [sys.executable, "-m", "moe_profiler.cli", "export", str(tmp_path / "logs"), "--out", out],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("wrote 2 Parquet file(s) to ")
    assert "65 rows, 1 bad lines skipped" in cli.stdout
    query = readme_query()
    assert "'parquet/*.parquet'" in query
    rows = duckdb.sql(query.replace("'parquet/*.parquet'", f"'{out}/*.parquet'")).fetchall()
    logs = routes.open_logs(paths)
    load = ExpertLoad([1, 4, 6], 12, top_k=4)
    for block in routes.iter_blocks(logs, warn=lambda m: None):
        load.add(block)
    counts = load.totals()
    expected = [
        (layer, expert, int(counts[i, expert]))
        for i, layer in enumerate(load.rows.layers)
        for expert in range(12)
        if counts[i, expert]
    ]
    assert rows == expected
    assert sum(n for _, _, n in rows) == 65 * 4


def test_counts_logs_export_one_row_per_window_and_layer(tmp_path):
    log = routes.open_logs([write_counts_log(tmp_path / "c.jsonl")])
    (path,) = export.export_logs(log, tmp_path / "pq", warn=lambda m: None)
    table = pq.read_table(path)
    assert table.column("layer").to_pylist() == [0, 2, 2]
    assert table.column("counts").to_pylist() == [[5, 10, 5], [8, 8, 4], [1, 0, 1]]
    assert table.column("t_start").to_pylist() == [1764000000.5] * 2 + [1764000020.5]
    assert table.column("weight_sums").to_pylist()[2] == [0.25, 0.0, 0.75]


def test_two_logs_with_one_name_are_refused(tmp_path):
    a = write_log(tmp_path / "a/routes.jsonl", [], ranks={"dp": 0})
    b = write_log(tmp_path / "b/routes.jsonl", [], ranks={"dp": 1})
    with pytest.raises(routes.RouteLogError, match=r"both be exported to routes\.parquet"):
        export.export_logs(routes.open_logs([a, b]), tmp_path / "pq")
    assert not (tmp_path / "pq").exists()


def test_a_strict_export_that_fails_leaves_no_file(tmp_path):
    logs = routes.open_logs(two_ranks(tmp_path))
    with pytest.raises(routes.RouteLogError, match=r"dp1-pp0.jsonl:6: route line without"):
        export.export_logs(logs, tmp_path / "pq", strict=True)
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == ["routes.gpu-a.dp0-pp0.parquet"]


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "none"])
def test_compressions(tmp_path, compression):
    (path,) = export.export_logs(
        routes.open_logs([REPO / "tests/data/schema1.jsonl"]), tmp_path, compression=compression
    )
    assert pq.read_table(path).num_rows == 3
