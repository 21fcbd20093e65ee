"""The inputs of a report: what each file is, told by its content, and what it provides.

Four kinds of file record routing; ``reading/`` reads each, and here each says which
``Need``s it can answer (``provides``):

- a routes log (header line, mode ``routes``): everything; schema 1 logs have no
  requests, schema 2 logs no phases and no token ids;
- a counts log (header line, mode ``counts``): expert counts, weight sums, time windows;
- a dump of ``/dump_expert_distribution_record`` (one JSON object with
  ``logical_count``): the same, one window per dump;
- vLLM's own ``routed_experts`` (OpenAI response bodies, one per line): each token's
  experts, requests, phases and, when asked, token ids; no router weights, passes or
  times, and prompt tokens served from the prefix cache come with every request that
  reused them.

``open_inputs`` finds the files (as ``routes.find_logs``), tells each one's kind by its
first line, merges the logs of one run as ``routes.open_logs`` does (its checks), and
refuses inputs of different models (expert count, top-k or decoder layers disagree) and
a dump whose server's log is among the inputs (its counts are in that log).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moe_profiler.analysis.common import model_label
from moe_profiler.analysis.description import Need, OptionError
from moe_profiler.reading import dumps as dump_files
from moe_profiler.reading import native, routes
from moe_profiler.reading.columns import CountsWindow, RouteBlock
from moe_profiler.reading.routes import RouteLogError

COUNTS_PROVIDES = frozenset({Need.EXPERT_COUNTS, Need.WEIGHT_SUMS, Need.TIMES})
CAPTURE_PROVIDES = frozenset({Need.EXPERT_COUNTS, Need.TOKEN_ROUTES, Need.REQUESTS, Need.PHASES})
WHAT_IS_READ = (
    "the report reads route and counts logs (VLLM_LOG_MOE), dumps of "
    "/dump_expert_distribution_record and JSONL files of OpenAI responses with vLLM's "
    "routed_experts"
)
Warn = Callable[[str], None] | None


def routes_provides(schema: int) -> frozenset[Need]:
    """What a routes log of ``schema`` records."""
    lacks = set()
    if schema < 2:
        lacks.add(Need.REQUESTS)
    if schema < 3:
        lacks |= {Need.PHASES, Need.TOKEN_IDS}
    return frozenset(set(Need) - {Need.TIMES} - lacks)


@dataclass(eq=False)
class Input:
    """One input of a report: its files, kind, shape, what it provides and how to read it."""

    kind: str  # "routes log", "counts log", "dump", "vLLM routed_experts"
    files: list[Path]
    provides: frozenset[Need]
    num_experts: int | None  # None: the input does not say (vLLM's routed_experts)
    top_k: int
    num_layers: int | None  # the model's decoder layers
    layers: list[int]  # the layers it has routes or counts of
    model: str | None
    sources: int  # source numbers its items use in a read (one per file)

    @property
    def name(self) -> str:
        """Its file, or its first file and how many more, for messages."""
        first = str(self.files[0])
        return first if len(self.files) == 1 else f"{first} (+{len(self.files) - 1} files)"

    def read(
        self, first_source: int, strict: bool = False, warn: Warn = None
    ) -> Iterator[RouteBlock | CountsWindow]:
        """Its route blocks or counts windows; ``source`` numbers start at ``first_source``."""
        raise NotImplementedError

    def account(self) -> dict:
        """What was read (after ``read``), for ``analysis.json``."""
        raise NotImplementedError


@dataclass(eq=False)
class LogInput(Input):
    """The files of one run's routes log or counts log (ranks, rotated parts)."""

    logs: list[routes.LogFile] = field(default_factory=list)

    def read(self, first_source, strict=False, warn=None):
        if self.kind == "counts log":
            return routes.iter_counts(self.logs, strict, warn, first_source=first_source)
        return routes.iter_blocks(self.logs, strict, warn, first_source=first_source)

    def account(self) -> dict:
        counts = self.kind == "counts log"
        return {
            "windows" if counts else "route_lines": sum(
                log.windows if counts else log.routes for log in self.logs
            ),
            "skipped_lines": sum(len(log.problems) for log in self.logs),
            "complete": all(log.trailer is not None for log in self.logs),
        }


