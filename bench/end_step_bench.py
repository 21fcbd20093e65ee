#!/usr/bin/env python3
"""The engine thread's Python cost of one pass in ``end_step``, timed alone on the CPU.

Times ``hooks.end_step`` (what the model runner calls after every pass) in a loop
outside any engine, with the device work stubbed out as ``gil_probe.py``'s
``alone`` mode does, so what is left is the logger's own Python: request ids,
positions, the prefill count, the window clock, queueing a pass. ``counts`` mode
has no drain work per pass; ``routes`` mode queues every pass to the drain
thread, which copies it and sends it to a real writer process meanwhile (zeroed
staging slots, so the writer encodes valid lines). The writer is slower than this
loop, so routes mode soon waits for free slots (back-pressure): its wall time per
pass is the writer's pace, and the engine thread's CPU time per pass
(``time.thread_time``, which excludes waits for a slot or for the GIL) is the
figure that says what ``end_step`` itself costs.

``--package-root`` names the folder that holds the ``moe_route_log`` package to
time, so two versions can be compared on the same machine, runs alternating:

  git archive BASE moe_route_log | tar -x -C /tmp/base
  python3 bench/end_step_bench.py --package-root /tmp/base --out base-1.json
  python3 bench/end_step_bench.py --out new-1.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQS, PROMPT_LEN = 100, 100  # a decode pass: 100 requests, one token each


def fake_runner():
    """What ``hooks.end_step`` reads from vLLM's model runner."""
    import numpy as np
    import torch

    batch = types.SimpleNamespace(
        req_ids=[f"req-{i}" for i in range(128)],
        num_prompt_tokens=np.full(128, PROMPT_LEN, np.int32),
        num_computed_tokens_cpu=np.arange(128, dtype=np.int32) + PROMPT_LEN,  # decodes
    )
    return types.SimpleNamespace(
        input_batch=batch,
        input_ids=types.SimpleNamespace(gpu=torch.zeros(512, dtype=torch.int32)),
    )


def stub_device_work() -> None:
    """No device work per pass; staging slots hold zeros (valid routes for the writer)."""
    from moe_route_log import counts

    init = counts.DeviceExpertCounts.__init__

    def zeroed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for staging in self.staging:
            staging.zero_()

    counts.DeviceExpertCounts.__init__ = zeroed_init
    counts.DeviceExpertCounts.add = lambda self, rows, input_ids=None, slot=None: None


def time_mode(mode: str, work: Path, passes: int, repeats: int) -> dict[str, list[float]]:
    """``repeats`` timings of ``passes`` calls each, one session: wall and engine-thread
    CPU microseconds per pass."""
    import numpy as np
    import torch

    from moe_route_log import hooks
    from moe_route_log.envs import read_config
    from moe_route_log.session import RouteLogSession

    env = {"VLLM_LOG_MOE": str(work / f"{mode}.jsonl"), "VLLM_LOG_MOE_MODE": mode}
    env["VLLM_LOG_MOE_ENCODERS"] = "1"
    meta = {"layers": [0, 1], "ranks": {}, "num_layers": 2, "num_experts": 8, "top_k": 4}
    meta |= {"model_name": "bench", "hostname": "bench", "mode": mode, "sample": 1.0}
    session = RouteLogSession(read_config(env), meta, 512, 2, 4, 8, torch.device("cpu"))
    runner, tokens_per_req = fake_runner(), np.ones(REQS, np.int32)
    hooks._session = session
    try:
        for _ in range(200):  # warm-up
            hooks.end_step(runner, tokens_per_req)
        timings: dict[str, list[float]] = {"wall_us": [], "cpu_us": []}
        for _ in range(repeats):
            began, began_cpu = time.perf_counter(), time.thread_time()
            for _ in range(passes):
                hooks.end_step(runner, tokens_per_req)
            cpu = time.thread_time() - began_cpu
            timings["wall_us"].append(round(1e6 * (time.perf_counter() - began) / passes, 2))
            timings["cpu_us"].append(round(1e6 * cpu / passes, 2))
    finally:
        hooks._session = None
        session.close()
    return timings


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--package-root", type=Path, default=REPO, help="folder holding moe_route_log/")
    p.add_argument("--passes", type=int, default=3000, help="end_step calls per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per mode")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    sys.path.insert(0, str(args.package_root.resolve()))
    stub_device_work()
    python = platform.python_version()
    results: dict = {
        "package_root": str(args.package_root),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {python}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "passes": args.passes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("counts", "routes"):
            timings = time_mode(mode, Path(tmp), args.passes, args.repeats)
            results[mode] = {
                **{f"median_{k}": statistics.median(v) for k, v in timings.items()},
                **timings,
            }
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
