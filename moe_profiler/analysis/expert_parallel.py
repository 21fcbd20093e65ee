"""Expert-parallel what-if: how evenly would N GPUs be loaded, forward pass by forward pass?

For EP sizes 2, 4, 8, ... up to the expert count, each logged layer's experts go to GPUs:

- ``contiguous``: vLLM's default placement (``determine_expert_map``, "linear"): GPU g
  holds a contiguous range of expert ids, the first ``E % N`` GPUs one expert more.
- ``eplb``: vLLM 0.15.1's own EPLB policy (``DefaultEplbPolicy.rebalance_experts``, one
  node, one expert group) fitted on this run's whole-run loads, with the fewest redundant
  experts that fill every GPU's slots (0 when N divides E); ``eplb_redundant``: the same
  with ``redundant_per_gpu`` more slots per GPU. Fitted and scored on the same run: what
  EPLB could do at best for this traffic, not a forecast for other traffic.

A GPU's load in a pass is the number of (token, top-k choice) pairs that land on its
experts. vLLM sends a choice of a replicated expert to replica ``flat index % replicas``
(``eplb_map_to_physical_and_record``); here each replica gets an equal share of the
expert's load (that rule's average; exact per pass only when the choices spread evenly
over flat indices). Balancedness = mean over GPUs / max over GPUs (SGLang's
definition, 1 = even), per (pass, layer), averaged over passes weighted by the pass's
tokens at that layer; ``balancedness_of_totals`` is the same on whole-run totals. A pass
is one (log file, step): ranks of a data-parallel run are separate passes. Counts logs
and dumps record no passes but time windows: ``balancedness_per_window`` is the same
per window (a window sums many passes, so it is more even than a pass).

Per-pass (per-window) counts go to a temporary file while reading (memory stays
constant; the file holds 4 x layers x experts bytes per pass) and are scored in chunks at
the end.
"""

from __future__ import annotations

import html
import json
import tempfile
from collections.abc import Callable

import numpy as np

from moe_profiler.analysis.common import LayerRows
from moe_profiler.analysis.description import Analysis, Finished, Need, Run
from moe_profiler.analysis.html_parts import figure as figure_html
from moe_profiler.analysis.html_parts import note, number, table
from moe_profiler.reading.columns import CountsWindow, RouteBlock

_CHUNK_PASSES = 512


def ep_sizes(num_experts: int) -> list[int]:
    """2, 4, 8, ... up to ``num_experts``."""
    sizes, size = [], 2
    while size <= num_experts:
        sizes.append(size)
        size *= 2
    return sizes


def contiguous_placement(num_experts: int, ep_size: int) -> np.ndarray:
    """float64 [experts, GPUs]: 1 where vLLM's default linear placement puts the expert."""
    base, remainder = divmod(num_experts, ep_size)
    sizes = [base + (1 if g < remainder else 0) for g in range(ep_size)]
    gpu_of_expert = np.repeat(np.arange(ep_size), sizes)
    return np.eye(ep_size)[gpu_of_expert]


def fewest_redundant(num_experts: int, ep_size: int) -> int:
    """Redundant experts needed so that every GPU has the same number of slots."""
    return -num_experts % ep_size


def load_eplb_policy() -> tuple[Callable | None, str]:
    """vLLM's ``DefaultEplbPolicy.rebalance_experts``, or None and why it is not there."""
    try:
        from vllm.distributed.eplb.policy.default import DefaultEplbPolicy
    except ImportError as e:
        return None, (
            f"vLLM is not installed here ({e}); install vLLM 0.15.1 to see what its load "
            "balancer would change"
        )
    return DefaultEplbPolicy.rebalance_experts, "vLLM DefaultEplbPolicy.rebalance_experts"


def eplb_placement(
    rebalance: Callable, loads: np.ndarray, ep_size: int, redundant: int
) -> np.ndarray:
    """float64 [layers, experts, GPUs]: each expert's share of its load on each GPU.

    ``loads`` [layers, experts] are the measured loads EPLB is fitted on; an expert with
    r replicas puts 1/r of its load on the GPU of each replica. vLLM 0.15.1's policy
    returns (phy2log, log2phy, logcnt), 0.32's phy2log alone: the replica counts are
    taken from phy2log either way.
    """
    import torch

    num_layers, num_experts = loads.shape
    slots = num_experts + redundant
    placed = rebalance(torch.as_tensor(np.asarray(loads, dtype=np.int64)), slots, 1, 1, ep_size)
    phy2log = np.asarray(placed[0] if isinstance(placed, tuple) else placed)
    logcnt = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log])
    gpu_of_slot = np.arange(slots) // (slots // ep_size)
    share = np.zeros((num_layers, num_experts, ep_size))
    layer = np.repeat(np.arange(num_layers), slots)
    np.add.at(share, (layer, phy2log.ravel(), np.tile(gpu_of_slot, num_layers)), 1.0)
    return share / logcnt[:, :, None]