@dataclass(eq=False)
class DumpInput(Input):
    """Dumps of the recorder endpoint, as the windows between them (``dumps.dump_windows``)."""

    dumps: list[dump_files.Dump] = field(default_factory=list)
    windows: list[CountsWindow] = field(default_factory=list)

    def read(self, first_source, strict=False, warn=None):
        for window in self.windows:
            yield dataclasses.replace(window, source=window.source + first_source)

    def account(self) -> dict:
        return {"dumps": self.sources, "windows": len(self.windows), "complete": True}


@dataclass(eq=False)
class CaptureInput(Input):
    """A file of responses with vLLM's own ``routed_experts``."""

    capture: native.NativeCapture | None = None

    def read(self, first_source, strict=False, warn=None):
        return native.iter_capture_blocks(
            self.capture, self.num_experts, first_source, strict, warn
        )

    def account(self) -> dict:
        c = self.capture
        return {
            "responses": c.responses,
            "requests": c.requests,
            "tokens": c.tokens,
            "skipped_lines": len(c.problems),
            "complete": True,
        }


READ_WORDS = (  # what an input's account counts, in words
    ("route_lines", "route lines"),
    ("windows", "count windows"),
    ("dumps", "dumps"),
    ("responses", "responses"),
    ("tokens", "tokens"),
    ("skipped_lines", "bad lines skipped"),
)


def read_in_words(account: dict, keys=tuple(k for k, _ in READ_WORDS)) -> list[str]:
    """What an ``account`` (of one input, or summed over several) counts, those of ``keys``
    that are not 0: "1,234 route lines", ..."""
    return [f"{account[k]:,} {words}" for k, words in READ_WORDS if k in keys and account.get(k)]


def read_all(
    inputs: list[Input], strict: bool, warn: Warn, wanted: Callable[[Input], bool] = bool
) -> Iterator[tuple[Input, RouteBlock | CountsWindow]]:
    """Every item of the ``wanted`` inputs, input by input, with source numbers running on."""
    source = 0
    for one in inputs:
        if wanted(one):
            for item in one.read(source, strict, warn):
                yield one, item
        source += one.sources


def feed(accumulator, item: RouteBlock | CountsWindow) -> None:
    """Hand ``item`` to ``accumulator``: ``add_window`` for a window, ``add`` for a block."""
    if isinstance(item, CountsWindow):
        accumulator.add_window(item)
    else:
        accumulator.add(item)


def open_inputs(
    specs: list[str], num_experts: int | None = None, fallback_experts: int | None = None
) -> list[Input]:
    """The inputs named by ``specs`` (files, folders' ``*.jsonl``, globs), checked together.

    ``num_experts`` (``--num-experts``) is the model's expert count for inputs that do
    not record it (vLLM's routed_experts); by default the other inputs', else
    ``fallback_experts``.
    """
    by_kind: dict[str, list[Path]] = {"log": [], "dump": [], "capture": []}
    for path in routes.find_logs(specs):
        by_kind[tell_kind(path)].append(path)
    inputs: list[Input] = []
    modes = {path: routes.LogFile(path, routes.read_header(path)).mode for path in by_kind["log"]}
    for mode in (routes.ROUTES_MODE, routes.COUNTS_MODE):
        group = [path for path, its in modes.items() if its == mode]
        if group:  # the logs of one run (open_logs' checks), each mode its own run
            inputs.append(_log_input(routes.open_logs(group)))
    if by_kind["dump"]:
        inputs.append(_dump_input([dump_files.read_dump(p) for p in by_kind["dump"]]))
    captures = [native.open_capture(p) for p in by_kind["capture"]]
    _check_same_model([_shape(i) for i in inputs + [_capture_input(c, None) for c in captures]])
    known = {i.num_experts for i in inputs if i.num_experts is not None}
    experts = num_experts if num_experts is not None else next(iter(known), fallback_experts)
    if num_experts is not None and known and known != {num_experts}:
        named = next(i for i in inputs if i.num_experts != num_experts)
        raise OptionError(
            f"--num-experts {num_experts}: {named.name} is of a model with "
            f"{named.num_experts} experts"
        )
    if captures and experts is None:
        raise OptionError(
            f"{captures[0].path}: vLLM's routed_experts carry expert ids but not the model's "
            "expert count: give --num-experts (config.json: num_experts, n_routed_experts "
            "or num_local_experts)"
        )
    inputs += [_capture_input(c, experts) for c in captures]
    _check_dumps_not_in_logs(inputs)
    return inputs


