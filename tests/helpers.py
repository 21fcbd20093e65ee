"""Small builders for test logs, written with the real writer-side encoder."""

from __future__ import annotations

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