def balancedness(gpu_loads: np.ndarray) -> np.ndarray:
    """mean / max over the last axis (GPUs); NaN where every GPU has 0."""
    top = gpu_loads.max(axis=-1)
    mean = gpu_loads.mean(axis=-1)
    return np.divide(mean, top, out=np.full(top.shape, np.nan), where=top > 0)


class UnitLoads:
    """Expert loads of a run's units (forward passes, or time windows), one after another.

    Each unit's ``[layers, experts]`` loads and tokens per layer go to a temporary file
    (memory stays constant; 4 x layers x (experts + 1) bytes a unit) and come back in
    chunks; ``totals`` are their sum.
    """

    def __init__(self, num_layers: int, num_experts: int) -> None:
        self.totals = np.zeros((num_layers, num_experts), dtype=np.int64)
        self.units = 0
        # open as long as the accumulator lives; the OS deletes it when closed
        self._spill = tempfile.TemporaryFile(prefix="moe-ep-units-")  # noqa: SIM115
        self._open_key: tuple | None = None
        self._open = np.zeros((num_layers, num_experts + 1), dtype=np.int64)

    def add(self, key: tuple, loads: np.ndarray) -> None:
        """Add ``loads`` ``[layers, experts + 1]`` (the last column: tokens) to unit ``key``."""
        if key != self._open_key:
            self.flush()
            self._open_key = key
        self._open += loads

    def flush(self) -> None:
        if self._open_key is None:
            return
        self._spill.write(self._open.astype(np.int32).tobytes())
        self.totals += self._open[:, :-1]
        self.units += 1
        self._open[:] = 0
        self._open_key = None

    def chunks(self):
        """The units in chunks: (loads [U, layers, experts], tokens [U, layers]), float64."""
        self.flush()
        self._spill.seek(0)
        per_unit = self._open.size * 4
        while chunk := self._spill.read(per_unit * _CHUNK_PASSES):
            loads = np.frombuffer(chunk, dtype=np.int32).reshape(-1, *self._open.shape)
            yield loads[:, :, :-1].astype(np.float64), loads[:, :, -1].astype(np.float64)
        self._spill.seek(0, 2)