def tell_kind(path: Path) -> str:
    """``log``, ``dump`` or ``capture``, from the first line of ``path``."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        raise RouteLogError(f"{path}: empty first line: {WHAT_IS_READ}")
    try:
        value = json.loads(first)
    except ValueError:
        if dump_files.looks_like_broken_dump(first):
            return "dump"  # read_dump says what is wrong with it
        raise RouteLogError(f"{path}:1: not JSON: {WHAT_IS_READ}") from None
    if isinstance(value, dict) and value.get("type") == "meta":
        return "log"
    if dump_files.is_dump(value):
        return "dump"
    if native.is_response(value):
        return "capture"
    raise RouteLogError(f"{path}: its first line is none of these: {WHAT_IS_READ}")


def _log_input(logs: list[routes.LogFile]) -> LogInput:
    header = logs[0].header
    counts = logs[0].mode == routes.COUNTS_MODE
    schema = "" if header["schema"] >= 3 else f", schema {header['schema']}"
    return LogInput(
        kind="counts log" if counts else f"routes log{schema}",
        files=[log.path for log in logs],
        provides=COUNTS_PROVIDES if counts else routes_provides(header["schema"]),
        num_experts=header["num_experts"],
        top_k=header["top_k"],
        num_layers=header.get("num_layers"),
        layers=sorted({layer for log in logs for layer in log.header["layers"]}),
        model=model_label(header),
        sources=len(logs),
        logs=logs,
    )


def _dump_input(dumps: list[dump_files.Dump]) -> DumpInput:
    first = dumps[0].record
    _check_same_model([(d.path, "dump", d.record) for d in dumps])
    return DumpInput(
        kind="dump",
        files=[d.path for d in dumps],
        provides=COUNTS_PROVIDES,
        num_experts=first["num_experts"],
        top_k=first["top_k"],
        num_layers=first["num_layers"],
        layers=sorted({layer for d in dumps for layer in d.layers}),
        model=first.get("model_name"),
        sources=len(dumps),
        dumps=dumps,
        windows=dump_files.dump_windows(dumps),
    )


def _capture_input(capture: native.NativeCapture, num_experts: int | None) -> CaptureInput:
    provides = CAPTURE_PROVIDES | ({Need.TOKEN_IDS} if capture.token_ids else set())
    return CaptureInput(
        kind="vLLM routed_experts",
        files=[capture.path],
        provides=frozenset(provides),
        num_experts=num_experts,
        top_k=capture.top_k,
        num_layers=capture.num_layers,
        layers=capture.layers,
        model=model_label({"model_name": capture.model}) if capture.model else None,
        sources=1,
        capture=capture,
    )


def _check_same_model(shapes: list[tuple[object, str, dict]]) -> None:
    """Refuse inputs (name, kind, shape) whose expert count, top-k or decoder layers disagree."""
    for key in ("num_experts", "top_k", "num_layers"):
        known = [(name, kind, shape[key]) for name, kind, shape in shapes if shape[key] is not None]
        for name, kind, value in known[1:]:
            if value != known[0][2]:
                raise RouteLogError(
                    f"cannot analyse {known[0][0]} ({known[0][1]}) and {name} ({kind}) together: "
                    f"they are of different models ({key} {known[0][2]} != {value})"
                )


def _shape(i: Input) -> tuple[str, str, dict]:
    values = {key: getattr(i, key) for key in ("num_experts", "top_k", "num_layers")}
    return i.name, i.kind, values


def _check_dumps_not_in_logs(inputs: list[Input]) -> None:
    """A dump counts what its server's log holds: both would count those tokens twice."""
    logged = {p.name: p for i in inputs if isinstance(i, LogInput) for p in i.files}
    for dump in (d for i in inputs if isinstance(i, DumpInput) for d in i.dumps):
        for name in (Path(f).name for f in dump.record.get("files") or []):
            if name in logged:
                raise RouteLogError(
                    f"{dump.path} is a dump of the server that wrote {logged[name]}: its "
                    "counts are in that log too; give one or the other"
                )
