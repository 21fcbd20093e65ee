#!/usr/bin/env python3
"""A schema-3 route log made without vLLM, for the report's documentation picture.

Builds (or reuses) a small random-weight Qwen2-MoE with a tokenizer trained on GSM8K
(moe_profiler/running/local_models.py), generates greedily with Hugging Face transformers,
takes each token's router top-k (softmax weights, as Qwen2-MoE applies them) from
``output_router_logits``, and writes them with the logger's own encoder
(log_format.py) the way a vLLM engine would: one prefill pass holding every prompt,
then one decode pass per generated token (the last generated token is not fed back,
so it has no line). Random weights: the routes show what the tools draw, not what a
trained model prefers.

  python3 tools/hf_route_log.py OUT.jsonl --prompts 24 --field question
  python3 tools/hf_route_log.py B.jsonl --prompts 24 --field answer --model-dir DIR
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moe_profiler.running.local_models import build_tiny_moe  # noqa: E402
from moe_route_log import log_format  # noqa: E402

GSM8K = REPO.parent / "shared/data/gsm8k/test.jsonl"


def routes_of(model, ids: list[int], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Router top-k ids and weights [tokens, layers, top_k] of the sequence ``ids``."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), output_router_logits=True)
    probs = torch.stack([torch.softmax(r.float(), dim=-1) for r in out.router_logits], dim=1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    return experts.numpy().astype(np.int32), weights.numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="route log to write")
    parser.add_argument(
        "--prompts", type=int, default=24, help="GSM8K items to use (default: %(default)s)"
    )
    parser.add_argument(
        "--field",
        default="question",
        choices=["question", "answer"],
        help="GSM8K field used as prompt (default: %(default)s)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=48, help="tokens generated per prompt (default: 48)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path("/tmp/moe-report-model"),
        help="model folder, built there if missing (default: %(default)s)",
    )
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = [json.loads(line) for line in GSM8K.read_text().splitlines() if line.strip()]
    if not (args.model_dir / "config.json").exists():
        texts = [item["question"] for item in items[:800]]
        build_tiny_moe(
            args.model_dir, texts, num_layers=4, num_experts=16, top_k=4, vocab_size=2048
        )
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    config = model.config
    top_k, layers = config.num_experts_per_tok, list(range(config.num_hidden_layers))

    requests = []  # (req_id, prompt ids, generated ids, experts, weights)
    for i, item in enumerate(items[: args.prompts]):
        prompt = tokenizer(item[args.field])["input_ids"]
        generated = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=args.max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )[0].tolist()[len(prompt) :]
        fed = prompt + generated[:-1]  # the last generated token is never fed back
        requests.append((f"{i}-{i:08x}", prompt, fed, *routes_of(model, fed, top_k)))

    header = {
        "layers": layers,
        "num_layers": config.num_hidden_layers,
        "moe_layers": layers,
        "num_experts": config.num_experts,
        "top_k": top_k,
        "model_id": f"tiny random-weight Qwen2-MoE ({args.model_dir.name}, HF transformers)",
        "model_name": "tiny random Qwen2-MoE (HF transformers)",
        "run_id": f"hf_route_log-{args.field}",
        "req_id": f"hf_route_log-{args.field}",
    }
    chunks = [log_format.header_line(header)]
    prompt_lens = [len(r[1]) for r in requests]
    chunks.append(log_format.request_lines(1, [r[0] for r in requests], prompt_lens))
    passes = [[(r, np.arange(len(r[1]))) for r in requests]]  # every prompt in one pass
    while batch := [
        (r, np.array([len(r[1]) + len(passes) - 1]))
        for r in requests
        if len(r[1]) + len(passes) - 1 < len(r[2])
    ]:
        passes.append(batch)  # one decode token of every request not finished
    for step, batch in enumerate(passes, start=1):
        chunks.append(
            log_format.encode_routes(
                step,
                layers,
                [r[0] for r, _ in batch],
                np.array([len(rows) for _, rows in batch]),
                np.concatenate([rows for _, rows in batch]),
                np.concatenate([np.array(r[2])[rows] for r, rows in batch]),
                np.concatenate([r[3][rows] for r, rows in batch]),
                np.concatenate([r[4][rows] for r, rows in batch]),
            )
        )
    chunks.append(log_format.trailer_line({"steps": len(passes)}))
    args.out.write_bytes(b"".join(chunks))
    lines = sum(len(r[2]) for r in requests) * len(layers)
    print(
        f"wrote {args.out}: {len(requests)} requests, {len(passes)} passes, {lines:,} route lines"
    )


if __name__ == "__main__":
    main()
