"""Check a route log against each family's routing rule, applied to the logits the router saw.

The GPU family bench (bench/family_bench.py) keeps, for every forward pass, the
router logits of each logged layer and the pass's requests and positions
(``TapStep``). ``rule_agreement`` applies the family's rule
(moe_profiler/verification/routing_rules.py, written from the model's definition, not from
vLLM's routing code) to those logits and compares ids (as sets) and weights with
the log's route lines. Near-ties are counted apart: where the rule's k-th and
(k+1)-th choice are exactly equal (bfloat16 logits make that happen), either
choice is right, and kernels break ties differently. Equal in the precision the
serving kernel holds the scores in (``precision``, see routing_rules): vLLM's
grouped top-k on CUDA scores bfloat16 router logits in bfloat16, where scores a
few parts in a thousand apart are equal. In float64 such ties went uncounted:
with the bench's dummy weights (router logits ~1e-5) every DeepSeek-family score
rounded to one bfloat16 value, the kernel chose by expert index, and the float64
rule agreed with none of the (right) logged routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from moe_profiler.reading import routes
from moe_profiler.verification.routing_rules import Rule


@dataclass
class TapStep:
    """One forward pass as the tap saw it: rows are tokens, request by request."""

    req_ids: list[str]  # vLLM's internal request ids, in batch order
    tokens_per_req: np.ndarray  # rows of each request in this pass
    positions: np.ndarray  # position of each row in its request
    logits: dict[int, np.ndarray]  # layer -> [rows, experts] router logits


@dataclass
class RuleAgreement:
    """How the logged routes compare with the rule on the tapped logits."""

    pairs: int = 0  # (token, layer) pairs the tap saw
    identical: int = 0  # ... whose logged ids equal the rule's, as sets
    tied: int = 0  # ... where the rule's choice had an exact tie at the boundary
    identical_untied: int = 0
    missing: int = 0  # tapped pairs with no route line
    unknown: int = 0  # route lines the tap did not see
    weights_compared: int = 0  # pairs with identical ids whose weights were compared
    weights_close: int = 0  # ... within tolerance
    max_weight_diff: float = 0.0

    @property
    def agreement(self) -> float:
        return self.identical / self.pairs if self.pairs else 0.0

    @property
    def agreement_untied(self) -> float:
        untied = self.pairs - self.tied
        return self.identical_untied / untied if untied else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "agreement": self.agreement,
            "agreement_untied": self.agreement_untied,
        }


def tapped_logits(steps: Iterable[TapStep]) -> dict[tuple[str, int, int], np.ndarray]:
    """(request id, position, layer) -> logits; a recomputed token keeps its last pass."""
    out: dict[tuple[str, int, int], np.ndarray] = {}
    for step in steps:
        owners = np.repeat(np.arange(len(step.req_ids)), step.tokens_per_req)
        for layer, logits in step.logits.items():
            for row, (owner, pos) in enumerate(zip(owners, step.positions, strict=True)):
                out[(step.req_ids[owner], int(pos), layer)] = logits[row]
    return out


def rule_agreement(
    logged: Iterable[routes.Route],
    tapped: dict[tuple[str, int, int], np.ndarray],
    rule: Rule,
    biases: dict[int, np.ndarray | None],
    atol: float = 1e-4,
    rtol: float = 1e-3,
    precision: str = "float64",
) -> RuleAgreement:
    """Compare route lines with ``rule`` applied to the tapped logits of the same tokens,
    its scores rounded to ``precision`` (the serving kernel's score dtype)."""
    result = RuleAgreement()
    keys = list(tapped)
    expected: dict[tuple[str, int, int], tuple[list[int], list[float], bool]] = {}
    for layer in sorted({key[2] for key in keys}):
        layer_keys = [key for key in keys if key[2] == layer]
        logits = np.stack([tapped[key] for key in layer_keys])
        ids, weights = rule.route(logits, biases.get(layer), precision)
        ties = rule.ties(logits, biases.get(layer), precision)
        for key, i, w, t in zip(layer_keys, ids.tolist(), weights.tolist(), ties, strict=True):
            expected[key] = (i, w, bool(t))
    lines: dict[tuple[str, int, int], routes.Route] = {}
    for route in logged:
        key = (route.req_id, route.pos, route.layer)
        if key in expected:
            lines[key] = route
        else:
            result.unknown += 1
    result.pairs = len(expected)
    result.missing = len(expected) - len(lines)
    for key, (ids, weights, tied) in expected.items():
        result.tied += tied
        route = lines.get(key)
        if route is None or set(route.experts) != set(ids):
            continue
        result.identical += 1
        result.identical_untied += not tied
        want = dict(zip(ids, weights, strict=True))
        diffs = [abs(w - want[e]) for e, w in zip(route.experts, route.weights, strict=True)]
        result.weights_compared += 1
        result.weights_close += all(
            d <= atol + rtol * abs(want[e]) for d, e in zip(diffs, route.experts, strict=True)
        )
        result.max_weight_diff = max(result.max_weight_diff, *diffs)
    return result


def route_counts(got: Iterable[routes.Route], header: dict, dump: dict) -> dict:
    """Per logged layer and expert, how many route lines chose it, and whether the device
    counts of the same passes (the dump: the end-of-pass kernel's) are exactly those."""
    layers, experts = header["layers"], header["num_experts"]
    counts = np.zeros((len(layers), experts), dtype=np.int64)
    tokens = 0
    for r in got:
        np.add.at(counts[layers.index(r.layer)], r.experts, 1)
        tokens += r.layer == layers[0]
    dumped = np.asarray(dump["logical_count"], dtype=np.int64)[layers]
    return {
        "counts": counts.tolist(),
        "tokens": tokens,
        "dump_equals_routes": bool(np.array_equal(dumped, counts)) and dump["tokens"] == tokens,
    }


def window_counts(path, header: dict, dump: dict) -> dict:
    """A counts-mode log's windows summed per logged layer and expert, and whether the dump
    (the same device accumulators, read at the end) holds the same."""
    import json

    with open(path, "rb") as f:
        windows = [json.loads(line) for line in f if line.startswith(b'{"type":"counts"')]
    counts = np.sum([w["counts"] for w in windows], axis=0, dtype=np.int64)
    tokens = sum(w["tokens"] for w in windows)
    dumped = np.asarray(dump["logical_count"], dtype=np.int64)[header["layers"]]
    return {
        "counts": counts.tolist(),
        "tokens": tokens,
        "counts_path": header.get("counts_path"),
        "dump_equals_windows": bool(np.array_equal(dumped, counts)) and dump["tokens"] == tokens,
    }


def counts_agree(routes_result: dict, counts_result: dict) -> dict:
    """Counts mode against the routes of the same prompts (two engines): equal per (layer,
    expert) and in tokens, or how many choices differ."""
    a = np.asarray(routes_result["counts"], dtype=np.int64)
    b = np.asarray(counts_result["counts"], dtype=np.int64)
    return {
        "equal": bool(np.array_equal(a, b)) and routes_result["tokens"] == counts_result["tokens"],
        "tokens": [routes_result["tokens"], counts_result["tokens"]],
        "choices_differing": int(np.abs(a - b).sum()) // 2 if a.shape == b.shape else None,
    }
