"""Every VLLM_LOG_MOE* environment variable: declared, typed and documented here.

The variables are read once per process, when the engine builds its model
(``read_config``), and checked there: a bad value stops the engine before it
serves anything, with a message naming the variable, the value and what is
accepted. Nothing else in the logger reads the environment.

Pure Python: no torch, no vLLM.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# name -> (default, documentation). The README's table is generated from this.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "VLLM_LOG_MOE": (
        None,
        "Path of the JSONL route log. Setting it turns logging on; unset or empty, "
        "vLLM runs exactly as before. Its directory must exist and be writable. "
        "Runs with several data- or pipeline-parallel ranks write one file per rank "
        "next to it (see the README).",
    ),
    "VLLM_LOG_MOE_LAYER": (
        None,
        "Which decoder layers to log: one index (`0`), a comma list (`0,5,23`) or "
        "`all` (every MoE layer). Every index must be an MoE layer of the model. "
        "Unset: the model's first MoE layer (0 for Qwen1.5-MoE, 3 for DeepSeek-V3, "
        "whose first layers are dense); the header's `layer_choice` says which rule chose.",
    ),
    "VLLM_LOG_MOE_SEED": (
        None,
        "Integer recorded in the header as the run's seed (default: the engine's own `seed`).",
    ),
    "VLLM_LOG_MOE_MODEL_ID": (
        None,
        "Model name recorded in the header (default: the engine's model path or hub id).",
    ),
    "VLLM_LOG_MOE_REQ_ID": (
        None,
        "Free-form run label recorded in the header (`req_id`). When set it is also "
        "the header's `run_id`, which must match when files are merged: give every "
        "node of a multi-node run the same value.",
    ),
    "VLLM_LOG_MOE_BUFFER_MB": (
        "256",
        "Memory (MiB) the writer process may hold for lines not yet on disk. When "
        "it is full, the engine waits (no route is ever dropped); the wait is "
        "reported in the trailer line.",
    ),
    "VLLM_LOG_MOE_MODE": (
        "routes",
        "`routes`: one line per token and logged layer. `counts`: per logged layer and "
        "expert, how many tokens chose it and the sum of their weights, accumulated on the "
        "device and written as one `counts` line per window (no per-token data leaves "
        "the GPU).",
    ),
    "VLLM_LOG_MOE_INTERVAL_S": (
        "10",
        "Seconds per window: how often counts are cut from the device (a `counts` line "
        "in counts mode; the totals behind the dump endpoint and `/metrics` in both modes).",
    ),
    "VLLM_LOG_MOE_START": (
        "on",
        "`on`: record from the first request. `off`: the engine starts with the recorder "
        "stopped (nothing written) until `/start_expert_distribution_record` or the "
        "Python control starts it.",
    ),
    "VLLM_LOG_MOE_MAX_MB": (
        None,
        "Rotate the log when a file reaches this many MiB: files `<stem>.p00000<suffix>`, "
        "`.p00001`, ..., each with its own header and trailer, each readable alone.",
    ),
    "VLLM_LOG_MOE_KEEP": (
        None,
        "With `VLLM_LOG_MOE_MAX_MB`: keep at most this many files of each process, "
        "deleting the oldest (default: keep all).",
    ),
    "VLLM_LOG_MOE_DUMP_KEEP": (
        "16",
        "Dump files (`<stem>.dump-<UTC time>.json`, written by "
        "`/dump_expert_distribution_record`) kept on disk: after each dump the oldest beyond "
        "this many are deleted. `0`: dumps are only answered, never written. A limit of its "
        "own, on by default, because anyone who may call the endpoint makes these files; "
        "`VLLM_LOG_MOE_KEEP` counts rotated log parts and keeps all unless set.",
    ),
    "VLLM_LOG_MOE_SAMPLE": (
        "1",
        "Fraction of requests whose routes are written (routes mode), e.g. `0.01`; a "
        "request is in or out by a hash of its id, with every token of it. Counts, the "
        "dump and `/metrics` always cover every token.",
    ),
    "VLLM_LOG_MOE_ENCODERS": (
        "auto",
        "Processes that turn routes into JSON lines for each logging process (routes "
        "mode). `auto`: one per 8 CPU cores, 1 to 4. Raise it when the trailer reports "
        "`engine_waits` (the engine waited for the writer).",
    ),
    "VLLM_LOG_MOE_COUNTS_IN_GRAPH": (
        "0",
        "`1`: in counts mode, each logged layer adds its routes to the device counts inside "
        "the forward pass (inside the CUDA graphs), masked to the pass's real tokens read on "
        "the device, so the engine thread launches nothing after a pass; the header's "
        "`counts_path` says which path counted (`in_graph` or `end_of_pass`). Only with one "
        "data-parallel rank (with more, and in routes mode, the end-of-pass kernel counts, "
        "with a warning). Passes that run outside the CUDA graphs (more tokens than the largest "
        "captured size) are counted by the end-of-pass kernel instead. Opt-in: it takes most "
        "of the engine thread's work after a pass away, but its cost under `vllm serve` at "
        "saturation is not measured yet (README, Overhead).",
    ),
}

MODES = ("routes", "counts")


def readme_table() -> str:
    """The README's table of the variables (``tests/test_docs.py`` checks it is there)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, (default, doc) in ENV_VARS.items():
        rows.append(f"| `{name}` | {'unset' if default is None else f'`{default}`'} | {doc} |")
    return "\n".join(rows) + "\n"


