"""Run-time control of the route log: start, stop, dump, status, from any engine client.

Every worker process answers ``collective_rpc("moe_route_log_rpc", args=(command,))``
(``hooks.rpc``); workers that log nothing (tensor-parallel peers, processes of
other pipeline stages' layers) answer None. ``merge`` turns the answers into one:
counts over all logged layers, as SGLang's ``logical_count`` ``[num_layers,
num_experts]`` (rows of layers nobody logged stay 0).

Offline ``LLM`` users call the same functions with their ``LLM``:

    from vllm.model_executor.layers.fused_moe.moe_route_log import control
    control.stop(llm); llm.generate(warmup); control.start(llm)
    llm.generate(prompts); record = control.dump(llm)   # record["logical_count"]

Pure Python: no torch, no vLLM.
"""

from __future__ import annotations

RPC_METHOD = "moe_route_log_rpc"
COMMANDS = ("start", "stop", "dump", "status", "totals")


class NotLoggingError(RuntimeError):
    """No worker of the engine logs routes (VLLM_LOG_MOE was not set when it started)."""


def merge(answers: list[dict | None]) -> dict:
    """One answer from every worker's: recording state, files, and summed counts."""
    logging = [a for a in answers if a]
    if not logging:
        raise NotLoggingError(
            "no engine process logs routes: set VLLM_LOG_MOE before the engine starts"
        )
    first = logging[0]
    merged = {
        "recording": any(a["recording"] for a in logging),
        "mode": first["mode"],
        "model_name": first["model_name"],
        "num_layers": first["num_layers"],
        "num_experts": first["num_experts"],
        "top_k": first["top_k"],
        "processes": [_rank_label(a) for a in logging],
        "layers": sorted({layer for a in logging for layer in a["layers"]}),
        "files": [f for a in logging for f in a["files"]],
        "bytes": sum(a["bytes"] for a in logging),
        "route_lines": sum(a["route_lines"] for a in logging),
        "last_step": [a["steps"] for a in logging],  # per process, in `processes` order
    }
    if "counts" in first:
        rows, cols = first["num_layers"], first["num_experts"]
        counts = [[0] * cols for _ in range(rows)]
        weight_sums = [[0.0] * cols for _ in range(rows)]
        for a in logging:
            for i, layer in enumerate(a["layers"]):
                counts[layer] = [x + y for x, y in zip(counts[layer], a["counts"][i], strict=True)]
                weight_sums[layer] = [
                    x + y for x, y in zip(weight_sums[layer], a["weight_sums"][i], strict=True)
                ]
        # every pipeline stage sees the same tokens: count them once, at the first stage
        first_stage = min(a["ranks"]["pp"] for a in logging)
        merged.update(
            logical_count=counts,
            weight_sums=weight_sums,
            tokens=sum(a["tokens"] for a in logging if a["ranks"]["pp"] == first_stage),
        )
        if "prefill_tokens" in first:
            merged["prefill_tokens"] = sum(
                a["prefill_tokens"] for a in logging if a["ranks"]["pp"] == first_stage
            )
            merged["since"] = min(a["since"] for a in logging)
    return merged


def _rank_label(answer: dict) -> str:
    ranks = answer["ranks"]
    return f"{answer['hostname']}:dp{ranks['dp']}-pp{ranks['pp']}"


def call(llm, command: str) -> dict:
    """Run ``command`` on every worker of an offline ``vllm.LLM``; the merged answer."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
    return merge(llm.collective_rpc(RPC_METHOD, args=(command,)))


def start(llm) -> dict:
    """Start recording (the dump's counts restart from zero)."""
    return call(llm, "start")


def stop(llm) -> dict:
    """Stop recording: nothing is written until the next start."""
    return call(llm, "stop")


def dump(llm) -> dict:
    """Counts since the last start: ``logical_count`` [num_layers, num_experts], tokens."""
    return call(llm, "dump")


def status(llm) -> dict:
    """Recording or not, mode, files, bytes and route lines written."""
    return call(llm, "status")
