#!/usr/bin/env python3
"""Do two checkouts of the logger write the same logs? Real engines, line by line.

For each checkout (a folder holding apply_hook.py and moe_route_log/) it patches
the current Python's vLLM with that checkout's logger, runs the same engines
(tests/e2e_driver.py, tiny random-weight MoE, CPU build) in four settings and
keeps their logs; then it compares the two sets file by file, byte for byte,
after blanking only what differs from run to run: the header's ``created``,
``pid``, ``writer_pid``, ``hostname`` and ``log_path``, the trailer's timings and
waits, a window's ``t_start``/``t_end``, a control line's ``t``, and the 8 random
hex digits vLLM appends to request ids. The engine runs in the driver's process
(VLLM_ENABLE_V1_MULTIPROCESSING=0): every request of a ``generate`` call is then
queued before the first pass, so the passes are the same from run to run (an
engine process takes requests as they arrive, and its first passes vary); and
windows are cut by stop and shutdown only (VLLM_LOG_MOE_INTERVAL_S=3600). Run it
with one checkout twice to see that the engine itself is deterministic.

  python3 tools/compare_engine_logs.py --before /tmp/base-tree --after . --out /tmp/logs

It leaves vLLM patched with ``--after``'s logger.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GSM8K = REPO.parent / "shared/data/gsm8k/test.jsonl"
DRIVER = REPO / "tests/e2e_driver.py"

BLANK = "<varies>"
VARYING = {
    "meta": ("created", "pid", "writer_pid", "hostname", "log_path"),
    "end": (
        "engine_wait_s",
        "engine_waits",
        "end_step_s",
        "drain_cpu_s",
        "writer_cpu_s",
        "writer_buffer_peak_mb",
        "writer_buffer_full_waits",
    ),
    "counts": ("t_start", "t_end"),
    "control": ("t",),
}
RANDOM_REQ_SUFFIX = re.compile(rb'("req_id":"[^"]*)-[0-9a-f]{8}"')

COMMON = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOG_MOE_LAYER": "all",
    "VLLM_LOG_MOE_REQ_ID": "compare",
    "VLLM_LOG_MOE_SEED": "7",
    "VLLM_LOG_MOE_INTERVAL_S": "3600",
}
SETTINGS = {  # name: (VLLM_LOG_MOE_* variables, driver spec)
    "routes_controls": ({}, {"control": True}),
    "counts_controls": ({"VLLM_LOG_MOE_MODE": "counts"}, {"control": True}),
    "counts_in_graph": (
        {"VLLM_LOG_MOE_MODE": "counts", "VLLM_LOG_MOE_COUNTS_IN_GRAPH": "1"},
        {},
    ),
    "routes_sampled_rotated": (
        {"VLLM_LOG_MOE_SAMPLE": "0.5", "VLLM_LOG_MOE_MAX_MB": "1"},
        {"rounds": 3, "prompts": 24},
    ),
}


def normalized(line: bytes) -> bytes:
    """``line`` with what varies from run to run blanked; otherwise its exact bytes."""
    line = RANDOM_REQ_SUFFIX.sub(rb'\1-XXXXXXXX"', line)
    if line.startswith(b'{"type":"route"') or line.startswith(b'{"type":"request"'):
        return line
    obj = json.loads(line)
    redumped = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    if redumped != line:
        raise ValueError(f"line does not round-trip through json: {line[:200]!r}")
    for key in VARYING.get(obj.get("type"), ()):
        if key in obj:
            obj[key] = BLANK
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def run_checkout(tree: Path, model: Path, prompts: list[str], out: Path) -> None:
    """Patch vLLM with ``tree``'s logger; run every setting; logs under ``out``."""
    patch = subprocess.run(
        [sys.executable, "apply_hook.py"], cwd=tree, capture_output=True, text=True
    )
    if patch.returncode:
        sys.exit(f"apply_hook.py in {tree} failed:\n{patch.stderr}")
    for name, (log_env, options) in SETTINGS.items():
        folder = out / name
        folder.mkdir(parents=True)
        spec = {
            "model": str(model),
            "prompts": prompts[: options.get("prompts", 12)],
            "max_tokens": 12,
            "rounds": options.get("rounds", 1),
        }
        if options.get("control"):
            spec["control_out"] = str(folder / "control.json")
        (folder / "spec.json").write_text(json.dumps(spec))
        # no PYTHONPATH: the writer process must import the patched vLLM's copy of the
        # logger, not a moe_route_log/ found on the path
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("VLLM_LOG_MOE") and k != "PYTHONPATH"
        }
        env |= {"VLLM_CPU_KVCACHE_SPACE": "1"}
        env |= {"VLLM_LOG_MOE": str(folder / "log.jsonl"), **COMMON, **log_env}
        command = [sys.executable, str(DRIVER), str(folder / "spec.json"), str(folder / "out.json")]
        proc = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{tree} {name}: the engine failed:\n{proc.stderr[-3000:]}")
        print(f"{tree} {name}: done", flush=True)


def compare(before: Path, after: Path) -> list[str]:
    """One line per setting: identical (and how much), or the first difference."""
    from moe_profiler import routes

    report = []
    for name in SETTINGS:
        logs = {}
        for side in (before, after):
            files = sorted((side / name).glob("log*.jsonl"))
            for f in files:
                routes.wait_until_complete(f, timeout=60)
            logs[side] = {f.name: f.read_bytes().splitlines(keepends=True) for f in files}
        if logs[before].keys() != logs[after].keys():
            report.append(f"{name}: DIFFERENT files {sorted(logs[before])} {sorted(logs[after])}")
            continue
        difference, lines = None, 0
        for file, old in logs[before].items():
            new = logs[after][file]
            for i, (a, b) in enumerate(zip(old, new, strict=False)):
                if normalized(a) != normalized(b):
                    difference = f"{file} line {i + 1}:\n  {a[:300]!r}\n  {b[:300]!r}"
                    break
            if difference is None and len(old) != len(new):
                difference = f"{file}: {len(old)} lines before, {len(new)} after"
            if difference:
                break
            lines += len(old)
        kinds = sorted({json.loads(line)["type"] for f in logs[after].values() for line in f})
        verdict = f"DIFFERENT at {difference}" if difference else "identical"
        report.append(f"{name}: {verdict} ({len(logs[after])} files, {lines} lines; {kinds})")
    return report


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--before", type=Path, required=True, help="checkout of the old logger")
    p.add_argument("--after", type=Path, required=True, help="checkout of the new logger")
    p.add_argument("--out", type=Path, required=True, help="new folder for models and logs")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from moe_profiler.running.local_models import build_tiny_moe

    questions = [json.loads(line)["question"] for line in GSM8K.open() if line.strip()]
    args.out.mkdir(parents=True)
    model = build_tiny_moe(args.out / "model", questions[:400], num_layers=3, top_k=3)
    for side, tree in (("before", args.before), ("after", args.after)):
        run_checkout(tree.resolve(), model, questions, args.out / side)
    report = compare(args.out / "before", args.out / "after")
    print("\n".join(report))
    (args.out / "report.txt").write_text("\n".join(report) + "\n")
    return 0 if all(": identical" in line for line in report) else 1


if __name__ == "__main__":
    sys.exit(main())
