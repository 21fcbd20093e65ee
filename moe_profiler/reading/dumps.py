"""Dumps of ``/dump_expert_distribution_record`` (``vllm serve``), read back as counts windows.

A dump is one JSON object (``moe_route_log/server.py``, ``control.merge``): the counts
since recording last started, ``logical_count`` ``[num_layers, num_experts]`` (SGLang's
shape: rows of layers nobody logged are 0) and ``weight_sums`` of the same shape, the
``tokens`` and ``prefill_tokens`` counted, ``since`` (that start) and ``until`` (the dump),
with the server's ``layers``, ``num_experts``, ``top_k``, ``processes`` and log ``files``.
Each dump is one window ``[since, until]`` of its logged layers.

A dump holds every earlier dump of the same processes since the same start, so such a
series is read as the windows between successive dumps (the later minus the earlier);
dumps of the same processes whose times overlap otherwise are refused, as is a file that
is not a whole dump (cut short while copied, say).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from moe_profiler.reading.columns import CountsWindow
from moe_profiler.reading.routes import RouteLogError

REQUIRED = ("logical_count", "num_experts", "top_k", "num_layers", "layers", "tokens", "since")


def is_dump(first: object) -> bool:
    """Whether a parsed first line is a dump (an object with SGLang's ``logical_count``)."""
    return isinstance(first, dict) and "logical_count" in first


def looks_like_broken_dump(first_line: bytes) -> bool:
    """Whether an unparsable first line is a dump cut short (its first or its main key)."""
    return first_line.startswith(b'{"recording"') or b'"logical_count"' in first_line


@dataclass(frozen=True)
class Dump:
    """One dump file: its record's shape and counts."""

    path: Path
    record: dict

    @property
    def layers(self) -> list[int]:
        return sorted(self.record["layers"])

    @property
    def since(self) -> float:
        return float(self.record["since"])

    @property
    def until(self) -> float:
        """When it was dumped (offline ``control.dump`` has no ``until``: its ``since``)."""
        return float(self.record.get("until", self.record["since"]))

    @property
    def processes(self) -> frozenset[str]:
        return frozenset(self.record.get("processes") or [])

    def window(self, source: int) -> CountsWindow:
        """Its counts as one window of its logged layers."""
        layers = self.layers
        record = self.record
        sums = record.get("weight_sums")
        return CountsWindow(
            source,
            self.since,
            self.until,
            -1,  # passes: a dump does not say how many
            int(record["tokens"]),
            int(record.get("prefill_tokens", 0)),
            np.array(layers, dtype=np.int32),
            np.asarray(record["logical_count"], dtype=np.int64)[layers],
            np.zeros((len(layers), record["num_experts"]))
            if sums is None
            else np.asarray(sums, dtype=np.float64)[layers],
        )


def read_dump(path: Path) -> Dump:
    """The dump in ``path``, checked (RouteLogError naming the file if it is not one)."""
    text = Path(path).read_bytes()
    try:
        record = json.loads(text)
    except ValueError as e:
        raise RouteLogError(
            f"{path}: not a whole dump of /dump_expert_distribution_record: its JSON is "
            f"broken or cut short ({e})"
        ) from None
    if not is_dump(record):
        raise RouteLogError(f"{path}: not a dump of /dump_expert_distribution_record")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise RouteLogError(f"{path}: the dump has no {', '.join(map(repr, missing))}")
    shape = (record["num_layers"], record["num_experts"])
    for key in ("logical_count", "weight_sums"):
        value = record.get(key)
        if value is not None and np.asarray(value, dtype=object).shape != shape:
            raise RouteLogError(f"{path}: {key} is not {shape[0]} layers x {shape[1]} experts")
    counts = np.asarray(record["logical_count"])
    if counts.dtype.kind not in "iu" or (counts < 0).any():
        raise RouteLogError(f"{path}: logical_count holds values that are not counts")
    if not all(isinstance(x, int) and 0 <= x < shape[0] for x in record["layers"]):
        raise RouteLogError(f"{path}: layers {record['layers']} are not layers of the model")
    return Dump(Path(path), record)


def dump_windows(dumps: list[Dump], first_source: int = 0) -> list[CountsWindow]:
    """The windows the dumps hold between them: a series of one start read as differences.

    ``source`` is ``first_source`` + the dump's index in ``dumps``.
    """
    series: dict[tuple, list[tuple[int, Dump]]] = {}
    for i, dump in enumerate(dumps):
        series.setdefault((dump.since, dump.processes), []).append((i, dump))
    groups = list(series.values())
    for one in groups:
        one.sort(key=lambda item: item[1].until)
        for (_, a), (_, b) in pairwise(one):
            if a.until == b.until:
                raise RouteLogError(f"{a.path} and {b.path} are the same dump")
    for n, one in enumerate(groups):
        for other in groups[n + 1 :]:
            a, b = one[-1][1], other[-1][1]
            if a.processes & b.processes and a.since < b.until and b.since < a.until:
                raise RouteLogError(
                    f"{a.path} and {b.path} count the same processes over overlapping times "
                    "(different starts): give the dumps of one start only"
                )
    windows = []
    for one in groups:
        whole = [(dump, dump.window(first_source + i)) for i, dump in one]
        windows.append(whole[0][1])
        for (_, earlier), (dump, later) in pairwise(whole):
            windows.append(_difference(later, earlier, dump))
    return sorted(windows, key=lambda w: w.t_end)


def _difference(later: CountsWindow, earlier: CountsWindow, dump: Dump) -> CountsWindow:
    """What ``later`` counted after ``earlier`` (same start, same layers)."""
    if not np.array_equal(later.layers, earlier.layers) or (later.counts < earlier.counts).any():
        raise RouteLogError(
            f"{dump.path}: counts less than an earlier dump's of the same start: not one recording"
        )
    return CountsWindow(
        later.source,
        earlier.t_end,
        later.t_end,
        -1,
        later.tokens - earlier.tokens,
        later.prefill_tokens - earlier.prefill_tokens,
        later.layers,
        later.counts - earlier.counts,
        later.weight_sums - earlier.weight_sums,
    )
