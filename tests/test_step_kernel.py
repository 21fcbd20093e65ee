"""The fused end-of-pass kernel (step_kernel.py) and the in-graph count kernel
(graph_kernel.py), run by Triton's interpreter.

On the GPU a session runs the same self-check before it uses the kernel. Here the
interpreter executes the kernel's code on CPU tensors, so its indexing, masks,
atomics and staging layout are checked against plain torch on passes of several
shapes (rows not a multiple of the block, one row, several blocks).
"""

import os
import subprocess
import sys
from pathlib import Path

OVERLAY = Path(__file__).resolve().parent.parent  # holds the moe_route_log package

SCRIPT = f"""
import sys
sys.path.append({str(OVERLAY)!r})
import torch
from moe_route_log import step_kernel

step_kernel.self_check("cpu")
g = torch.Generator().manual_seed(1)
for layers, rows_max, top_k, experts, rows, stage in [
    (2, 3000, 8, 64, 2999, True),  # three blocks of 1024 cells per layer
    (5, 16, 2, 8, 1, True),
    (4, 64, 6, 160, 50, False),
]:
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k]
                       for _ in range(layers * rows_max)]).view(layers, rows_max, top_k)
    weights = torch.rand((layers, rows_max, top_k), generator=g) * 2.5
    routes = torch.cat([ids.int(), weights.view(torch.int32)], dim=2)
    tokens = torch.randint(0, 200_000, (rows_max,), generator=g).int()
    counts = torch.zeros(layers * experts, dtype=torch.int64)
    sums = torch.zeros(layers * experts, dtype=torch.float32)
    size = layers * rows * 2 * top_k + rows
    staged = torch.full((size,), -7, dtype=torch.int32) if stage else None
    step_kernel.end_of_pass(routes, rows, top_k, experts, counts, sums, staged, tokens)
    want = step_kernel.reference(routes, rows, top_k, experts, tokens)
    want_counts, want_sums, want_staged = want
    assert torch.equal(counts, want_counts), (layers, rows)
    assert torch.allclose(sums.double(), want_sums, atol=1e-4), (layers, rows)
    assert int(counts.sum()) == layers * rows * top_k
    if stage:
        assert torch.equal(staged, want_staged), (layers, rows)
print("ok")
"""


def test_kernel_equals_torch_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


IN_GRAPH_SCRIPT = f"""
import sys
sys.path.append({str(OVERLAY)!r})
import torch
from moe_route_log import graph_kernel
from moe_route_log.graph_counts import count_torch

graph_kernel.self_check("cpu")
g = torch.Generator().manual_seed(2)
for rows, top_k, experts, n_real, row_offset, ids_dtype, w_dtype in [
    (1100, 8, 64, 1000, 0, torch.int32, torch.float32),  # several blocks, padding rows
    (16, 3, 8, 40, 30, torch.int64, torch.bfloat16),  # a chunk: rows 30..45, 10 real
    (8, 2, 8, 0, 0, torch.int32, torch.float32),  # a pass with no real row
]:
    ids = torch.randint(0, experts, (rows, top_k * 2), generator=g).to(ids_dtype)[:, ::2]
    weights = torch.rand((rows, top_k), generator=g).to(w_dtype)
    n = torch.tensor([7, n_real], dtype=torch.int32)[1:]
    got = []
    for count in (graph_kernel.count_routes, count_torch):
        counts = torch.zeros(2 * experts, dtype=torch.int64)
        sums = torch.zeros(2 * experts, dtype=torch.float32)
        count(ids, weights, counts, sums, n, experts, row_offset)
        got.append((counts, sums))
    (counts, sums), (want_counts, want_sums) = got
    assert torch.equal(counts, want_counts), rows
    assert torch.allclose(sums, want_sums, atol=1e-3), rows
    real = max(0, min(rows, n_real - row_offset))
    assert int(counts.sum()) == real * top_k and counts[:experts].eq(0).all(), rows
print("ok")
"""


def test_in_graph_kernel_equals_torch_in_the_interpreter():
    """graph_kernel.py: masks rows at or beyond the device token count, strided int64 ids,
    bf16 weights, a slot's offset into the flat accumulators."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", IN_GRAPH_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
