#!/usr/bin/env python3
"""Where logging's time goes on the GPU, piece by piece (run on the GPU host).

1. In the CUDA graph: a pass of L layers, each routing R tokens (softmax + top-k of
   random logits, as a router does), captured three ways: routing only; plus this
   recorder's copy (ids and weight bits in one torch.cat); plus the earlier
   recorder's two copies. Replayed many times and timed with CUDA events, the
   difference is the recorder's device time per layer and per pass.
2. After the pass (``end_step``'s device work, ``counts.py``): counts mode (the
   fused kernel, or the torch fallback where it is not used); routes mode (the same
   kernel staging the routes and token ids, one copy to pinned host memory, an
   event); and both again on the torch path, for comparison. Host time per call is
   what the engine thread spends launching; when it equals the device time, the host
   is the bottleneck and the GPU waits for it.

  python3 bench/recorder_bench.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

SHAPES = {  # name: (layers, experts, top_k)
    "qwen1.5-moe": (24, 60, 4),
    "olmoe": (16, 64, 8),
    "qwen3-30b-a3b": (48, 128, 8),
}


def graph_ms(fn, replays: int) -> float:
    """Milliseconds per replay of ``fn`` captured in a CUDA graph."""
    import torch

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(20):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def in_graph(layers: int, experts: int, top_k: int, rows: int, replays: int) -> dict:
    import torch

    from moe_route_log.recorder import RouteBuffers, store_routes

    logits = torch.randn(layers, rows, experts, device="cuda")
    buffers = RouteBuffers(8192, layers, top_k, torch.device("cuda"))
    old_ids = torch.zeros((8192, layers, top_k), dtype=torch.int32, device="cuda")
    old_weights = torch.zeros((8192, layers, top_k), dtype=torch.float32, device="cuda")

    def route(layer):
        weights, ids = torch.topk(torch.softmax(logits[layer], dim=-1), top_k)
        return ids.to(torch.int32), weights

    def routing_only():
        for layer in range(layers):
            route(layer)

    def this_recorder():
        for layer in range(layers):
            ids, weights = route(layer)
            store_routes(ids, weights, buffers.routes, layer, 0, -1)

    def two_copies():
        for layer in range(layers):
            ids, weights = route(layer)
            old_ids[:rows, layer].copy_(ids)
            old_weights[:rows, layer].copy_(weights)

    base = graph_ms(routing_only, replays)
    cat = graph_ms(this_recorder, replays)
    old = graph_ms(two_copies, replays)
    return {
        "rows": rows,
        "routing_ms_per_pass": round(base, 4),
        "recorder_us_per_pass": round((cat - base) * 1000, 2),
        "recorder_us_per_layer": round((cat - base) * 1000 / layers, 3),
        "two_copies_us_per_pass": round((old - base) * 1000, 2),
        "two_copies_us_per_layer": round((old - base) * 1000 / layers, 3),
    }


def end_step(layers: int, experts: int, top_k: int, rows: int, calls: int) -> dict:
    """Host and device time per pass of end_step's device work (counts.py), both modes."""
    import torch

    from moe_route_log import counts
    from moe_route_log.counts import DeviceExpertCounts
    from moe_route_log.recorder import RouteBuffers

    buffers = RouteBuffers(8192, layers, top_k, torch.device("cuda"))
    buffers.expert_ids.copy_(torch.randint(0, experts, buffers.expert_ids.shape))
    counts_mode = DeviceExpertCounts(buffers, experts)
    routes_mode = DeviceExpertCounts(buffers, experts, staging=True)
    fused = counts._fused_kernel
    counts._fused_kernel = lambda: None  # the torch path, for comparison
    counts_torch = DeviceExpertCounts(buffers, experts)
    routes_torch = DeviceExpertCounts(buffers, experts, staging=True)
    counts._fused_kernel = fused
    host = torch.empty(layers * 8192 * 2 * top_k + 8192, dtype=torch.int32, pin_memory=True)
    input_ids = torch.zeros(8192, dtype=torch.int32, device="cuda")
    event = torch.cuda.Event(blocking=True)

    def counts_only(mode=counts_mode):
        mode.add(rows)

    def routes(mode=routes_mode):
        staged = mode.add(rows, input_ids)
        host[: len(staged)].copy_(staged, non_blocking=True)
        event.record()

    out = {"rows": rows, "fused_kernel": counts_mode._kernel is not None}
    for name, fn in (
        ("counts", counts_only),
        ("routes", routes),
        ("counts_torch_path", lambda: counts_only(counts_torch)),
        ("routes_torch_path", lambda: routes(routes_torch)),
    ):
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        began = time.perf_counter()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        host_us = (time.perf_counter() - began) * 1e6 / calls
        end.synchronize()
        out[f"{name}_host_us"] = round(host_us, 2)
        out[f"{name}_device_us"] = round(start.elapsed_time(end) * 1000 / calls, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", default="128,512", help="tokens per pass to try")
    p.add_argument("--replays", type=int, default=500, help="graph replays per timing")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    import torch

    results = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for name, (layers, experts, top_k) in SHAPES.items():
        rows = [int(r) for r in args.rows.split(",")]
        results["shapes"][name] = {
            "layers": layers,
            "in_graph": [in_graph(layers, experts, top_k, r, args.replays) for r in rows],
            "end_step": [end_step(layers, experts, top_k, r, 1000) for r in rows],
        }
        print(name, json.dumps(results["shapes"][name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
