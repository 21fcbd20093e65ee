"""Where the analyses get their RouteBlocks from.

>>> TEMPORARY <<<  ``iter_blocks`` below is an adapter over today's line reader
(``routes.iter_routes``) until the columnar reader ``routes.iter_blocks`` is merged.
At merge time, replace this function by ``from moe_profiler.routes import iter_blocks``
(same signature, same blocks); nothing else in ``moe_profiler/analysis`` reads logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from moe_profiler.columns import DECODE, PREFILL, UNKNOWN_PHASE, RouteBlock
from moe_profiler.routes import LogFile, iter_routes

_BLOCK_LINES = 1 << 16


def iter_blocks(
    logs: list[LogFile], strict: bool = False, warn: Callable[[str], None] | None = None
) -> Iterator[RouteBlock]:
    """RouteBlocks of ``logs``, file after file (adapter over ``iter_routes``, see above)."""
    requests: list[str] = []
    request_index: dict[str | None, int] = {None: -1}
    for source, log in enumerate(logs):
        columns: list[tuple] = []
        last_group = None
        for route in iter_routes(log, strict=strict, warn=warn):
            group = (route.step, route.token)
            if len(columns) >= _BLOCK_LINES and group != last_group:
                yield _block(source, columns, requests)
                columns = []
            last_group = group
            if route.req_id not in request_index:
                request_index[route.req_id] = len(requests)
                requests.append(route.req_id)
            columns.append(
                (
                    route.step,
                    route.token,
                    route.layer,
                    request_index[route.req_id],
                    -1 if route.pos is None else route.pos,
                    -1 if route.tok is None else route.tok,
                    UNKNOWN_PHASE
                    if route.prefill is None
                    else PREFILL
                    if route.prefill
                    else DECODE,
                    route.experts,
                    route.weights,
                )
            )
        if columns:
            yield _block(source, columns, requests)


def _block(source: int, columns: list[tuple], requests: list[str]) -> RouteBlock:
    step, token, layer, request, pos, tok, phase, experts, weights = zip(*columns, strict=True)
    return RouteBlock(
        source=source,
        step=np.array(step, dtype=np.int64),
        token=np.array(token, dtype=np.int32),
        layer=np.array(layer, dtype=np.int32),
        request=np.array(request, dtype=np.int32),
        pos=np.array(pos, dtype=np.int64),
        tok=np.array(tok, dtype=np.int64),
        phase=np.array(phase, dtype=np.int8),
        experts=np.array(experts, dtype=np.int32),
        weights=np.array(weights, dtype=np.float32),
        requests=requests,
    )
