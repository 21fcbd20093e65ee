"""Reading route logs back: one reader for every log the logger writes (no vLLM, no torch).

routes        the entry point: find a run's files, check they merge, iterate blocks or windows
jsonl_blocks  a JSON-lines file as Arrow tables, a few MB of lines at a time; bad lines by number
log_lines     one file's lines -> RouteBlock columns / CountsWindows, every line checked
columns       RouteBlock and CountsWindow: the columns every analysis consumes
export        logs -> Parquet, one file per log, for DuckDB, Spark, polars, pandas
"""