class LogConfigError(ValueError):
    """A VLLM_LOG_MOE* variable has a value that cannot be used."""


@dataclass(frozen=True)
class LogConfig:
    """The parsed VLLM_LOG_MOE* settings of this process."""

    path: str
    layer_spec: str  # VLLM_LOG_MOE_LAYER as given; "" when unset
    layers: tuple[int, ...] | None  # None means all MoE layers (or, unset, the first)
    seed: int | None
    model_id: str | None
    run_label: str | None
    buffer_bytes: int
    mode: str = "routes"
    interval_s: float = 10.0
    start_on: bool = True
    max_bytes: int | None = None  # rotate at this size
    keep: int | None = None  # files kept when rotating
    dump_keep: int = 16  # dump files kept (0: none written)
    sample: float = 1.0  # fraction of requests in routes mode
    encoders: int = 1  # encoder processes of the writer
    counts_in_graph: bool = False  # counts mode: count inside the forward (graph_counts.py)

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        """The logged layer indices for a model of ``num_layers`` decoder layers."""
        if self.layers is None:
            return tuple(range(num_layers))
        bad = [layer for layer in self.layers if layer >= num_layers]
        if bad:
            raise LogConfigError(
                f"VLLM_LOG_MOE_LAYER={self.layer_spec!r}: layer "
                f"{bad[0]} is out of range: the model has {num_layers} layers "
                f"(0..{num_layers - 1})"
            )
        return self.layers

    def choose_layers(
        self, num_layers: int, moe_layers: Sequence[int]
    ) -> tuple[tuple[int, ...], str]:
        """The layers to log, given every MoE layer of the model, and why (header ``layer_choice``).

        Unset: the first MoE layer. ``all``: every MoE layer. A list: its layers,
        each of which must be an MoE layer.
        """
        if not moe_layers:
            raise LogConfigError("VLLM_LOG_MOE is set, but this model has no FusedMoE layer")
        if not self.layer_spec:
            return (min(moe_layers),), FIRST_MOE_LAYER_CHOICE
        if self.layers is None:
            return tuple(sorted(moe_layers)), f"VLLM_LOG_MOE_LAYER={self.layer_spec!r}"
        dense = [i for i in self.resolve_layers(num_layers) if i not in moe_layers]
        if dense:
            raise LogConfigError(
                f"VLLM_LOG_MOE_LAYER={self.layer_spec!r}: layer {dense[0]} is not an MoE "
                f"layer of this model; its MoE layers are {layer_ranges(sorted(moe_layers))}"
            )
        return self.layers, f"VLLM_LOG_MOE_LAYER={self.layer_spec!r}"


FIRST_MOE_LAYER_CHOICE = "default (VLLM_LOG_MOE_LAYER unset): the model's first MoE layer"


