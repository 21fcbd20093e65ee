"""Reading routing records back: every log the logger writes, its dumps, vLLM's own
routed_experts (no vLLM, no torch).

routes        the entry point: find a run's files, check they merge, iterate blocks or windows
jsonl_blocks  a JSON-lines file as Arrow tables, a few MB of lines at a time; bad lines by number
log_lines     one file's lines -> RouteBlock columns / CountsWindows, every line checked
columns       RouteBlock and CountsWindow: the columns every analysis consumes
dumps         dumps of /dump_expert_distribution_record -> CountsWindows
native        vLLM's own routed_experts (OpenAI responses) -> RouteBlocks, no weights
export        logs -> Parquet, one file per log, for DuckDB, Spark, polars, pandas
"""
