"""Tiny random-weight models of each MoE family, saved through transformers (no downloads).

Each family keeps its real routing (scoring function, renormalisation, expert
groups, correction bias, scaling factor, dense first layers) at a toy size: hidden
128, 2 attention heads of 64 (sizes the CPU attention kernels take), 3 decoder
layers. ``build`` writes safetensors, config and a locally trained tokenizer, which
vLLM and transformers then both load. ``FAMILIES`` also says which family the
CPU build of vLLM 0.15.1 cannot run, and why (what the others need to run there is
in tests/test_e2e_families.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moe_profiler.running.local_models import build_tokenizer

NUM_LAYERS = 3
COMMON = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": NUM_LAYERS,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}
# DeepSeek's multi-head latent attention at toy size
MLA = {"kv_lora_rank": 32, "q_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 32}
MLA |= {"v_head_dim": 64}


@dataclass(frozen=True)
class Family:
    """One MoE family: its transformers config, what the logged weights are, CPU support."""

    name: str  # as in the README's coverage matrix
    config_class: str  # transformers class name
    config: dict
    num_experts: int
    top_k: int
    moe_layers: tuple[int, ...]
    routing: str  # what the logged weights are, in words (README)
    gate_sharpening: float = 20.0  # sharper router logits: fewer near-ties between experts
    correction_bias: bool = False  # random e_score_correction_bias (else transformers' zeros)
    cpu_unsupported: str | None = None  # why the CPU build cannot run it


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "mixtral",
            "MixtralConfig",
            {"intermediate_size": 64, "num_local_experts": 8, "num_experts_per_tok": 2},
            num_experts=8,
            top_k=2,
            moe_layers=(0, 1, 2),
            routing="softmax over all experts, top-k, renormalised to sum 1",
        ),
        Family(
            "qwen3_moe",
            "Qwen3MoeConfig",
            {
                "head_dim": 64,
                "intermediate_size": 256,
                "moe_intermediate_size": 32,
                "num_experts": 16,
                "num_experts_per_tok": 4,
                "norm_topk_prob": True,
                "decoder_sparse_step": 1,
                "num_hidden_layers": 4,
                "mlp_only_layers": [0, 2],  # MoE and dense layers alternate, as in Llama 4
            },
            num_experts=16,
            top_k=4,
            moe_layers=(1, 3),
            routing="softmax over all experts, top-k, renormalised to sum 1 (norm_topk_prob)",
        ),
        Family(
            "olmoe",
            "OlmoeConfig",
            {"intermediate_size": 32, "num_experts": 16, "num_experts_per_tok": 4},
            num_experts=16,
            top_k=4,
            moe_layers=(0, 1, 2),
            routing="softmax over all experts, top-k, not renormalised",
        ),
        Family(
            "deepseek_v2",
            "DeepseekV2Config",
            {
                **MLA,
                "intermediate_size": 256,
                "moe_intermediate_size": 32,
                "n_routed_experts": 16,
                "n_shared_experts": 2,
                "num_experts_per_tok": 3,
                "first_k_dense_replace": 1,  # as DeepSeek-V2 and V2-Lite: layer 0 is dense
                "topk_method": "group_limited_greedy",
                "n_group": 4,
                "topk_group": 2,
                "norm_topk_prob": False,
                "routed_scaling_factor": 16.0,  # DeepSeek-V2's
            },
            num_experts=16,
            top_k=3,
            moe_layers=(1, 2),
            routing=(
                "softmax, top-k within the best groups (max score per group), not "
                "renormalised, times routed_scaling_factor"
            ),
        ),
        Family(
            "deepseek_v3",
            "DeepseekV3Config",
            {
                **MLA,
                "intermediate_size": 256,
                "moe_intermediate_size": 32,
                "n_routed_experts": 16,
                "n_shared_experts": 1,
                "num_experts_per_tok": 4,
                "first_k_dense_replace": 1,
                "n_group": 4,
                "topk_group": 2,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.5,
                "scoring_func": "sigmoid",  # in DeepSeek-V3's config.json; vLLM reads it
                "topk_method": "noaux_tc",  # vLLM: a correction bias exists
            },
            num_experts=16,
            top_k=4,
            moe_layers=(1, 2),
            routing=(
                "sigmoid scores; experts chosen on score + correction bias, top-k within "
                "the best groups (sum of each group's 2 best); weights are the scores "
                "without bias, renormalised, times routed_scaling_factor"
            ),
            gate_sharpening=4.0,  # sigmoid saturates: keep scores apart
            correction_bias=True,
        ),
        Family(
            "kimi_k2",
            "DeepseekV3Config",
            {
                **MLA,
                "intermediate_size": 256,
                "moe_intermediate_size": 32,
                "n_routed_experts": 24,
                "n_shared_experts": 1,
                "num_experts_per_tok": 4,
                "first_k_dense_replace": 1,
                "n_group": 1,  # Kimi-K2: one group, so no group limit
                "topk_group": 1,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.827,
                "scoring_func": "sigmoid",
                "topk_method": "noaux_tc",
            },
            num_experts=24,
            top_k=4,
            moe_layers=(1, 2),
            routing="as DeepSeek-V3 with a single expert group, routed_scaling_factor 2.827",
            gate_sharpening=4.0,
            correction_bias=True,
        ),
        Family(
            "glm4_moe",
            "Glm4MoeConfig",
            {
                "head_dim": 64,
                "partial_rotary_factor": 0.5,
                "intermediate_size": 256,
                "moe_intermediate_size": 32,
                "n_routed_experts": 16,
                "n_shared_experts": 1,
                "num_experts_per_tok": 4,
                "first_k_dense_replace": 1,
                "n_group": 1,
                "topk_group": 1,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.5,
            },
            num_experts=16,
            top_k=4,
            moe_layers=(1, 2),
            routing="as DeepSeek-V3 (sigmoid, correction bias, renormalised, times 2.5)",
            gate_sharpening=4.0,
            correction_bias=True,
        ),
        Family(
            "gpt_oss",
            "GptOssConfig",
            {
                "head_dim": 64,
                "intermediate_size": 64,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "sliding_window": 32,
                "max_position_embeddings": 131072,  # gpt-oss's (its YaRN rope expects it)
                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            },
            num_experts=8,
            top_k=2,
            moe_layers=(0, 1, 2),
            routing="router logits (with bias), top-k, softmax over the k",
            gate_sharpening=1.0,  # its sinks reach vLLM's CPU kernel in bfloat16: keep logits small
        ),
        Family(
            "llama4",
            "Llama4TextConfig",
            {
                "head_dim": 64,
                "intermediate_size": 64,
                "intermediate_size_mlp": 256,
                "num_local_experts": 8,
                "num_experts_per_tok": 1,
                "interleave_moe_layer_step": 2,  # as Llama 4 Maverick: every other layer
                "attention_chunk_size": 64,
            },
            num_experts=8,
            top_k=1,
            moe_layers=(1,),
            routing="top-1 router logit, sigmoid; multiplies the expert's input",
            cpu_unsupported=(
                "vLLM's CPU MoE kernel asserts `not apply_router_weight_on_input` "
                "(cpu_fused_moe.py), and Llama 4 applies the router weight to the expert input"
            ),
        ),
    ]
}


def build(family: Family, out_dir: Path, texts: Sequence[str], seed: int = 0) -> Path:
    """Write ``family``'s tiny random model (safetensors, config, tokenizer) to ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, 512)
    tokenizer.save_pretrained(out_dir)
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**COMMON, **family.config},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_router_weight(name):
                param.mul_(family.gate_sharpening)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias") and family.correction_bias:
                buffer.copy_(torch.rand_like(buffer) * 0.2)  # > 0: see README
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tokenizer.eos_token_id, "do_sample": False}) + "\n"
    )
    return out_dir


def _is_router_weight(name: str) -> bool:
    """``...mlp.gate.weight``, ``...block_sparse_moe.gate.weight``, ``...router.weight``."""
    parts = name.split(".")
    return parts[-1] == "weight" and parts[-2] in {"gate", "router"}
