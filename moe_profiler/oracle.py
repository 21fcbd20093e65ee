"""Check a route log against an independent record of the same requests' routes.

The reference is an array ``[tokens, layers, top_k]`` of expert ids per request,
e.g. what vLLM itself returns with ``enable_return_routed_experts=True``
(``CompletionOutput.routed_experts``, all layers, prompt and generated tokens
but the last), or the top-k of Hugging Face transformers' router logits.
Ids are compared as sets (the order inside a top-k is not meaningful).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from moe_profiler import routes


@dataclass
class Agreement:
    """How a log and the reference compare, pair by (token, layer) pair."""

    requests: int = 0
    reference_tokens: int = 0  # tokens the reference has, summed over requests
    logged_tokens: int = 0  # distinct (request, position) pairs in the log
    pairs: int = 0  # (token, layer) pairs in the reference
    identical: int = 0  # ... whose logged ids equal the reference's, as sets
    missing: int = 0  # ... with no route line
    duplicates: int = 0  # route lines for a pair that already had one
    unknown: int = 0  # route lines for a request or position the reference lacks

    @property
    def agreement(self) -> float:
        return self.identical / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement}


def logged_tokens(output) -> int:
    """Tokens of a vLLM ``RequestOutput`` that get route lines (each once per logged layer):
    the prompt minus its prefix-cache hits, and every generated token but the last."""
    cached = output.num_cached_tokens or 0
    return len(output.prompt_token_ids) - cached + len(output.outputs[0].token_ids) - 1


def compare(
    logs: list[routes.LogFile],
    reference: dict[str, np.ndarray],
    layers: list[int],
    skip_positions: dict[str, int] | None = None,
) -> Agreement:
    """Compare ``logs`` with ``reference[request] = ids[tokens, len(layers), top_k]``.

    Requests are matched by the id the user saw (``Route.request``); positions
    below ``skip_positions[request]`` (prefix-cached tokens, never recomputed)
    are left out of the comparison.
    """
    skip = skip_positions or {}
    column = {layer: i for i, layer in enumerate(layers)}
    logged = {r: np.full(ids.shape, -1, dtype=np.int64) for r, ids in reference.items()}
    result = Agreement(requests=len(reference))
    for log in logs:
        for route in routes.iter_routes(log, strict=True):
            table = logged.get(route.request)
            col = column.get(route.layer)
            if table is None or col is None or route.pos is None or route.pos >= len(table):
                result.unknown += 1
                continue
            if table[route.pos, col, 0] >= 0:
                result.duplicates += 1
            table[route.pos, col] = sorted(route.experts)
    for request, ids in reference.items():
        first = skip.get(request, 0)
        ours = logged[request][first:]
        theirs = np.sort(np.asarray(ids, dtype=np.int64)[first:], axis=-1)
        result.reference_tokens += len(theirs)
        result.logged_tokens += int((ours[:, :, 0] >= 0).any(axis=1).sum())
        result.pairs += theirs.shape[0] * theirs.shape[1]
        result.missing += int((ours[:, :, 0] < 0).sum())
        result.identical += int((ours == theirs).all(axis=-1).sum())
    return result
