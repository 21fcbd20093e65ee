"""moe_profiler/verification/routing_rules.py against transformers' forward pass, family by family.

The rule, read off each tiny model's config.json and applied to its router logits,
must give the experts and weights transformers' forward pass multiplies the expert
outputs by (tests/hf_reference.py), for every token. No vLLM here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_reference import dense_routes, router_logits

from moe_profiler.verification import routing_rules
from moe_profiler.verification.tiny_families import FAMILIES


@pytest.mark.parametrize("name", list(FAMILIES))
def test_rule_from_config_equals_the_models_forward_pass(name, family_models, questions):
    family, model = FAMILIES[name], family_models[name]
    rule = routing_rules.rule_for(json.loads((model / "config.json").read_text()))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = {str(i): tokenizer(q)["input_ids"] for i, q in enumerate(questions[:3])}
    dense = dense_routes(model, prompts, family.num_experts)
    logits, biases = router_logits(model, prompts)
    for request, d in dense.items():
        for layer, bias in enumerate(biases):
            ids, weights = rule.route(logits[request][:, layer], bias)
            want = np.zeros_like(d[:, layer], dtype=np.float64)
            np.put_along_axis(want, ids, weights, axis=-1)
            assert (want > 0).sum(axis=-1).tolist() == [family.top_k] * len(want)
            assert np.array_equal(want > 0, d[:, layer] > 0), f"{name}: other experts chosen"
            assert np.allclose(want, d[:, layer], rtol=1e-5, atol=1e-6), f"{name}: weights"


@pytest.mark.parametrize(
    ("config", "rule"),
    [
        (
            {
                "architectures": ["DeepseekV3ForCausalLM"],
                "num_experts_per_tok": 8,
                "n_group": 8,
                "topk_group": 4,
                "norm_topk_prob": True,
                "routed_scaling_factor": 2.5,
            },
            routing_rules.Rule(
                "sigmoid", 8, True, num_groups=8, topk_groups=4, correction_bias=True, scale=2.5
            ),
        ),
        (
            {
                "architectures": ["DeepseekV2ForCausalLM"],
                "num_experts_per_tok": 6,
                "n_group": 1,
                "topk_group": 1,
                "topk_method": "greedy",
                "norm_topk_prob": False,
            },
            routing_rules.Rule("softmax", 6, False),
        ),
        (
            {"text_config": {"architectures": ["Llama4ForCausalLM"], "num_experts_per_tok": 1}},
            routing_rules.Rule("sigmoid", 1, False, choose_on_logits=True),
        ),
        (
            {"architectures": ["Qwen2MoeForCausalLM"], "num_experts_per_tok": 4},
            routing_rules.Rule("softmax", 4, False),
        ),
    ],
)
def test_rule_read_off_real_configs(config, rule):
    assert routing_rules.rule_for(config) == rule


def test_group_limit_and_bias_by_hand():
    """4 experts in 2 groups, top-2 of 1 group: the bias picks the group, the score the weight."""
    rule = routing_rules.Rule(
        "sigmoid", 2, True, num_groups=2, topk_groups=1, correction_bias=True, scale=2.0
    )
    logits = np.log(np.array([[0.9, 0.8, 0.5, 0.4]]) / (1 - np.array([[0.9, 0.8, 0.5, 0.4]])))
    ids, weights = rule.route(logits, bias=np.array([0.0, 0.0, 0.5, 0.5]))
    assert sorted(ids[0].tolist()) == [2, 3]  # group 2: 1.0 + 0.9 beats 0.9 + 0.8
    assert np.allclose(sorted(weights[0]), [2 * 0.4 / 0.9, 2 * 0.5 / 0.9])
    with pytest.raises(ValueError, match="e_score_correction_bias"):
        rule.route(logits)
    with pytest.raises(ValueError, match="no routing rule for architecture 'LlamaForCausalLM'"):
        routing_rules.rule_for({"architectures": ["LlamaForCausalLM"], "num_experts_per_tok": 1})
