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


def in_graph_counter(n_real: int, slots: int = 2, experts: int = 8, max_reqs: int = 4):
    """The accumulators and a query_start_loc-like source whose last element is ``n_real``."""
    from moe_route_log.graph_counts import InGraphCounts

    source = torch.zeros(max_reqs + 1, dtype=torch.int32)
    source[-1] = n_real
    counts = torch.zeros(slots * experts, dtype=torch.int64)
    sums = torch.zeros(slots * experts, dtype=torch.float32)
    return InGraphCounts(counts, sums, experts, source), source


def test_in_graph_counts_skip_padding_rows_beyond_the_real_token_count():
    counter, _ = in_graph_counter(n_real=6)
    ids = torch.tensor([[1, 2], [1, 3], [4, 2], [7, 6], [0, 5], [5, 1], [7, 7], [7, 7]])
    weights = torch.arange(16, dtype=torch.float32).view(8, 2) / 16
    counter.count(ids.int(), weights, slot=1, row_offset=0)  # rows 6, 7: padding
    counts = counter.counts.view(2, 8)
    want = torch.bincount(ids[:6].flatten(), minlength=8)
    assert counts[1].tolist() == want.tolist() and counts[0].eq(0).all()
    want_sums = torch.zeros(8).index_add_(0, ids[:6].flatten(), weights[:6].flatten())
    assert torch.allclose(counter.weight_sums.view(2, 8)[1], want_sums)
    # chunks: rows 4.. of the pass; only rows 4 and 5 are real
    counter.counts.zero_()
    counter.count(ids[4:].to(torch.int64), weights[4:].bfloat16(), slot=0, row_offset=4)
    assert counts[0].tolist() == torch.bincount(ids[4:6].flatten(), minlength=8).tolist()


def test_in_graph_counts_read_the_token_count_when_they_run_also_compiled():
    """The op is kept by Dynamo (fullgraph) and reads n_real at run time, not at trace time."""
    counter, source = in_graph_counter(n_real=3)
    ids = torch.tensor([[0, 1]] * 8, dtype=torch.int32)
    weights = torch.full((8, 2), 0.5)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def forward(ids, weights):
        counter.count(ids, weights, 0, 0)
        return weights * 2

    forward(ids, weights)
    source[-1] = 8  # the next pass: 8 real rows, same padded shape, no retrace needed
    forward(ids, weights)
    source[-1] = 0  # a pass that counts nothing
    forward(ids, weights)
    assert counter.counts.view(2, 8)[0, :2].tolist() == [11, 11]
    assert counter.weight_sums.view(2, 8)[0, :2].tolist() == [5.5, 5.5]


def test_a_recorder_with_an_in_graph_counter_counts_instead_of_copying():
    from types import SimpleNamespace

    from moe_route_log.recorder import LayerRecorder

    counter, _ = in_graph_counter(n_real=2)
    buffers = RouteBuffers(rows=4, num_layers=2, top_k=2, device=torch.device("cpu"))
    layer = SimpleNamespace(eplb=False)  # what the recorder reads of its layer view
    recorder = LayerRecorder(layer, buffers, slot=1, dp_rank=0, weight_scale=2.0, counter=counter)
    ids = torch.tensor([[3, 4], [3, 5], [6, 6]], dtype=torch.int32)
    recorder.record(None, None, torch.full((3, 2), 0.25), ids)
    assert counter.counts.view(2, 8)[1].tolist() == [0, 0, 0, 2, 1, 1, 0, 0]
    assert counter.weight_sums.view(2, 8)[1, 3].item() == 1.0  # scaled weights
    assert buffers.routes.eq(0).all(), "nothing goes to the route buffer"


def test_in_graph_counting_is_used_only_where_it_can_be_right(tmp_path):
    from types import SimpleNamespace

    from moe_route_log import hooks
    from moe_route_log.envs import read_config

    def config(**env):
        return read_config({"VLLM_LOG_MOE": str(tmp_path / "log.jsonl"), **env})

    class Runner:  # what hooks reads of Model Runner V1 (GPUModelRunner, CPUModelRunner)
        def __init__(self, vllm_config):
            self.vllm_config = vllm_config
            self.query_start_loc = SimpleNamespace(gpu=torch.zeros(5, dtype=torch.int32))

    vllm_config = SimpleNamespace(device_config=SimpleNamespace(device=torch.device("cpu")))
    runner = Runner(vllm_config)
    hooks.runner_created(runner)
    on = config(VLLM_LOG_MOE_MODE="counts", VLLM_LOG_MOE_COUNTS_IN_GRAPH="1")
    path, source = hooks._counts_path(on, vllm_config, dp_size=1)
    assert path == hooks.IN_GRAPH and source is runner.query_start_loc.gpu
    assert hooks._counts_path(on, vllm_config, dp_size=2) == (hooks.END_OF_PASS, None)
    other_engine = SimpleNamespace(device_config=vllm_config.device_config)
    assert hooks._counts_path(on, other_engine, dp_size=1) == (hooks.END_OF_PASS, None)
    routes = config(VLLM_LOG_MOE_COUNTS_IN_GRAPH="1")
    assert hooks._counts_path(routes, vllm_config, dp_size=1) == (hooks.END_OF_PASS, None)
    assert hooks._counts_path(config(VLLM_LOG_MOE_MODE="counts"), vllm_config, 1)[0] == (
        hooks.END_OF_PASS
    )
    del runner  # a weak reference: a runner that is gone is not used
    assert hooks._counts_path(on, vllm_config, dp_size=1) == (hooks.END_OF_PASS, None)
