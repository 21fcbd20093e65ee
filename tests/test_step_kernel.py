"""The fused end-of-pass kernel (moe_route_log/step_kernel.py), run by Triton's interpreter.

On the GPU a session runs the same self-check before it uses the kernel. Here the
interpreter executes the kernel's code on CPU tensors, so its indexing, masks,
atomics and staging layout are checked against plain torch on passes of several
shapes (rows not a multiple of the block, one row, several blocks).
"""

import os
import subprocess
import sys
from pathlib import Path

OVERLAY = (
    Path(__file__).resolve().parent.parent / "vllm_overlay/vllm/model_executor/layers/fused_moe"
)

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
