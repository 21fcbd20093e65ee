"""The device-side copy (recorder.store_routes) into the packed buffer, on CPU tensors."""

import numpy as np
import torch
from moe_route_log import wire
from moe_route_log.recorder import RouteBuffers, store_routes


def test_one_layer_is_packed_ids_then_weight_bits():
    buffers = RouteBuffers(rows=6, num_layers=3, top_k=2, device=torch.device("cpu"))
    ids = torch.tensor([[1, 5], [7, 0], [2, 3], [4, 6]], dtype=torch.int32)
    weights = torch.tensor([[0.5, 0.25], [1.0, 0.0], [0.125, 3.5], [2.0, 0.75]])
    store_routes(ids, weights, buffers.routes, slot=1, row_offset=2, gathered_dp_rank=-1)
    assert buffers.expert_ids[1, 2:6].tolist() == ids.tolist()
    assert buffers.weights[1, 2:6].tolist() == weights.tolist()
    assert buffers.routes[1, :2].eq(0).all() and buffers.routes[[0, 2]].eq(0).all()
    # what the writer receives, unpacked by the wire format, is [tokens, layers, top_k]
    packed = buffers.routes[:, :6].contiguous().numpy()
    payload = b"".join(
        bytes(b)
        for b in wire.routes_frame(
            1,
            ["r"],
            np.array([6]),
            np.array([6]),
            np.arange(6),
            np.arange(6, dtype=np.int32),
            packed,
            (6, 3, 2),
        )[1:]
    )
    frame = wire.decode_routes(payload)
    assert frame.expert_ids[2:, 1].tolist() == ids.tolist()
    assert frame.weights[2:, 1].tolist() == weights.tolist()
    assert np.array_equal(wire.pack_routes(frame.expert_ids, frame.weights), packed)


def test_other_dtypes_and_overlong_chunks():
    buffers = RouteBuffers(rows=4, num_layers=1, top_k=3, device=torch.device("cpu"))
    ids = torch.tensor([[9, 8, 7]] * 5, dtype=torch.int64)  # e.g. a kernel with int64 ids
    weights = torch.full((5, 3), 0.5, dtype=torch.bfloat16)
    store_routes(ids, weights, buffers.routes, slot=0, row_offset=1, gathered_dp_rank=-1)
    assert buffers.expert_ids[0].tolist() == [[0, 0, 0]] + [[9, 8, 7]] * 3  # rows past 4: cut
    assert buffers.weights[0, 1:].eq(0.5).all()