def layer_ranges(values: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7'"""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs) or "none"


def read_config(environ: Mapping[str, str] | None = None) -> LogConfig | None:
    """Parse and check the VLLM_LOG_MOE* variables; None when logging is off."""
    env = os.environ if environ is None else environ
    path = env.get("VLLM_LOG_MOE", "")
    if not path:
        return None
    layer_spec = env.get("VLLM_LOG_MOE_LAYER") or ""
    return LogConfig(
        path=_check_log_path(path),
        layer_spec=layer_spec,
        layers=parse_layers(layer_spec) if layer_spec else None,
        seed=_parse_int(env, "VLLM_LOG_MOE_SEED", minimum=None),
        model_id=env.get("VLLM_LOG_MOE_MODEL_ID") or None,
        run_label=env.get("VLLM_LOG_MOE_REQ_ID") or None,
        buffer_bytes=_parse_int(env, "VLLM_LOG_MOE_BUFFER_MB", minimum=1) * 2**20,
        mode=_parse_choice(env, "VLLM_LOG_MOE_MODE", MODES),
        interval_s=_parse_float(env, "VLLM_LOG_MOE_INTERVAL_S", low=0.0, high=None),
        start_on=_parse_choice(env, "VLLM_LOG_MOE_START", ("on", "off")) == "on",
        max_bytes=_mib(_parse_int(env, "VLLM_LOG_MOE_MAX_MB", minimum=1)),
        keep=_parse_keep(env),
        dump_keep=_parse_int(env, "VLLM_LOG_MOE_DUMP_KEEP", minimum=0),
        sample=_parse_float(env, "VLLM_LOG_MOE_SAMPLE", low=0.0, high=1.0),
        encoders=_parse_encoders(env),
        counts_in_graph=_parse_choice(env, "VLLM_LOG_MOE_COUNTS_IN_GRAPH", ("0", "1")) == "1",
    )


def parse_layers(value: str) -> tuple[int, ...] | None:
    """``"all"`` -> None; ``"3"`` / ``"0,5,23"`` -> sorted distinct indices."""
    accepted = "accepted: a layer index (0), a comma list (0,5,23) or 'all'"
    text = value.strip()
    if text.lower() == "all":
        return None
    parts = [p.strip() for p in text.split(",")]
    if not text or any(not p.isdigit() for p in parts):
        raise LogConfigError(f"VLLM_LOG_MOE_LAYER={value!r} is not valid; {accepted}")
    return tuple(sorted({int(p) for p in parts}))


def _parse_int(env: Mapping[str, str], name: str, minimum: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        default = ENV_VARS[name][0]
        return None if default is None else int(default)
    try:
        value = int(raw.strip())
    except ValueError:
        raise LogConfigError(f"{name}={raw!r} is not valid; accepted: an integer") from None
    if minimum is not None and value < minimum:
        raise LogConfigError(f"{name}={raw!r} is not valid; accepted: an integer >= {minimum}")
    return value


def _raw(env: Mapping[str, str], name: str) -> str:
    """The variable's value, or its declared default when unset or empty."""
    raw = env.get(name)
    return ENV_VARS[name][0] if raw is None or raw.strip() == "" else raw


def _parse_choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = _raw(env, name)
    value = raw.strip().lower()
    if value not in choices:
        accepted = " or ".join(repr(c) for c in choices)
        raise LogConfigError(f"{name}={raw!r} is not valid; accepted: {accepted}")
    return value


def _parse_float(env: Mapping[str, str], name: str, low: float, high: float | None) -> float:
    """A number in (low, high]: the bounds every float variable here needs."""
    raw = _raw(env, name)
    accepted = f"a number > {low:g}" + ("" if high is None else f" and <= {high:g}")
    try:
        value = float(raw.strip())
    except ValueError:
        raise LogConfigError(f"{name}={raw!r} is not valid; accepted: {accepted}") from None
    if not (math.isfinite(value) and value > low) or (high is not None and value > high):
        raise LogConfigError(f"{name}={raw!r} is not valid; accepted: {accepted}")
    return value


def _parse_keep(env: Mapping[str, str]) -> int | None:
    keep = _parse_int(env, "VLLM_LOG_MOE_KEEP", minimum=1)
    if keep is not None and not env.get("VLLM_LOG_MOE_MAX_MB", "").strip():
        raise LogConfigError(
            f"VLLM_LOG_MOE_KEEP={env['VLLM_LOG_MOE_KEEP']!r} needs VLLM_LOG_MOE_MAX_MB "
            "(files are only kept or deleted when the log rotates)"
        )
    return keep


def _parse_encoders(env: Mapping[str, str]) -> int:
    raw = _raw(env, "VLLM_LOG_MOE_ENCODERS")
    if raw.strip().lower() == "auto":
        return max(1, min(4, (os.cpu_count() or 1) // 8))  # one per 8 cores, 1 to 4
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise LogConfigError(
            f"VLLM_LOG_MOE_ENCODERS={raw!r} is not valid; accepted: 'auto' or an integer "
            "from 1 to 64"
        )
    return value


def _mib(value: int | None) -> int | None:
    return None if value is None else value * 2**20


def _check_log_path(path: str) -> str:
    """Fail now, not mid-run, if the log file cannot be written."""
    path = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise LogConfigError(f"VLLM_LOG_MOE={path!r}: directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise LogConfigError(f"VLLM_LOG_MOE={path!r} is a directory; give a file path")
    try:  # a real write test: permission bits say little to root or on read-only mounts
        if os.path.exists(path):
            if stat.S_ISREG(os.stat(path).st_mode):
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        else:
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".vllm_log_moe_probe"):
                pass
    except OSError as e:
        raise LogConfigError(f"VLLM_LOG_MOE={path!r} is not writable: {e.strerror}") from None
    return path
