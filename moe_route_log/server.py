"""``vllm serve`` with VLLM_LOG_MOE: SGLang's recorder endpoints, a status, and metrics.

Endpoints (GET or POST, as in SGLang):

- ``/start_expert_distribution_record``, ``/stop_expert_distribution_record``:
  start or stop recording in every engine process; SGLang's reply texts.
- ``/dump_expert_distribution_record``: the counts since the last start as JSON
  (``logical_count`` ``[num_layers, num_experts]``, ``weight_sums``, ``tokens``),
  also written next to the log as ``<stem>.dump-<UTC time>.json`` unless asked
  ``?file=0``; only the newest VLLM_LOG_MOE_DUMP_KEEP such files stay on disk.
- ``/expert_distribution_status``: recording or not, mode, files, bytes, lines.

When the server has an API key (``--api-key`` or VLLM_API_KEY), these endpoints
need it as ``/v1`` does, checked and refused by vLLM's own middleware
(``_ApiKeyGate``); ``/metrics`` stays as vLLM has it.

Metrics on vLLM's own ``/metrics``: the engine processes hold the counts, so each
scrape first asks them for their totals (one ``collective_rpc`` between two
passes, at most once a second) and a collector reports, per (data-parallel rank,
pipeline rank, layer, expert), ``vllm_moe_expert_tokens_total`` and
``vllm_moe_expert_weight_total``, per rank ``vllm_moe_tokens_total`` and
``vllm_moe_recording``, and per layer ``vllm_moe_layer_balancedness`` (mean over
max of the experts' loads in the last complete window: 1 is perfectly even).

Every call reaches the workers through vLLM's own engine-client RPC; with
several data-parallel engines behind one API server, each engine is asked. A call
never waits for a dead engine: vLLM leaves calls in flight at an engine's death
unanswered, so ``ask`` watches the client's ``errored`` and raises vLLM's
``EngineDeadError`` (vLLM's handler answers it and shuts the server down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from vllm.v1.engine.exceptions import EngineDeadError

from . import control
from .envs import LogConfig, read_config
from .vllm_logging import get_logger

logger = get_logger(__name__)
router = APIRouter()
RPC_TIMEOUT_S = 30.0
SCRAPE_REFRESH_S = 1.0  # a scrape asks the engines at most this often
DEATH_POLL_S = 0.5  # how often a waiting call looks whether the engine died
SHARED_GAP_S = 0.1  # a read-only command reaches the engines at most this often
GUARDED_PATH = "/v1"  # a path every release's AuthenticationMiddleware guards
WRITE_FILE = {"1": True, "0": False}  # the dump's ``file`` query parameter
T = TypeVar("T")


async def ask(engine_client, command: str) -> list[dict | None]:
    """Every worker's answer to ``command``, from every data-parallel engine."""
    return await _unless_dead(engine_client, _ask_engines(engine_client, command), command)


async def _ask_engines(engine_client, command: str) -> list[dict | None]:
    core = getattr(engine_client, "engine_core", None)
    engines = getattr(core, "core_engines", None) or []
    if len(engines) > 1:
        # vLLM's DP clients return only the first engine's answer to collective_rpc
        per_engine = await asyncio.gather(
            *(
                core._call_utility_async(
                    "collective_rpc", control.RPC_METHOD, RPC_TIMEOUT_S, (command,), None, engine=e
                )
                for e in engines
            )
        )
        return [answer for answers in per_engine for answer in answers]
    return await engine_client.collective_rpc(
        control.RPC_METHOD, timeout=RPC_TIMEOUT_S, args=(command,)
    )


async def _unless_dead(engine_client, call: Awaitable[T], command: str) -> T:
    """``call``'s result; EngineDeadError once the engine is dead, 503 after RPC_TIMEOUT_S.

    vLLM never answers a call that was in flight when its engine died: without this
    the request, and the server's shutdown that waits for it, would hang.
    """
    task = asyncio.ensure_future(call)
    deadline = time.monotonic() + RPC_TIMEOUT_S
    try:
        while not (await asyncio.wait({task}, timeout=DEATH_POLL_S))[0]:
            if engine_client.errored:
                raise EngineDeadError()
            if time.monotonic() > deadline:
                raise HTTPException(
                    503, f"the engine did not answer {command!r} within {RPC_TIMEOUT_S:g} s"
                )
        return task.result()
    finally:
        task.cancel()


