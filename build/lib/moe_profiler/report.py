"""Route logs -> usage summary (JSON), histogram/heatmap (PNG) and a short table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from moe_profiler import plots, routes, stats


def analyze(
    specs: list[str],
    png: Path | None,
    summary_path: Path | None,
    strict: bool = False,
    hist_layer: int | None = None,
) -> dict:
    """Read the logs ``specs`` (files, folders, globs) once; write the outputs.

    Routes logs are counted line by line; counts logs add up their windows.
    """
    paths = routes.find_logs(specs)
    logs = routes.open_logs(paths)
    header = logs[0].header
    layers = sorted({layer for log in logs for layer in log.header["layers"]})
    counter = stats.UsageCounter(layers, header["num_experts"])
    if logs[0].mode == routes.COUNTS_MODE:
        for window in routes.iter_counts(logs, strict=strict):
            counter.add_counts(window)
    else:
        for block in routes.iter_blocks(logs, strict=strict):
            counter.add_block(block)
    per_layer = counter.summary(header["top_k"])
    summary = {
        "mode": logs[0].mode,
        **run_identity(logs),
        "ranks": sorted({_rank_label(log.ranks) for log in logs}),
        "route_lines": sum(log.routes for log in logs),
        "count_windows": sum(log.windows for log in logs),
        "skipped_lines": sum(len(log.problems) for log in logs),
        "complete": all(log.trailer is not None for log in logs),
        "engine_wait_s": sum((log.trailer or {}).get("engine_wait_s", 0.0) for log in logs),
        "layers": per_layer,
    }
    if summary_path is not None:
        Path(summary_path).write_text(json.dumps(summary, indent=1) + "\n")
    if png is not None:
        layer = layers[0] if hist_layer is None else hist_layer
        if layer not in layers:
            raise routes.RouteLogError(f"layer {layer} is not in the logs (logged: {layers})")
        tokens = per_layer[str(layer)]["tokens"]
        title = f"{model_label(header)}: expert usage, {tokens:,} tokens"
        plots.plot_usage(counter.counts, layers, layer, title, Path(png))
    return summary


def table(summary: dict) -> str:
    """A few lines per layer for the terminal."""
    lines = [
        f"{len(summary['files'])} file(s), ranks {', '.join(summary['ranks'])}: "
        + (
            f"{summary['count_windows']:,} count windows"
            if summary.get("mode") == routes.COUNTS_MODE
            else f"{summary['route_lines']:,} route lines"
        )
        + (f", {summary['skipped_lines']} bad lines skipped" if summary["skipped_lines"] else "")
        + ("" if summary["complete"] else " (no end-of-log trailer: log incomplete?)"),
        f"{'layer':>5} {'tokens':>9} {'max/mean':>8} {'cv':>6} {'entropy':>7} {'jain':>6}"
        "  hottest / coldest",
    ]
    for layer, m in summary["layers"].items():
        if not m.get("assignments"):
            lines.append(f"{layer:>5} {0:>9}")
            continue
        hot = ",".join(str(h["expert"]) for h in m["hottest"])
        cold = ",".join(str(c["expert"]) for c in m["coldest"])
        lines.append(
            f"{layer:>5} {m['tokens']:>9,} {m['max_over_mean']:>8.2f} {m['cv']:>6.2f} "
            f"{m['entropy']:>7.3f} {m['jain']:>6.3f}  {hot} / {cold}"
        )
    return "\n".join(lines)


def run_identity(logs: list[routes.LogFile]) -> dict:
    """What every output says of the logs it read: model, run, schema, shape, files."""
    header = logs[0].header
    return {
        "model_id": header.get("model_id"),
        "model_name": model_label(header),
        "run_id": header.get("run_id"),
        "schema": header["schema"],
        "num_experts": header["num_experts"],
        "top_k": header["top_k"],
        "files": [str(log.path) for log in logs],
    }


def model_label(header: dict) -> str:
    """The model's name for titles: the header's ``model_name`` (hub id or folder name).

    Logs written before that field existed: the last part of an absolute path.
    """
    name = header.get("model_name") or header.get("model_id") or "unknown model"
    return os.path.basename(name.rstrip("/")) if os.path.isabs(name) else name


def _rank_label(ranks: dict) -> str:
    return f"dp{ranks.get('dp', 0)}-pp{ranks.get('pp', 0)}-tp{ranks.get('tp', 0)}"
