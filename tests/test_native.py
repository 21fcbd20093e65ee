"""vLLM's own routed_experts read back (moe_profiler/reading/native.py), and RequestOutputs
saved for it (moe_profiler/running/routed_experts.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import distinct_ids, vllm_response, write_jsonl

from moe_profiler.analysis import inputs
from moe_profiler.analysis.description import Need, OptionError
from moe_profiler.reading import native
from moe_profiler.reading.columns import DECODE, PREFILL, RouteBlock
from moe_profiler.reading.routes import RouteLogError
from moe_profiler.running.routed_experts import save_request_outputs


def capture_ids(rng, tokens, routed=(0, 2), layers=3, top_k=2, experts=6) -> np.ndarray:
    """[tokens, layers, top_k] ids; layers not in ``routed`` all 0, as vLLM leaves dense ones."""
    ids = np.zeros((tokens, layers, top_k), dtype=np.int64)
    ids[:, list(routed)] = distinct_ids(rng, tokens, len(routed), top_k, experts)
    return ids


def read(path, num_experts=6, strict=False):
    capture = native.open_capture(path)
    warnings = []
    blocks = list(native.iter_capture_blocks(capture, num_experts, 0, strict, warnings.append))
    return capture, (RouteBlock.concat(blocks) if blocks else None), warnings


def test_rows_start_where_the_prompt_start_skipped_and_split_into_prefill_and_decode(tmp_path):
    rng = np.random.default_rng(0)
    prompt, outputs = [10, 11, 12, 13, 14], [20, 21, 22]
    ids = capture_ids(rng, 5)  # prompt + outputs - 1 = 7 rows; routed_experts_prompt_start 2
    path = write_jsonl(tmp_path / "r.jsonl", [vllm_response(prompt, outputs, ids, chat=True)])
    capture, block, warnings = read(path)
    assert (capture.num_layers, capture.top_k, capture.layers) == (3, 2, [0, 2])
    assert capture.token_ids and warnings == [] and capture.tokens == 5
    assert block.pos.tolist() == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]  # token-major
    assert block.layer.tolist() == [0, 2] * 5
    assert block.tok.tolist() == np.repeat([12, 13, 14, 20, 21], 2).tolist()
    assert block.phase.tolist() == [PREFILL] * 6 + [DECODE] * 4
    assert block.experts.tolist() == ids[:, [0, 2]].reshape(10, 2).tolist()
    assert np.isnan(block.weights).all() and block.requests == ["cmpl-1-0"]
    assert set(block.request.tolist()) == {0} and set(block.step.tolist()) == {1}


def test_without_token_ids_the_usage_of_the_one_choice_places_the_rows(tmp_path):
    rng = np.random.default_rng(1)
    ids = capture_ids(rng, 6)  # 4 + 3 - 1 rows
    body = vllm_response([1, 2, 3, 4], [5, 6, 7], ids, token_ids=False)
    path = write_jsonl(tmp_path / "r.jsonl", [body])
    capture, block, _ = read(path)
    assert not capture.token_ids
    assert block.pos.tolist()[::2] == list(range(6)) and (block.tok == -1).all()
    assert block.phase.tolist()[::2] == [PREFILL] * 4 + [DECODE] * 2
    (one,) = inputs.open_inputs([str(path)], num_experts=6)
    assert Need.TOKEN_IDS not in one.provides and Need.WEIGHTS not in one.provides
    assert one.provides == inputs.CAPTURE_PROVIDES


def test_bad_responses_are_skipped_with_their_line_number_or_fatal_when_strict(tmp_path):
    rng = np.random.default_rng(2)
    good = vllm_response([1, 2], [3, 4], capture_ids(rng, 3))
    wrong_shape = vllm_response([1, 2], [3, 4], capture_ids(rng, 3, layers=4))
    high = capture_ids(rng, 3)
    high[0, 0, 0] = 6  # distinct from the other id (0-5), but not an expert of 6
    too_high = vllm_response([1, 2], [3, 4], high)
    unplaced = vllm_response([1, 2], [3, 4], capture_ids(rng, 5))
    repeated = vllm_response([1, 2], [3, 4], np.ones((3, 3, 2), dtype=np.uint8))
    path = write_jsonl(
        tmp_path / "r.jsonl",
        [good, vllm_response([1, 2], [3, 4], None), wrong_shape, too_high, unplaced, repeated],
    )
    with open(path, "a") as f:
        f.write('{"choices": [')
    capture, block, warnings = read(path)
    assert capture.problems == [
        f"{path}:2: a choice has no routed_experts (aborted before any forward pass?)",
        f"{path}:3: routed_experts is [tokens, 4, 2], the file's first response [tokens, 3, 2]",
        f"{path}:4: expert id 6: the model has 6 experts",
        f"{path}:5: 5 rows do not fit a prompt of 2 and 2 output tokens",
        f"{path}:6: layer 1 has expert ids, but not in the file's first response",
        f"{path}:7: truncated last line",
    ]
    assert warnings == [p + " (skipped)" for p in capture.problems]
    assert (capture.responses, capture.requests, capture.tokens) == (1, 1, 3)
    assert len(block) == 3 * 2
    with pytest.raises(RouteLogError, match=r"r\.jsonl:2: a choice has no routed_experts"):
        read(path, strict=True)


def test_a_row_of_repeated_ids_is_not_a_routing(tmp_path):
    ids = capture_ids(np.random.default_rng(3), 3, routed=(0, 1, 2))
    bad = ids.copy()
    bad[1, 2] = 0  # all 0 at a routed layer: not captured
    path = write_jsonl(
        tmp_path / "r.jsonl",
        [vllm_response([1, 2], [3, 4], ids), vllm_response([1], [2, 3, 4], bad)],
    )
    capture, _, _ = read(path)
    assert capture.problems == [
        f"{path}:2: row 1, layer 2: expert ids [0, 0] are not 2 distinct ids (all 0: not captured)"
    ]


def test_a_file_whose_responses_have_no_routed_experts_is_refused_naming_it(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [vllm_response([1, 2], [3], None)])
    with pytest.raises(RouteLogError) as refused:
        inputs.open_inputs([str(path)], num_experts=6)
    assert str(refused.value) == (
        f"{path.resolve()}: no response in it has routed_experts: start vllm serve with "
        "--enable-return-routed-experts (vLLM 0.3x and later puts them on each choice)"
    )
    zeros = write_jsonl(tmp_path / "zeros.jsonl", [vllm_response([1, 2], [3], np.zeros((2, 3, 2)))])
    with pytest.raises(RouteLogError, match=r"zeros\.jsonl: routed_experts holds only zeros"):
        inputs.open_inputs([str(zeros)], num_experts=6)


def test_several_choices_without_token_ids_cannot_be_placed(tmp_path):
    rng = np.random.default_rng(4)
    body = vllm_response([1, 2], [3, 4], capture_ids(rng, 3), token_ids=False)
    body["choices"].append({**body["choices"][0], "index": 1})
    path = write_jsonl(tmp_path / "r.jsonl", [body])
    capture, block, _ = read(path)
    assert block is None and capture.problems == [
        f"{path}:1: cannot place its rows: no prompt_token_ids/token_ids (ask with "
        "return_token_ids) and no usage of a single choice"
    ]


def test_saved_request_outputs_read_back_as_the_routes_they_hold(tmp_path):
    """save_request_outputs writes LLM.generate's outputs as completion bodies the reader
    reads: the same ids at the same positions, n > 1 choices each their own request."""
    rng = np.random.default_rng(5)
    outputs = []
    for i, (prompt, lengths) in enumerate((([1, 2, 3], (4, 2)), ([7, 8], (3,)))):
        completions = [
            SimpleNamespace(
                index=c,
                text="x",
                token_ids=list(range(50, 50 + n)),
                finish_reason="length",
                routed_experts=capture_ids(rng, len(prompt) + n - 1).astype(np.uint8),
            )
            for c, n in enumerate(lengths)
        ]
        outputs.append(
            SimpleNamespace(request_id=str(i), prompt_token_ids=prompt, outputs=completions)
        )
    path = tmp_path / "saved.jsonl"
    assert save_request_outputs(outputs, path, model="m") == 2
    (one,) = inputs.open_inputs([str(path)], num_experts=6)
    assert (one.kind, one.model, one.layers) == ("vLLM routed_experts", "m", [0, 2])
    block = RouteBlock.concat(list(one.read(0)))
    assert block.requests == ["0-0", "0-1", "1-0"]
    expected = np.concatenate(
        [c.routed_experts[:, [0, 2]] for o in outputs for c in o.outputs]
    ).reshape(-1, 2)
    assert block.experts.tolist() == expected.tolist()
    assert block.pos[block.request == 1].tolist()[::2] == [0, 1, 2, 3]
    assert block.tok[block.request == 2].tolist()[::2] == [7, 8, 50, 51]


def test_captures_take_the_expert_count_from_the_option_or_the_other_inputs(tmp_path):
    from helpers import write_log

    path = write_jsonl(
        tmp_path / "r.jsonl", [vllm_response([1, 2], [3], capture_ids(np.random.default_rng(6), 2))]
    )
    with pytest.raises(OptionError, match=r"r\.jsonl: vLLM's routed_experts carry expert ids "):
        inputs.open_inputs([str(path)])
    routes = [distinct_ids(np.random.default_rng(7), 2, 2, 2, 6)]
    log = write_log(tmp_path / "log.jsonl", routes, layers=(0, 2), num_experts=6, num_layers=3)
    both = inputs.open_inputs([str(log), str(path)])
    assert [one.num_experts for one in both] == [6, 6]
    with pytest.raises(OptionError, match=r"--num-experts 8: .*log\.jsonl is of a model with 6"):
        inputs.open_inputs([str(log), str(path)], num_experts=8)