class SharedCalls:
    """Read-only calls (dump, status, totals) that many callers make at once share engine calls.

    vLLM's engine runs every queued call before its next pass, and a dump or a totals
    call makes the engine thread wait for the drain thread (``session.py``), so a storm
    of them would stall the engine. Here one call per command is in flight at most, and
    the next starts ``SHARED_GAP_S`` after it ended; the callers that arrive meanwhile
    share that next call, which starts after they all arrived: nobody gets an answer
    older than their request. start and stop change the state: each is its own call.
    """

    READ_ONLY = frozenset({"dump", "status", "totals"})

    def __init__(self) -> None:
        self._next: dict[str, asyncio.Future] = {}
        self._in_flight: dict[str, asyncio.Lock] = {}
        self._ended: dict[str, float] = {}

    async def ask(self, engine_client, command: str) -> list[dict | None]:
        """``ask(engine_client, command)``, shared with concurrent callers if read-only."""
        if command not in self.READ_ONLY:
            return await ask(engine_client, command)
        if command not in self._next:
            self._next[command] = asyncio.ensure_future(self._call(engine_client, command))
        return await asyncio.shield(self._next[command])  # one caller leaving cancels nothing

    async def _call(self, engine_client, command: str) -> list[dict | None]:
        async with self._in_flight.setdefault(command, asyncio.Lock()):
            gap = self._ended.get(command, -math.inf) + SHARED_GAP_S - time.monotonic()
            await asyncio.sleep(max(gap, 0.0))
            del self._next[command]  # from now on, callers wait for the call after this one
            try:
                return await ask(engine_client, command)
            finally:
                self._ended[command] = time.monotonic()


async def _merged(request: Request, command: str) -> dict:
    calls: SharedCalls = request.app.state.moe_route_log_calls
    return control.merge(await calls.ask(request.app.state.engine_client, command))


@router.api_route("/start_expert_distribution_record", methods=["GET", "POST"])
async def start_record(request: Request):
    """Start recording in every engine process (the dump's counts restart from zero)."""
    await _merged(request, "start")
    return PlainTextResponse("Start recording the expert distribution.\n")


@router.api_route("/stop_expert_distribution_record", methods=["GET", "POST"])
async def stop_record(request: Request):
    """Stop recording in every engine process."""
    await _merged(request, "stop")
    return PlainTextResponse("Stop recording the expert distribution.\n")


@router.api_route("/dump_expert_distribution_record", methods=["GET", "POST"])
async def dump_record(request: Request, file: str = "1"):
    """The counts since the last start, returned and (unless ``?file=0``) written to a file."""
    if file not in WRITE_FILE:
        raise HTTPException(
            400,
            f"query parameter file={file!r} is not valid; accepted: '1' (write the dump "
            "file, the default) or '0' (answer only)",
        )
    config: LogConfig = request.app.state.moe_route_log_config
    dump = await _merged(request, "dump")
    dump["until"] = time.time()
    dump["dump_path"] = None
    if WRITE_FILE[file] and config.dump_keep:
        dump["dump_path"] = dump_path(config.path, dump["until"])
        # in a thread: a slow disk must not hold up the server's other requests
        await asyncio.to_thread(write_dump, dump, config.path, config.dump_keep)
    return JSONResponse(dump)


@router.get("/expert_distribution_status")
async def status(request: Request):
    """Recording or not, mode, files, bytes and route lines of every engine process."""
    return JSONResponse(await _merged(request, "status"))


def dump_path(log_path: str, when: float) -> str:
    """``/data/routes.jsonl`` -> ``/data/routes.dump-20261129T101500.123456Z.json``."""
    stem = os.path.splitext(log_path)[0]
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when % 1 * 1e6):06d}Z"
    return f"{stem}.dump-{stamp}.json"


def dump_files(log_path: str) -> list[str]:
    """The dump files of this log (``dump_path``'s names, nothing else), oldest first."""
    directory, stem = os.path.split(os.path.splitext(log_path)[0])
    name = re.compile(re.escape(stem) + r"\.dump-\d{8}T\d{6}\.\d{6}Z\.json")
    # the UTC stamp is fixed-width, so the names sort by time
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if name.fullmatch(f))


def write_dump(dump: dict, log_path: str, keep: int) -> None:
    """Write ``dump`` whole to its ``dump_path``, then delete all but the log's newest ``keep``."""
    path = dump["dump_path"]
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
    with open(partial, "w") as f:
        json.dump(dump, f)
    os.replace(partial, path)
    for old in dump_files(log_path)[:-keep]:
        with contextlib.suppress(FileNotFoundError):  # another dump deleted it first
            os.remove(old)


