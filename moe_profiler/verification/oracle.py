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

from moe_profiler.reading import routes


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

    Requests are matched by the id the user saw (vLLM's id without its "-<8 hex>"); positions
    below ``skip_positions[request]`` (prefix-cached tokens, never recomputed)
    are left out of the comparison. When a (token, layer) pair has several lines
    (a recomputed token), the last one is compared.
    """
    skip = skip_positions or {}
    names = list(reference)
    lengths = np.array([len(reference[r]) for r in names], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(lengths)])
    num_layers = len(layers)
    top_k = np.shape(reference[names[0]])[-1] if names else 1
    theirs = np.empty((int(start[-1]), num_layers, top_k), dtype=np.int32)
    for i, name in enumerate(names):  # sorted ids, filled request by request: no big copy
        theirs[start[i] : start[i + 1]] = np.sort(reference[name], axis=-1)
    theirs = theirs.reshape(-1, top_k)  # one row per (token, layer) cell
    column = np.full(max(layers, default=0) + 1, -1, dtype=np.int64)
    column[layers] = np.arange(num_layers)
    seen = np.zeros(len(theirs), dtype=bool)  # the cell has a line
    same = np.zeros(len(theirs), dtype=bool)  # ... and its last line has the reference's ids
    which = {name: i for i, name in enumerate(names)}
    reference_of = np.zeros(0, dtype=np.int64)  # request code -> index in names (-1: none)
    result = Agreement(requests=len(reference))
    for block in routes.iter_blocks(logs, strict=True):
        new = block.requests[len(reference_of) :]
        found = [which.get(r.rsplit("-", 1)[0], -1) for r in new]
        reference_of = np.concatenate([reference_of, np.array(found, dtype=np.int64)])
        ref = np.where(block.request >= 0, reference_of[block.request], -1)
        in_range = block.layer < len(column)
        col = np.where(in_range, column[np.where(in_range, block.layer, 0)], -1)
        ok = (ref >= 0) & (col >= 0) & (block.pos >= 0)
        ok &= block.pos < np.where(ref >= 0, lengths[ref], 0)
        result.unknown += int((~ok).sum())
        cell = (start[ref[ok]] + block.pos[ok]) * num_layers + col[ok]
        cells = np.unique(cell)
        result.duplicates += len(cell) - len(cells) + int(seen[cells].sum())
        last = len(cell) - 1 - np.unique(cell[::-1], return_index=True)[1]
        ours = np.sort(block.experts[ok][last], axis=1)
        same[cells] = (ours == theirs[cells]).all(axis=1)
        seen[cells] = True
    counted = np.ones(int(start[-1]), dtype=bool)  # tokens compared: not prefix-cached
    for i, name in enumerate(names):
        counted[start[i] : start[i] + min(skip.get(name, 0), lengths[i])] = False
    seen, same = seen.reshape(-1, num_layers)[counted], same.reshape(-1, num_layers)[counted]
    result.reference_tokens = int(counted.sum())
    result.logged_tokens = int(seen.any(axis=1).sum())
    result.pairs = seen.size
    result.missing = int((~seen).sum())
    result.identical = int(same.sum())
    return result
