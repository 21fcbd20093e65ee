"""Reference routes from transformers' own forward pass, for any MoE family.

For each MoE block and token this records the factor each expert's output is
multiplied by in the model's forward pass (0 for experts not chosen): a dense
``[tokens, moe layers, experts]`` array per request.

- Blocks with one module per expert (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3,
  GLM-4.5): a forward hook runs the block once more on the same input with every
  expert answering a one-hot vector (expert e: 1 in column e) and the shared
  experts answering zeros, so the block's output column e is expert e's factor,
  as the block's own code computes and applies it (softmax, renormalisation,
  groups, bias, scaling). The model's real forward pass is left untouched.
- Blocks whose experts are one fused module called with the chosen experts and their
  factors (transformers 5: ``experts(hidden_states, top_k_index, top_k_weights)``,
  which multiplies each expert's output by its factor): a pre-hook keeps those.
- Other fused experts (transformers 4's gpt-oss, Llama 4): their router module returns
  the dense factors (``router_scores``); a forward hook keeps them.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch


def moe_blocks(model) -> list[torch.nn.Module]:
    """The MoE blocks of a transformers causal LM, in layer order."""
    blocks = []
    for layer in model.model.layers:
        for name in ("block_sparse_moe", "mlp", "feed_forward"):
            block = getattr(layer, name, None)
            if block is not None and hasattr(block, "experts"):
                blocks.append(block)
    return blocks


def dense_routes(
    model_dir: Path, prompts: dict[str, list[int]], num_experts: int
) -> dict[str, np.ndarray]:
    """request -> ``[prompt tokens, moe layers, experts]``: each expert's factor (0: not chosen)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    blocks = moe_blocks(model)
    captured: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = [_record(block, captured[i], num_experts) for i, block in enumerate(blocks)]
    out = {}
    try:
        with torch.no_grad():
            for request, token_ids in prompts.items():
                for per_layer in captured:
                    per_layer.clear()
                model(torch.tensor([token_ids]))
                out[request] = torch.stack([c[0] for c in captured], dim=1).numpy()
    finally:
        for handle in handles:
            handle.remove()
    return out


def router_logits(
    model_dir: Path, prompts: dict[str, list[int]]
) -> tuple[dict[str, np.ndarray], list[np.ndarray | None]]:
    """request -> ``[prompt tokens, moe layers, experts]`` router logits (float32), and each
    MoE layer's ``e_score_correction_bias`` (None where the model has none)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    routers = [
        block.router if hasattr(block, "router") else block.gate for block in moe_blocks(model)
    ]
    captured: list[torch.Tensor] = []

    def keep_logits(router, args) -> None:
        x = args[0].reshape(-1, router.weight.shape[1]).float()
        bias = getattr(router, "bias", None)  # gpt-oss's router has one
        captured.append(torch.nn.functional.linear(x, router.weight.float(), bias))

    handles = [router.register_forward_pre_hook(keep_logits) for router in routers]
    out = {}
    try:
        with torch.no_grad():
            for request, token_ids in prompts.items():
                captured.clear()
                model(torch.tensor([token_ids]))
                out[request] = torch.stack(captured, dim=1).numpy()
    finally:
        for handle in handles:
            handle.remove()
    biases = [
        None
        if getattr(r, "e_score_correction_bias", None) is None
        else r.e_score_correction_bias.detach().numpy()
        for r in routers
    ]
    return out, biases


def _record(block: torch.nn.Module, sink: list, num_experts: int):
    if isinstance(block.experts, torch.nn.ModuleList):
        return block.register_forward_hook(_ProbeExperts(sink, num_experts), with_kwargs=True)
    parameters = inspect.signature(block.experts.forward).parameters
    if "top_k_index" in parameters and "top_k_weights" in parameters:

        def keep_chosen_factors(module, args, kwargs) -> None:
            given = inspect.signature(module.forward).bind(*args, **kwargs).arguments
            index, weights = given["top_k_index"], given["top_k_weights"]
            dense = torch.zeros(index.shape[0], num_experts, dtype=torch.float32)
            sink.append(dense.scatter_(1, index.long(), weights.float()))

        return block.experts.register_forward_pre_hook(keep_chosen_factors, with_kwargs=True)

    def keep_router_scores(module, args, output) -> None:
        sink.append(output[0].reshape(-1, num_experts).float().clone())

    return block.router.register_forward_hook(keep_router_scores)


class _ProbeExperts:
    """Forward hook: run the block again with one-hot experts and silent shared experts."""

    def __init__(self, sink: list, num_experts: int) -> None:
        self.sink = sink
        self.num_experts = num_experts
        self.active = False

    def __call__(self, block, args, kwargs, output) -> None:
        if self.active:
            return  # the probing call itself
        self.active = True
        handles = [
            expert.register_forward_hook(_answer_one_hot(e))
            for e, expert in enumerate(block.experts)
        ]
        for name in ("shared_expert", "shared_experts"):
            if getattr(block, name, None) is not None:
                handles.append(getattr(block, name).register_forward_hook(_answer_zeros))
        try:
            probed = block(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            self.active = False
        probed = probed[0] if isinstance(probed, tuple) else probed
        self.sink.append(probed.reshape(-1, probed.shape[-1])[:, : self.num_experts].clone())


def _answer_one_hot(expert: int):
    def hook(module, args, output):
        answer = torch.zeros_like(output)
        answer[..., expert] = 1.0
        return answer

    return hook


def _answer_zeros(module, args, output):
    return torch.zeros_like(output)


def top_k(dense: np.ndarray, k: int) -> np.ndarray:
    """The ids of the ``k`` non-zero factors of each row (``[..., experts]`` -> ``[..., k]``)."""
    ids = np.argsort(-dense, axis=-1, kind="stable")[..., :k]
    chosen = np.take_along_axis(dense, ids, axis=-1)
    if not (chosen > 0).all() or (np.count_nonzero(dense, axis=-1) != k).any():
        raise AssertionError("a reference row does not have exactly k non-zero factors")
    return ids
