"""bench/native_capture.py's check, on a route log and responses made here: each response's
capture is matched to its logged request by token ids and compared layer by layer."""

from __future__ import annotations

import base64
import io
import json
import sys

import numpy as np
from conftest import REPO

from moe_route_log import log_format

sys.path.insert(0, str(REPO / "bench"))
import native_capture


def response(prompt: list[int], outputs: list[int], ids: np.ndarray) -> dict:
    """A completion body as vLLM returns it with --enable-return-routed-experts."""
    buffer = io.BytesIO()
    np.save(buffer, ids.astype(np.uint8))
    return {
        "id": "cmpl-x",
        "choices": [
            {
                "prompt_token_ids": prompt,
                "token_ids": outputs,
                "routed_experts": base64.b64encode(buffer.getvalue()).decode(),
            }
        ],
    }


def test_the_check_matches_responses_by_token_ids_and_compares_every_layer(tmp_path):
    rng = np.random.default_rng(0)
    layers, top_k, experts = [0, 1], 2, 6
    sequences = {"0-aa": ([5, 6, 7], [8, 9]), "1-bb": ([11, 12], [13, 14, 15])}
    captures, chunks = {}, [log_format.header_line(
        {"layers": layers, "num_experts": experts, "top_k": top_k, "model_id": "m"}
    )]  # fmt: skip
    for step, (req, (prompt, outputs)) in enumerate(sequences.items(), start=1):
        tokens = len(prompt) + len(outputs) - 1  # the last output never goes through the model
        captures[req] = np.stack(
            [rng.permutation(experts)[:top_k] for _ in range(tokens * 2)]
        ).reshape(tokens, 2, top_k)
        positions = np.arange(1, tokens)  # position 0 was served from the prefix cache
        chunks.append(log_format.request_lines(step, [req], [len(prompt)]))
        chunks.append(
            log_format.encode_routes(
                step, layers, [req], np.array([tokens - 1]), positions,
                np.array(prompt + outputs)[positions], captures[req][positions],
                np.full((tokens - 1, 2, top_k), 0.5),
            )
        )  # fmt: skip
    chunks.append(log_format.trailer_line({"steps": 2}))
    log = tmp_path / "routes.jsonl"
    log.write_bytes(b"".join(chunks))
    lines = sum(len(p) + len(o) - 2 for p, o in sequences.values()) * len(layers)
    responses = [response(*sequences[r], captures[r]) for r in ("1-bb", "0-aa")]
    result = native_capture.check(responses, log)
    assert result["matched"] == 2 and result["route_lines"] == lines
    assert result["identical"] == result["pairs"] == lines
    captures["0-aa"][2, 1] = (captures["0-aa"][2, 1] + 1) % experts  # one choice differs
    responses = [response(*sequences[r], captures[r]) for r in ("1-bb", "0-aa")]
    assert native_capture.check(responses, log)["identical"] == lines - 1
    assert json.loads(json.dumps(result)) == result
