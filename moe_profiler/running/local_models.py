"""Model folders made locally, with no downloads.

- ``build_tiny_moe``: a tiny random-weight Qwen2-MoE checkpoint (safetensors) for
  ``test.sh --smoke`` and the end-to-end tests; vLLM loads it with its real loader.
- ``build_dummy_model_dir``: a real model's config.json plus a tokenizer, for
  ``load_format="dummy"`` runs at full size without the weights (GPU benchmarks).

Tokenizers are small byte-level BPEs trained on the given texts (GSM8K questions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def build_tiny_moe(
    out_dir: Path,
    texts: Sequence[str],
    *,
    num_layers: int = 2,
    num_experts: int = 8,
    top_k: int = 4,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random ``Qwen2MoeForCausalLM`` (hidden 128, 2 heads of 64) to ``out_dir``."""
    import torch
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(out_dir)
    config = Qwen2MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        decoder_sparse_step=1,
        norm_topk_prob=False,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2MoeForCausalLM(config)
    with torch.no_grad():  # sharper router logits: fewer near-ties between experts
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(20.0)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tokenizer.eos_token_id, "do_sample": False}) + "\n"
    )
    return out_dir


def build_tokenizer(texts: Sequence[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on ``texts``, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_dummy_model_dir(
    config_json: Path, out_dir: Path, texts: Sequence[str], vocab_size: int = 8192
) -> Path:
    """``out_dir`` with ``config_json`` and a BPE tokenizer: enough for ``load_format="dummy"``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(Path(config_json).read_text())
    tokenizer = build_tokenizer(texts, vocab_size)
    tokenizer.chat_template = None  # the real chat template needs the real vocabulary
    tokenizer.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    """``python -m moe_profiler.running.local_models OUT --texts prompts.txt``: write a tiny MoE."""
    import argparse

    from moe_profiler.running.prompts import read_prompts

    parser = argparse.ArgumentParser(
        description="Write a tiny random-weight Qwen2-MoE model folder (safetensors + tokenizer)."
    )
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument(
        "--texts",
        type=Path,
        required=True,
        help="prompts file (one per line) the tokenizer is trained on",
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="decoder layers (default: %(default)s)"
    )
    parser.add_argument(
        "--experts", type=int, default=8, help="routed experts (default: %(default)s)"
    )
    parser.add_argument(
        "--top-k", type=int, default=4, help="experts per token (default: %(default)s)"
    )
    args = parser.parse_args()
    build_tiny_moe(
        args.out,
        read_prompts(args.texts),
        num_layers=args.layers,
        num_experts=args.experts,
        top_k=args.top_k,
    )
    print(
        f"wrote a tiny MoE ({args.layers} layers, {args.experts} experts, top-{args.top_k}) "
        f"to {args.out}"
    )


if __name__ == "__main__":
    main()