class ExpertLoadCollector:
    """Prometheus collector over the engines' last answer to ``totals``."""

    def __init__(self, model_name: str, calls: SharedCalls) -> None:
        self.model_name = model_name
        self.calls = calls
        self.answers: list[dict] = []
        self.fetched = 0.0

    async def refresh(self, engine_client) -> None:
        if time.monotonic() - self.fetched < SCRAPE_REFRESH_S:
            return
        try:
            answers = await self.calls.ask(engine_client, "totals")
        except Exception as e:  # a scrape must never fail because of us
            logger.warning("VLLM_LOG_MOE: expert-load metrics not refreshed: %s", e)
            return
        self.answers = [a for a in answers if a]
        self.fetched = time.monotonic()

    def collect(self):
        labels = ["model_name", "dp_rank", "pp_rank"]
        tokens = CounterMetricFamily(
            "vllm_moe_expert_tokens",
            "Tokens routed to each expert (top-k choices).",
            labels=[*labels, "layer", "expert"],
        )
        weights = CounterMetricFamily(
            "vllm_moe_expert_weight",
            "Sum of the router weights of the tokens routed to each expert.",
            labels=[*labels, "layer", "expert"],
        )
        routed = CounterMetricFamily(
            "vllm_moe_tokens", "Tokens that went through the logged MoE layers.", labels=labels
        )
        recording = GaugeMetricFamily(
            "vllm_moe_recording", "1 while the expert recorder runs, 0 when stopped.", labels=labels
        )
        balance = GaugeMetricFamily(
            "vllm_moe_layer_balancedness",
            "Mean over max of the experts' loads in the last complete window (1 = even).",
            labels=[*labels, "layer"],
        )
        for a in self.answers:
            rank = [self.model_name, str(a["ranks"]["dp"]), str(a["ranks"]["pp"])]
            routed.add_metric(rank, a["tokens"])
            recording.add_metric(rank, 1.0 if a["recording"] else 0.0)
            for i, layer in enumerate(a["layers"]):
                for expert, (n, w) in enumerate(
                    zip(a["counts"][i], a["weight_sums"][i], strict=True)
                ):
                    tokens.add_metric([*rank, str(layer), str(expert)], n)
                    weights.add_metric([*rank, str(layer), str(expert)], w)
            window = a.get("last_window")
            if window:
                for layer, counts in zip(window["layers"], window["counts"], strict=True):
                    peak = max(counts)
                    if peak:
                        balance.add_metric([*rank, str(layer)], sum(counts) / len(counts) / peak)
        yield from (tokens, weights, routed, recording, balance)


class _RefreshOnScrape:
    """ASGI middleware: before ``/metrics`` answers, fetch the engines' totals."""

    def __init__(self, app, collector: ExpertLoadCollector) -> None:
        self.app = app
        self.collector = collector

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/") == "/metrics":
            await self.collector.refresh(scope["app"].state.engine_client)
        await self.app(scope, receive, send)


class _ApiKeyGate:
    """ASGI middleware: the recorder's endpoints need the API key wherever ``/v1`` does.

    vLLM guards path prefixes (``/v1``, and more in later releases), which these
    endpoints lack. So for them the server's own AuthenticationMiddleware, as it was
    installed (with ``--api-key``'s keys, else VLLM_API_KEY's; absent without a key),
    is run on a view of the request at ``/v1``: the same check, exemptions and refusal
    as vLLM's, in each release, found by its ``verify_token`` rather than by version.
    """

    def __init__(self, app, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope, receive, send):
        gate = _api_key_middleware(scope["app"]) if self._guards(scope) else None
        if gate is None:
            await self.app(scope, receive, send)
            return

        async def admitted(_view, receive, send):
            await self.app(scope, receive, send)

        view = {**scope, "path": GUARDED_PATH, "raw_path": GUARDED_PATH.encode(), "root_path": ""}
        await gate.cls(admitted, *gate.args, **gate.kwargs)(view, receive, send)

    def _guards(self, scope) -> bool:
        if scope["type"] != "http":
            return False
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        return path.rstrip("/") in self.paths


def _api_key_middleware(app):
    """The server's AuthenticationMiddleware entry (starlette ``Middleware``), if it has a key."""
    return next(
        (m for m in app.user_middleware if callable(getattr(m.cls, "verify_token", None))), None
    )


def attach(app: FastAPI) -> None:
    """Add the endpoints (behind the API key, if any), and the collector to the registry
    vLLM's ``/metrics`` serves."""
    from vllm.v1.metrics.prometheus import get_prometheus_registry

    app.state.moe_route_log_config = read_config()
    app.state.moe_route_log_calls = SharedCalls()
    app.include_router(router)
    app.add_middleware(_ApiKeyGate, paths=frozenset(r.path for r in router.routes))
    args = getattr(app.state, "args", None)
    served = getattr(args, "served_model_name", None)
    model_name = (served[0] if served else None) or getattr(args, "model", None) or "unknown"
    collector = ExpertLoadCollector(model_name, app.state.moe_route_log_calls)
    get_prometheus_registry().register(collector)
    app.add_middleware(_RefreshOnScrape, collector=collector)
