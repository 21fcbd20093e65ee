#!/usr/bin/env python3
"""STAND-IN test data for tests/data/native/: vLLM's routed_experts made from a route log.

tests/test_native_matches_routes.py checks that vLLM's own capture of a run
(``responses.jsonl``: OpenAI response bodies with ``routed_experts``) gives the
co-activation and layer paths of the route log of the same run (``routes.jsonl``). The
real pair is recorded on a GPU (vLLM 0.34, ``bench/native_capture.py``); until it replaces
them, the files there are this stand-in, made on the CPU build (whose vLLM 0.15.1 has no
working capture): a tiny random MoE of Qwen1.5-MoE's shape cut to 4 layers (60 experts,
top-4) serves 10 prompts that share a long preamble, one after another, with prefix
caching on and every layer logged; then ``standin_responses`` encodes each request's
logged routes as vLLM encodes ``routed_experts`` (base64 ``.npy``, uint8) into completion
bodies, the last two as chat bodies. A request whose preamble came from the prefix cache
has no route lines there: its rows start at its first logged position, as vLLM returns
them when a request sets ``routed_experts_prompt_start`` to it (the real capture has those
rows; the test keeps the logged positions of either).

  python tests/native_standin.py [--out tests/data/native]   (the patched CPU vLLM)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from helpers import vllm_response, write_jsonl  # noqa: E402

from moe_profiler.reading import routes  # noqa: E402

LAYERS, EXPERTS, TOP_K = 4, 60, 4  # Qwen1.5-MoE-A2.7B's experts and top-k, 4 of its 24 layers


def standin_responses(route_log: Path, outputs: list[dict], chats: int = 2) -> list[dict]:
    """A STAND-IN for vLLM's responses: ``outputs`` (request id, prompt and output token ids,
    in order) as response bodies whose routed_experts are the routes ``route_log`` holds."""
    log = routes.LogFile(route_log, routes.read_header(route_log))
    num_layers, top_k = log.header["num_layers"], log.header["top_k"]
    by_request: dict[str, dict[int, np.ndarray]] = {}
    for r in routes.iter_routes(log, strict=True):
        rows = by_request.setdefault(r.request, {})
        rows.setdefault(r.pos, np.zeros((num_layers, top_k), dtype=np.int64))[r.layer] = r.experts
    bodies = []
    for i, out in enumerate(outputs):
        rows = by_request[out["request_id"]]
        end = len(out["prompt_token_ids"]) + len(out["token_ids"]) - 1
        positions = sorted(rows)
        assert positions == list(range(positions[0], end)), out["request_id"]
        bodies.append(
            vllm_response(
                out["prompt_token_ids"],
                out["token_ids"],
                np.stack([rows[p] for p in positions]),
                chat=i >= len(outputs) - chats,
                response_id=f"{'chatcmpl' if i >= len(outputs) - chats else 'cmpl'}-{i}",
                model="stand-in/qwen1.5-moe-4-layers",
            )
        )
    return bodies


def serve_one_by_one(model: Path, prompts: list[str], log: Path) -> list[dict]:
    """Greedy outputs of ``prompts``, one request after another, every layer logged."""
    os.environ.update(
        VLLM_LOG_MOE=str(log),
        VLLM_LOG_MOE_LAYER="all",
        VLLM_LOG_MOE_MODEL_ID="stand-in/qwen1.5-moe-4-layers",
        VLLM_LOG_MOE_REQ_ID="native_standin",
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model),
        dtype="float32",
        seed=0,
        max_model_len=1024,
        enable_prefix_caching=True,
    )
    outputs = []
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=8 + i % 9, temperature=0, ignore_eos=True)
        (out,) = llm.generate([prompt], params, use_tqdm=False)
        outputs.append(
            {
                "request_id": out.request_id,
                "prompt_token_ids": list(out.prompt_token_ids),
                "token_ids": list(out.outputs[0].token_ids),
                "num_cached_tokens": out.num_cached_tokens or 0,
            }
        )
    llm.llm_engine.engine_core.shutdown()
    routes.wait_until_complete(log, timeout=120)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests/data/native")
    args = parser.parse_args()
    from moe_profiler.running.local_models import build_tiny_moe
    from moe_profiler.running.prompts import load_questions

    questions = load_questions(420, REPO.parent / "shared/data/gsm8k/test.jsonl")
    work = Path(tempfile.mkdtemp(prefix="native-standin-"))
    model = build_tiny_moe(
        work / "model", questions[:400], num_layers=LAYERS, num_experts=EXPERTS, top_k=TOP_K
    )
    preamble = " ".join(questions[400:403])  # shared: served from the prefix cache
    prompts = [f"{preamble} {q}" for q in questions[404:414]]
    outputs = serve_one_by_one(model, prompts, work / "routes.jsonl")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "routes.jsonl", args.out / "routes.jsonl")
    write_jsonl(args.out / "responses.jsonl", standin_responses(work / "routes.jsonl", outputs))
    cached = [o["num_cached_tokens"] for o in outputs]
    print(f"wrote {args.out}: {len(outputs)} requests, prefix-cached tokens {cached}")


if __name__ == "__main__":
    main()
