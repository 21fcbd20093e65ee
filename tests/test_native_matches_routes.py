"""vLLM's own routed_experts of a run answer as the route log of the same run does.

tests/data/native holds one ``vllm serve``'s responses with ``routed_experts``
(``responses.jsonl``, one body per line) and its route log of every layer
(``routes.jsonl``), recorded with vLLM 0.34.0 on an H100 by ``bench/native_capture.py``
(``bench/results/h100-2026-12-06-v034/``: Qwen1.5-MoE's shape cut to 4 layers, dummy
weights, 8 completions and 2 chats). Prefix caching was on: the log has no lines for
prompt tokens served from the cache, the capture may have rows for them. So each
response is first matched to its logged request (by its token ids at the logged
positions) and cut to the positions that request logged, re-encoded as vLLM encodes a
request with ``routed_experts_prompt_start`` there; then the report of the capture and
the report of the log must agree on everything the capture can answer.
"""

from __future__ import annotations

import json

import numpy as np
from conftest import REPO
from helpers import write_jsonl

from moe_profiler.analysis import pipeline
from moe_profiler.analysis.description import Options
from moe_profiler.reading import native, routes

DATA = REPO / "tests/data/native"


def logged_requests(log: routes.LogFile) -> dict[str, dict[int, int]]:
    """Per logged request: position -> input token id (at the first logged layer)."""
    first_layer = min(log.header["layers"])
    logged: dict[str, dict[int, int]] = {}
    for r in routes.iter_routes(log, strict=True):
        if r.layer == first_layer:
            logged.setdefault(r.req_id, {})[r.pos] = r.tok
    return logged


def keep_logged_positions(bodies: list[dict], logged: dict[str, dict[int, int]]) -> list[dict]:
    """Each response cut to the positions of the logged request it is; every response and
    every logged request matched exactly once."""
    unmatched = dict(logged)
    kept = []
    for body in bodies:
        body = json.loads(json.dumps(body))
        for choice in body["choices"]:
            sequence = (choice.get("prompt_token_ids") or body["prompt_token_ids"]) + choice[
                "token_ids"
            ]
            ids = native.decode_routed_experts(choice["routed_experts"])
            start = len(sequence) - 1 - len(ids)
            req = next(
                req
                for req, toks in unmatched.items()
                if min(toks) >= start and all(sequence[p] == t for p, t in toks.items())
            )
            first = min(unmatched.pop(req))
            choice["routed_experts"] = native.encode_routed_experts(ids[first - start :])
        kept.append(body)
    assert not unmatched, f"logged requests without a response: {sorted(unmatched)}"
    return kept


def test_vllms_routed_experts_give_the_coactivation_and_paths_of_the_route_log(tmp_path):
    log = routes.LogFile(DATA / "routes.jsonl", routes.read_header(DATA / "routes.jsonl"))
    bodies = [json.loads(line) for line in (DATA / "responses.jsonl").open()]
    capture = write_jsonl(
        tmp_path / "capture.jsonl", keep_logged_positions(bodies, logged_requests(log))
    )
    options = Options(num_experts=log.header["num_experts"], top=10**6, min_count=1, eplb=False)
    by_log = pipeline.write_report([str(log.path)], tmp_path / "log", options)
    by_capture = pipeline.write_report([str(capture)], tmp_path / "capture", options)
    layers = log.header["layers"]
    assert by_capture["meta"]["layers"] == by_log["meta"]["layers"] == layers
    tokens = by_log["meta"]["route_lines"] // len(layers)
    assert by_log["coactivation"][str(layers[0])]["tokens"] == tokens > 0
    # co-activation: every pair of every layer (top and min_count let all through)
    assert by_capture["coactivation"] == by_log["coactivation"]
    pairs = by_log["coactivation"][str(layers[0])]["top_pairs"]
    assert sum(p["count"] for p in pairs) == tokens * 6  # top-4: 6 pairs a token
    # layer paths: what needs no weights; the top-1 part needs them
    assert {
        p: (v["tokens"], v["experts_together"]) for p, v in by_capture["transitions"].items()
    } == {p: (v["tokens"], v["experts_together"]) for p, v in by_log["transitions"].items()}
    assert all(
        "top" not in v and "top" in by_log["transitions"][p]
        for p, v in by_capture["transitions"].items()
    )
    assert len(by_log["transitions"]) == len(layers) - 1
    # and what else vLLM's ids answer: load, consecutive tokens, token specialisation
    for layer in map(str, layers):
        assert by_capture["load"][layer]["counts"] == by_log["load"][layer]["counts"]
        for phase in ("prefill", "decode"):
            assert (
                by_capture["prefill_decode"][layer][phase]["counts"]
                == by_log["prefill_decode"][layer][phase]["counts"]
            )
        got, want = by_capture["locality"][layer], by_log["locality"][layer]
        assert got == {key: want[key] for key in got} and got["pairs"] > 0
    assert by_capture["token_experts"] == by_log["token_experts"]
    assert "ep" not in by_capture and "text_view" not in by_capture


def test_the_capture_holds_the_rows_of_prefix_cached_tokens_too(tmp_path):
    """Read whole, the capture has every logged token and the rows before them."""
    log = routes.LogFile(DATA / "routes.jsonl", routes.read_header(DATA / "routes.jsonl"))
    logged = logged_requests(log)
    options = Options(num_experts=log.header["num_experts"], eplb=False)
    whole = pipeline.write_report([str(DATA / "responses.jsonl")], tmp_path, options)
    bodies = [json.loads(line) for line in (DATA / "responses.jsonl").open()]
    rows = sum(
        len(native.decode_routed_experts(c["routed_experts"])) for b in bodies for c in b["choices"]
    )
    layer = str(log.header["layers"][0])
    assert whole["load"][layer]["tokens"] == rows >= sum(len(t) for t in logged.values())
    assert np.sum(whole["load"][layer]["counts"]) == rows * log.header["top_k"]