class ExpertParallelWhatIf:
    """Loads of every pass (route blocks) and window (counts windows) of every logged layer;
    ``result`` scores the placements per pass, per window and on the totals."""

    def __init__(
        self, layers: list[int], num_experts: int, redundant_per_gpu: int = 1, top_k: int = 1
    ) -> None:
        self.rows = LayerRows(layers)
        self.num_experts, self.top_k = num_experts, top_k
        self.redundant_per_gpu = redundant_per_gpu
        self.passes = UnitLoads(len(self.rows), num_experts)
        self.windows = UnitLoads(len(self.rows), num_experts)

    def add(self, block: RouteBlock) -> None:
        """Add ``block``'s lines to the loads of their passes."""
        step = block.step
        starts = np.flatnonzero(np.r_[True, step[1:] != step[:-1]])
        segment = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(step)]))
        num_layers, width = len(self.rows), self.num_experts + 1
        cell = segment * num_layers + self.rows.rows(block.layer)
        counts = np.bincount(
            (cell[:, None] * width + block.experts).ravel(),
            minlength=len(starts) * num_layers * width,
        ).reshape(len(starts), num_layers, width)
        counts[:, :, -1] = np.bincount(cell, minlength=len(starts) * num_layers).reshape(
            len(starts), num_layers
        )
        for i, s in enumerate(step[starts]):
            self.passes.add((block.source, int(s)), counts[i])

    def add_window(self, window: CountsWindow) -> None:
        """Add one window of a counts log or dump as one unit."""
        loads = np.zeros((len(self.rows), self.num_experts + 1), dtype=np.int64)
        rows = self.rows.rows(window.layers)
        loads[rows, :-1] = window.counts
        loads[rows, -1] = window.counts.sum(axis=1) // self.top_k
        self.windows.add((window.source, self.windows.units), loads)
        self.windows.flush()

    def whole_run_totals(self) -> np.ndarray:
        """int64 [layers, experts]: times each expert was chosen over the whole read."""
        self.passes.flush()
        self.windows.flush()
        return self.passes.totals + self.windows.totals

    def placements(self, rebalance: Callable | None) -> dict[int, dict[str, tuple]]:
        """Per EP size: name -> (redundant experts, share [layers, experts, GPUs])."""
        totals = self.whole_run_totals()
        num_layers = len(self.rows)
        out: dict[int, dict[str, tuple]] = {}
        for size in ep_sizes(self.num_experts):
            linear = contiguous_placement(self.num_experts, size)
            out[size] = {"contiguous": (0, np.broadcast_to(linear, (num_layers, *linear.shape)))}
            if rebalance is not None:
                fewest = fewest_redundant(self.num_experts, size)
                extra = fewest + self.redundant_per_gpu * size
                for name, redundant in (("eplb", fewest), ("eplb_redundant", extra)):
                    out[size][name] = (
                        redundant,
                        eplb_placement(rebalance, totals, size, redundant),
                    )
        return out

    def result(self, rebalance: Callable | None) -> dict:
        """``{"<N>": {"contiguous": {...}, "eplb": {"redundant": R, ...}, ...}}``."""
        placements = self.placements(rebalance)
        totals = self.whole_run_totals()
        flat = [(size, name, p) for size, named in placements.items() for name, p in named.items()]
        shares = [share for _, _, (_, share) in flat]
        per_pass, pass_weight = _per_unit(self.passes, shares)
        per_window, window_weight = _per_unit(self.windows, shares)
        logged = totals.sum(axis=1) > 0
        result: dict = {}
        for i, (size, name, (redundant, share)) in enumerate(flat):
            of_totals = balancedness(np.einsum("le,leg->lg", totals, share))
            result.setdefault(str(size), {})[name] = {
                "redundant": redundant,
                "slots_per_gpu": (self.num_experts + redundant) // size
                if name != "contiguous"
                else -(-self.num_experts // size),
                "balancedness": _weighted(per_pass[i], pass_weight),
                "balancedness_per_window": _weighted(per_window[i], window_weight),
                "balancedness_of_totals": _rounded(
                    np.average(of_totals[logged], weights=totals.sum(axis=1)[logged])
                    if logged.any()
                    else None
                ),
                "per_layer": {
                    str(layer): {
                        "balancedness": _weighted(per_pass[i][row], pass_weight[row]),
                        "balancedness_per_window": _weighted(
                            per_window[i][row], window_weight[row]
                        ),
                        "balancedness_of_totals": _rounded(of_totals[row]),
                    }
                    for row, layer in enumerate(self.rows.layers)
                },
            }
        return result


def _per_unit(units: UnitLoads, shares: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per placement, each layer's balancedness summed over units weighted by their tokens;
    and the tokens per layer (the weights' sum)."""
    weighted = [np.zeros(units.totals.shape[0]) for _ in shares]
    weights = np.zeros(units.totals.shape[0])
    for loads, tokens in units.chunks():
        weights += tokens.sum(axis=0)
        for i, share in enumerate(shares):
            score = balancedness(np.einsum("ple,leg->plg", loads, share))
            weighted[i] += np.where(tokens > 0, score * tokens, 0.0).sum(axis=0)
    return weighted, weights


def _weighted(weighted: np.ndarray, weights: np.ndarray) -> float | None:
    """The token-weighted mean balancedness (over the layers with tokens); None: no units."""
    weighted, weights = np.atleast_1d(weighted), np.atleast_1d(weights)
    logged = weights > 0
    return _rounded(weighted[logged].sum() / weights[logged].sum()) if logged.any() else None


def _rounded(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def sglang_logical_count(totals: np.ndarray, layers: list[int], num_layers: int) -> dict:
    """SGLang's ``--init-expert-location`` input: ``{"logical_count": [layers][experts]}``.

    One row per decoder layer of the model (``num_layers``, SGLang's
    ``num_hidden_layers``); rows of layers that were not logged (or are dense) are 0,
    as SGLang's own recorder leaves layers that saw no tokens.
    """
    if max(layers) >= num_layers:
        raise ValueError(f"layer {max(layers)} is not below the model's {num_layers} layers")
    count = np.zeros((num_layers, totals.shape[1]), dtype=np.int64)
    count[layers] = totals
    return {"logical_count": count.tolist()}


UNITS = (  # result key, words, marker and line style
    ("balancedness", "per pass", "o-"),
    ("balancedness_per_window", "per window", "^:"),
    ("balancedness_of_totals", "whole-run totals", "s--"),
)


def figure(result: dict, title: str):
    """Balancedness against EP size for each placement, per pass, per window, on totals."""
    import matplotlib.pyplot as plt

    sizes = sorted(int(s) for s in result)
    fig, axis = plt.subplots(figsize=(8, 4))
    labels = {
        "contiguous": ("contiguous (vLLM default)", "#3b6ea8"),
        "eplb": ("EPLB, fewest redundant experts", "#e07b39"),
        "eplb_redundant": ("EPLB, more redundant experts", "#2a9d5c"),
    }
    for name, (label, color) in labels.items():
        have = [s for s in sizes if name in result[str(s)]]
        for key, words, style in UNITS:
            values = [result[str(s)][name][key] for s in have]
            if have and None not in values:
                axis.plot(have, values, style, color=color, label=f"{label}: {words}")
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [str(s) for s in sizes])
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("GPUs (expert-parallel size)")
    axis.set_ylabel("balancedness (mean / max GPU load)")
    axis.set_title(title)
    axis.legend(fontsize=7, loc="lower left")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def section(done: Finished, figure_uri: str | None) -> str:
    """The figure, balancedness per EP size and placement, what EPLB was and assumed."""
    info, ep = done.results["ep_info"], done.results["ep"]
    names = ["contiguous", "eplb", "eplb_redundant"]
    names = [name for name in names if any(name in v for v in ep.values())]
    first = next(iter(ep.values()), {}).get("contiguous", {})
    units = [(key, words) for key, words, _ in UNITS if first.get(key) is not None]
    head = ["GPUs"] + [f"{name} {words}" for name in names for _, words in units]
    rows = []
    for size, placements in ep.items():
        row = [size]
        for name in names:
            p = placements[name]
            redundant = f" (+{p['redundant']})" if name != "contiguous" else ""
            row += [number(p[key]) for key, _ in units]
            row[len(row) - len(units)] += redundant
        rows.append(row)
    eplb = (
        f"EPLB placements come from {html.escape(info['eplb'])}, fitted on this run's whole-run "
        "loads and scored on the same run: the best EPLB could do for this traffic. "
        "(+R) is the number of redundant experts (extra copies of hot experts)."
        if info["eplb_available"]
        else f"<strong>EPLB skipped:</strong> {html.escape(info['eplb'])}."
    )
    return (
        figure_html(
            figure_uri,
            "ep",
            "Balancedness (mean GPU load / busiest GPU's load, 1 = perfectly even) against the "
            "number of GPUs: per forward pass (solid), per time window of a counts log or dump "
            "(dotted) and on the whole run's totals (dashed), where the inputs record them.",
        )
        + table(head, rows)
        + note(
            f"{info['passes']:,} passes, {info['windows']:,} windows. A GPU's load is the "
            "number of (token, expert choice) pairs landing on its experts; per-pass and "
            "per-window values are averaged weighted by their tokens and over layers. A window "
            "sums many passes, so it is more even than one pass. <em>contiguous</em> is vLLM's "
            f"default placement (expert ids split in equal ranges). {eplb} A replicated "
            "expert's load is split evenly between its copies (vLLM alternates copies by "
            "position in the batch). <code>sglang_logical_count.json</code> holds the "
            "per-layer loads in the format SGLang's <code>--init-expert-location</code> reads."
        )
    )


def _results(what_if: ExpertParallelWhatIf, run: Run) -> dict:
    rebalance, eplb_source = (
        load_eplb_policy() if run.options.eplb else (None, "turned off with --no-eplb")
    )
    return {
        "ep": what_if.result(rebalance),
        "ep_info": {
            "passes": what_if.passes.units,
            "windows": what_if.windows.units,
            "eplb": eplb_source,
            "eplb_available": rebalance is not None,
            "redundant_per_gpu": run.options.redundant_per_gpu,
            "replica_split": "even share per replica (vLLM: flat index % replicas)",
        },
    }


def _sglang_file(done: Finished) -> dict[str, str]:
    run = done.run
    num_layers = run.num_layers or max(run.layers) + 1
    totals = done.accumulator.whole_run_totals()
    logical = sglang_logical_count(totals, run.layers, num_layers)
    return {"sglang_logical_count.json": json.dumps(logical) + "\n"}


ANALYSIS = Analysis(
    key="ep",
    title="Expert-parallel what-if",
    question="Serving this model with expert parallelism on N GPUs (each GPU holds some "
    "experts), how unevenly are the GPUs loaded, step by step, and what would vLLM's "
    "expert-parallel load balancer (EPLB) change?",
    keys=("ep", "ep_info"),
    needs=frozenset({Need.EXPERT_COUNTS}),
    needs_one_of=frozenset({Need.PASSES, Need.TIMES}),
    start=lambda run: ExpertParallelWhatIf(
        run.layers, run.num_experts, run.options.redundant_per_gpu, run.top_k
    ),
    results=_results,
    figure=lambda done: figure(done.results["ep"], done.run.title) if done.results["ep"] else None,
    section=section,
    files=_sglang_file,
)
