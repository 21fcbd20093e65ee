"""Small builders for test inputs: logs written with the real writer-side encoder, dumps
merged as the server merges them, response bodies shaped as vLLM returns them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moe_route_log import log_format


def write_log(
    path: Path,
    steps: list[np.ndarray],
    layers=(0, 1),
    num_experts=8,
    top_k=2,
    trailer=True,
    requests: list[tuple[str, int]] | None = None,
    prompt_len: int = 4,
    first_tok: int = 1000,
    **meta,
) -> Path:
    """A schema-2 log; ``steps[i]`` holds the expert ids ``[tokens, layers, top_k]`` of step i+1.

    Each step is one request: ``requests[i] = (req_id, first position)``, by default
    ``("req<i>-abcd1234", 0)``; weights are 1/top_k;
    a request line (prompt length ``prompt_len``) precedes each step. Token ids are
    ``first_tok`` + position.
    """
    requests = requests or [(f"req{i}-abcd1234", 0) for i in range(len(steps))]
    header = {
        "layers": list(layers),
        "num_experts": num_experts,
        "top_k": top_k,
        "run_id": "run-1",
        "model_id": "test/model",
        **meta,
    }
    chunks = [log_format.header_line(header)]
    for i, ids in enumerate(steps):
        n = ids.shape[0]
        weights = np.full(ids.shape, 1.0 / top_k, dtype=np.float32)
        req_id, first = requests[i]
        chunks.append(log_format.request_lines(i + 1, [req_id], [prompt_len]))
        chunks.append(
            log_format.encode_routes(
                i + 1,
                list(layers),
                [req_id],
                np.array([n]),
                np.arange(first, first + n),
                np.arange(first, first + n) + first_tok,
                ids,
                weights,
            )
        )
    if trailer:
        chunks.append(log_format.trailer_line({"steps": len(steps)}))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"".join(chunks))
    return Path(path)


def distinct_ids(rng, tokens, layers, top_k, num_experts):
    """Random routes: ``top_k`` distinct expert ids per (token, layer)."""
    rows = [rng.permutation(num_experts)[:top_k] for _ in range(tokens * layers)]
    return np.array(rows, dtype=np.int32).reshape(tokens, layers, top_k)


def route_block(lines, requests=(), source=0):
    """A RouteBlock from hand-written lines.

    Each line is ``(step, token, layer, request, pos, tok, phase, experts, weights)``;
    ``request`` indexes ``requests``; ``weights`` None means descending weights, so the
    first listed expert is the top-1.
    """
    from moe_profiler.reading.columns import RouteBlock

    step, token, layer, request, pos, tok, phase, experts, weights = zip(*lines, strict=True)
    k = len(experts[0])
    weights = [w if w is not None else [0.5 - 0.1 * j for j in range(k)] for w in weights]
    return RouteBlock(
        source=source,
        step=np.array(step, dtype=np.int64),
        token=np.array(token, dtype=np.int32),
        layer=np.array(layer, dtype=np.int32),
        request=np.array(request, dtype=np.int32),
        pos=np.array(pos, dtype=np.int64),
        tok=np.array(tok, dtype=np.int64),
        phase=np.array(phase, dtype=np.int8),
        experts=np.array(experts, dtype=np.int32),
        weights=np.array(weights, dtype=np.float32),
        requests=list(requests),
    )


def write_counts_log(
    path: Path,
    windows: list[np.ndarray],
    layers=(0, 1),
    top_k=2,
    t0: float = 1_795_924_700.0,
    seconds: float = 10.0,
    trailer=True,
    **meta,
) -> Path:
    """A counts-mode log: ``windows[i]`` holds window i's counts ``[layers, experts]``,
    ``seconds`` long each from ``t0``; weight sums 0.25 a choice; half the tokens prompt."""
    header = {
        "layers": list(layers),
        "num_experts": windows[0].shape[1],
        "top_k": top_k,
        "run_id": "counts-1",
        "model_id": "test/model",
        "mode": "counts",
        **meta,
    }
    chunks = [log_format.header_line(header)]
    for i, counts in enumerate(windows):
        tokens = int(counts[0].sum()) // top_k
        line = log_format.counts_line(
            t_start=t0 + i * seconds,
            t_end=t0 + (i + 1) * seconds - 0.1,
            steps=4,
            tokens=tokens,
            prefill_tokens=tokens // 2,
            layers=list(layers),
            counts=np.asarray(counts),
            weight_sums=np.asarray(counts) * 0.25,
        )
        chunks.append(log_format.json_line(line))
    if trailer:
        chunks.append(log_format.trailer_line({"steps": 4 * len(windows)}))
    Path(path).write_bytes(b"".join(chunks))
    return Path(path)


def write_dump(
    path: Path,
    counts: np.ndarray,
    layers: list[int],
    since: float,
    until: float,
    files=(),
    top_k=2,
    hostname="gpu-1",
) -> Path:
    """A dump as ``/dump_expert_distribution_record`` writes it: one engine process's
    answer (``counts`` [num_layers, experts], rows of ``layers`` logged) merged by
    ``control.merge``, plus ``until`` and ``dump_path``."""
    from moe_route_log import control

    num_layers, num_experts = counts.shape
    tokens = int(counts[layers[0]].sum()) // top_k
    answer = {
        "recording": True,
        "mode": "counts",
        "layers": layers,
        "files": list(files),
        "bytes": 0,
        "route_lines": 0,
        "steps": 7,
        "ranks": {"dp": 0, "pp": 0, "tp": 0},
        "num_layers": num_layers,
        "num_experts": num_experts,
        "top_k": top_k,
        "model_name": "test/model",
        "hostname": hostname,
        "counts": counts[layers].tolist(),
        "weight_sums": (counts[layers] * 0.5).tolist(),
        "tokens": tokens,
        "prefill_tokens": tokens // 2,
        "record_steps": 7,
        "since": since,
    }
    dump = control.merge([answer])
    dump.update(until=until, dump_path=str(path))
    Path(path).write_text(json.dumps(dump))
    return Path(path)


def vllm_response(
    prompt: list[int],
    outputs: list[int],
    ids: np.ndarray | None,
    chat: bool = False,
    token_ids: bool = True,
    response_id: str = "cmpl-1",
    model: str = "test/model",
) -> dict:
    """A completion (or chat) response body as vLLM 0.34's server returns it with
    --enable-return-routed-experts: ``ids`` ``[tokens, layers, top_k]`` as base64 of the
    .npy array (uint8, vLLM's dtype up to 256 experts; None: not captured), the token ids
    when the request asked ``return_token_ids``, the fields of its pydantic models."""
    from moe_profiler.reading.native import encode_routed_experts

    routed = None if ids is None else encode_routed_experts(np.asarray(ids, dtype=np.uint8))
    returned = token_ids or None
    choice = {
        "index": 0,
        "logprobs": None,
        "finish_reason": "length",
        "stop_reason": None,
        "token_ids": outputs if returned else None,
        "routed_experts": routed,
        "weight_versions": None,
    }
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": "..."}, **choice}
    else:
        choice = {"index": 0, "text": "...", **choice, "prompt_logprobs": None}
        choice["prompt_token_ids"] = prompt if returned else None
    body = {
        "id": response_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": 1_795_924_700,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {
            "prompt_tokens": len(prompt),
            "total_tokens": len(prompt) + len(outputs),
            "completion_tokens": len(outputs),
            "completion_tokens_details": None,
        },
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
    if chat:
        body.update(prompt_logprobs=None, prompt_token_ids=prompt if returned else None)
    return body


def write_jsonl(path: Path, bodies: list) -> Path:
    """One JSON value per line (a capture file as the openai client's bodies are saved)."""
    Path(path).write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return Path(path)
