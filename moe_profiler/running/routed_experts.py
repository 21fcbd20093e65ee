"""Save vLLM's own routed experts from ``LLM.generate``, for ``moe-profiler analyze``.

vLLM (0.3x and later, Model Runner V2: a GPU) puts each request's routed experts on its
outputs when the engine is built with ``enable_return_routed_experts=True``: an array
``[prompt + output - 1 tokens, num_hidden_layers, top_k]`` of expert ids per
``CompletionOutput``. No logger needs to be installed::

    from vllm import LLM, SamplingParams
    from moe_profiler.running.routed_experts import save_request_outputs

    llm = LLM(model, enable_return_routed_experts=True)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=64))
    save_request_outputs(outputs, "capture.jsonl", model=model)

    # then, anywhere (the model's config.json says how many experts it has):
    #   moe-profiler analyze capture.jsonl --num-experts 60 --out report/

Each ``RequestOutput`` becomes one line shaped as vLLM's OpenAI completions endpoint
answers a request that asked ``return_token_ids`` (``choices[i]`` with
``prompt_token_ids``, ``token_ids``, and ``routed_experts`` as base64 of the ``.npy``
array, as the server encodes it), so the report reads a saved file and the responses
of ``vllm serve`` alike (``reading/native.py``). Pure Python and numpy: the outputs are
read by their attributes, vLLM is not imported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from moe_profiler.reading.native import encode_routed_experts


def response_body(output, model: str | None = None) -> dict:
    """One ``RequestOutput`` as a completions response body with its routed experts."""
    prompt = [int(t) for t in output.prompt_token_ids]
    choices = []
    for completion in output.outputs:
        ids = getattr(completion, "routed_experts", None)
        choices.append(
            {
                "index": completion.index,
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "stop_reason": getattr(completion, "stop_reason", None),
                "token_ids": [int(t) for t in completion.token_ids],
                "prompt_token_ids": prompt,
                "routed_experts": None if ids is None else encode_routed_experts(ids),
            }
        )
    completion_tokens = sum(len(c["token_ids"]) for c in choices)
    return {
        "id": str(output.request_id),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model or "",
        "choices": choices,
        "usage": {
            "prompt_tokens": len(prompt),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt) + completion_tokens,
        },
    }


def save_request_outputs(
    outputs: Iterable, path: str | Path, model: str | None = None, append: bool = False
) -> int:
    """Write ``outputs`` (``LLM.generate``'s) to the JSONL ``path``, one line each;
    ``append`` adds to the file. Returns the lines written."""
    written = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for output in outputs:
            f.write(json.dumps(response_body(output, model)) + "\n")
            written += 1
    return written
