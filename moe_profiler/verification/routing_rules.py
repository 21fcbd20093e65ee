"""Each MoE family's routing rule in numpy, from its config.json: an independent reference.

``rule_for(config)`` reads the rule off a model's ``config.json`` (its text part);
``Rule.route(logits, bias)`` turns router logits ``[tokens, experts]`` into the
chosen experts and the factor each one's output (Llama 4: input) is multiplied by.
Written from the models' own definitions (transformers' modelling files, DeepSeek's
``inference/model.py``), not from vLLM's code: the GPU bench applies it to the
router logits vLLM computed and compares the result with the route log, and the
CPU tests check it against transformers' forward pass.

``precision`` is the floating-point type the serving kernel holds the scores in
(``PRECISIONS``): the rule rounds scores, biased scores and group scores to it
where such a kernel would, so that choices a kernel cannot tell apart show up as
ties. On CUDA, vLLM's grouped top-k (DeepSeek V2/V3, Kimi K2) scores in the
router logits' own dtype (bfloat16 unless the model casts the gate to float32, as
GLM-4.5 does); its other routers and its CPU kernels score in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOFTMAX_TOP_K = {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"}
SOFTMAX_TOP_K |= {"OlmoeForCausalLM"}
DEEPSEEK_STYLE = {"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "Glm4MoeForCausalLM"}


@dataclass(frozen=True)
class Rule:
    """How one family turns router logits into (experts, weights)."""

    scoring: str  # "softmax" | "sigmoid": over all experts, before choosing
    top_k: int
    renormalize: bool  # chosen weights divided by their sum
    choose_on_logits: bool = (
        False  # top-k on the raw logits, then score only those (gpt-oss, Llama 4)
    )
    num_groups: int = 1  # expert groups; only the best `topk_groups` are eligible
    topk_groups: int = 1
    correction_bias: bool = False  # chosen on score + bias, weighted by the score alone
    scale: float = 1.0  # routed_scaling_factor

    def route(
        self, logits: np.ndarray, bias: np.ndarray | None = None, precision: str = "float64"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[tokens, experts]`` logits -> ids ``[tokens, k]`` and weights ``[tokens, k]``."""
        choice, scores, _ = self._choice(logits, bias, precision)
        ids = _top(choice, self.top_k)
        if self.choose_on_logits:
            chosen = np.take_along_axis(choice, ids, axis=-1)
            weights = _softmax(chosen) if self.scoring == "softmax" else _sigmoid(chosen)
            return ids, weights * self.scale
        weights = np.take_along_axis(scores, ids, axis=-1)
        if self.renormalize:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        return ids, weights * self.scale

    def ties(
        self, logits: np.ndarray, bias: np.ndarray | None = None, precision: str = "float64"
    ) -> np.ndarray:
        """Per token: whether the k-th and (k+1)-th choice (or group) are exactly equal
        (in ``precision``), so that another, equally right, choice exists."""
        choice, _, group_scores = self._choice(logits, bias, precision)
        tied = _tie_at(choice, self.top_k)
        if group_scores is not None:
            tied |= _tie_at(group_scores, self.topk_groups)
        return tied

    def _choice(self, logits: np.ndarray, bias: np.ndarray | None, precision: str = "float64"):
        """(what experts are chosen on, their scores, the group scores or None)."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.choose_on_logits:
            return logits, None, None
        scores = _softmax(logits) if self.scoring == "softmax" else _sigmoid(logits)
        scores = round_to(scores, precision)
        choice = scores
        if self.correction_bias:
            if bias is None:
                raise ValueError("this rule needs the e_score_correction_bias")
            bias = round_to(np.asarray(bias, dtype=np.float64), precision)
            choice = round_to(scores + bias[None, :], precision)
        if self.num_groups <= 1:
            return choice, scores, None
        tokens, experts = choice.shape
        groups = choice.reshape(tokens, self.num_groups, experts // self.num_groups)
        if self.correction_bias:  # DeepSeek-V3: a group's two best experts
            group_scores = round_to(np.sort(groups, axis=-1)[..., -2:].sum(axis=-1), precision)
        else:  # DeepSeek-V2: a group's best expert
            group_scores = groups.max(axis=-1)
        keep = np.zeros(group_scores.shape, dtype=bool)
        np.put_along_axis(keep, _top(group_scores, self.topk_groups), True, axis=-1)
        masked = np.where(keep[..., None], groups, -np.inf).reshape(tokens, experts)
        return masked, scores, group_scores


def rule_for(config: dict) -> Rule:
    """The routing rule of the model whose config.json (or its text_config) is ``config``."""
    config = config.get("text_config", config)
    arch = (config.get("architectures") or [""])[0]
    top_k = config["num_experts_per_tok"]
    if arch in SOFTMAX_TOP_K:
        renormalize = arch == "MixtralForCausalLM" or bool(config.get("norm_topk_prob", False))
        return Rule("softmax", top_k, renormalize)
    if arch == "GptOssForCausalLM":
        return Rule("softmax", top_k, True, choose_on_logits=True)
    if arch in {"Llama4ForCausalLM", "Llama4ForConditionalGeneration"}:
        return Rule("sigmoid", top_k, False, choose_on_logits=True)
    if arch in DEEPSEEK_STYLE:
        sigmoid = arch != "DeepseekV2ForCausalLM" or config.get("scoring_func") == "sigmoid"
        grouped = arch != "DeepseekV2ForCausalLM" or (
            config.get("topk_method") == "group_limited_greedy"
        )
        return Rule(
            "sigmoid" if sigmoid else "softmax",
            top_k,
            renormalize=bool(config.get("norm_topk_prob", False)),
            num_groups=(config.get("n_group") or 1) if grouped else 1,
            topk_groups=(config.get("topk_group") or 1) if grouped else 1,
            correction_bias=sigmoid,
            scale=float(config.get("routed_scaling_factor", 1.0)),
        )
    raise ValueError(f"no routing rule for architecture {arch!r}")


PRECISIONS = ("float64", "float32", "float16", "bfloat16")


def round_to(values: np.ndarray, precision: str) -> np.ndarray:
    """``values`` (float64) rounded to the nearest ``precision`` number, as float64."""
    if precision == "float64":
        return values
    if precision in ("float32", "float16"):
        return values.astype(precision).astype(np.float64)
    if precision != "bfloat16":
        raise ValueError(f"unknown precision {precision!r}; known: {PRECISIONS}")
    # bfloat16: the upper 16 bits of float32, rounded to nearest even
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values per row (ties: the lower index first)."""
    return np.argsort(-values, axis=-1, kind="stable")[..., :k]


def _tie_at(values: np.ndarray, k: int) -> np.ndarray:
    """Rows whose k-th and (k+1)-th largest values are equal (and finite)."""
    if values.shape[-1] <= k:
        return np.zeros(values.shape[0], dtype=bool)
    ordered = -np.sort(-values, axis=-1)
    return (ordered[:, k - 1] == ordered[:, k]) & np.isfinite(ordered[:, k])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
