"""The recorder's HTTP side without a server (moe_route_log/server.py): key gate, dead engines.

The e2e tests (test_e2e_serve.py) run the same code in a real ``vllm serve``; these
cover the cases a real server makes slow or hard: an engine that dies while a call
waits, OPTIONS, ``--root-path``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

try:  # where vLLM 0.32 and later keep it
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware
except ImportError:  # vLLM 0.15.1
    from vllm.entrypoints.openai.api_server import AuthenticationMiddleware
from vllm.v1.engine.exceptions import EngineDeadError

from moe_route_log import server
from moe_route_log.envs import LogConfig


def gated_app(tokens: list[str] | None, root_path: str = "") -> FastAPI:
    """An app with a recorder-like route and a /v1 route, as vLLM builds it."""
    app = FastAPI()
    app.root_path = root_path  # as vLLM sets --root-path

    @app.api_route("/x", methods=["GET", "POST"])
    async def recorder():
        return {"ok": True}

    @app.get("/v1/models")
    async def models():
        return {"data": []}

    app.add_middleware(server._ApiKeyGate, paths=frozenset({"/x"}))
    if tokens:  # as vLLM does, after the routers
        app.add_middleware(AuthenticationMiddleware, tokens=tokens)
    return app


def test_without_a_key_the_recorder_routes_stay_open():
    client = TestClient(gated_app(None))
    assert client.post("/x").json() == {"ok": True}


def test_with_keys_the_refusal_is_v1s_and_each_key_is_admitted():
    client = TestClient(gated_app(["k1", "k2"]))
    for headers in ({}, {"Authorization": "Bearer k3"}, {"Authorization": "k1"}):
        refused, v1 = client.post("/x", headers=headers), client.get("/v1/models", headers=headers)
        assert (refused.status_code, refused.content) == (v1.status_code, v1.content)
        assert refused.status_code == 401 and refused.json() == {"error": "Unauthorized"}
    for key in ("k1", "k2"):
        assert client.get("/x/", headers={"Authorization": f"bEaReR {key}"}).json() == {"ok": True}
    assert client.get("/x/").status_code == 401  # a trailing slash is the same route
    assert client.options("/x").status_code == 405  # OPTIONS passes, as vLLM lets it


def test_the_gate_sees_the_route_under_a_root_path():
    client = TestClient(gated_app(["k1"], root_path="/api"), root_path="/api")
    assert client.get("/api/x").status_code == 401
    assert client.get("/api/x", headers={"Authorization": "Bearer k1"}).json() == {"ok": True}


class _Engine:
    """An engine client whose calls never answer, as vLLM's after its engine died."""

    def __init__(self, dies_after_s: float | None) -> None:
        self.dies_after_s = dies_after_s
        self.started = 0.0

    @property
    def errored(self) -> bool:
        return self.dies_after_s is not None and self.elapsed() > self.dies_after_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def collective_rpc(self, method, timeout=None, args=()):
        await asyncio.Event().wait()


async def _ask(engine: _Engine):
    engine.started = time.monotonic()
    return await asyncio.wait_for(server.ask(engine, "dump"), 5)  # not forever, if it fails


def test_a_call_in_flight_when_the_engine_dies_ends_at_once(monkeypatch):
    monkeypatch.setattr(server, "DEATH_POLL_S", 0.05)
    engine = _Engine(dies_after_s=0.2)
    with pytest.raises(EngineDeadError):
        asyncio.run(_ask(engine))
    assert engine.dies_after_s < engine.elapsed() < 1.0


def test_a_silent_live_engine_gets_a_503_after_the_timeout(monkeypatch):
    monkeypatch.setattr(server, "DEATH_POLL_S", 0.05)
    monkeypatch.setattr(server, "RPC_TIMEOUT_S", 0.3)
    with pytest.raises(HTTPException) as e:
        asyncio.run(_ask(_Engine(dies_after_s=None)))
    assert e.value.status_code == 503
    assert e.value.detail == "the engine did not answer 'dump' within 0.3 s"


STAMP = "20261129T101500.123456Z"


def test_dump_files_are_this_logs_dumps_and_nothing_else(tmp_path):
    ours = [
        tmp_path / f"routes.dump-{STAMP}.json",
        tmp_path / "routes.dump-20261130T000000.000001Z.json",
    ]
    others = [
        tmp_path / "routes.jsonl",
        tmp_path / f"routes.dump-{STAMP}.json.bak",
        tmp_path / f".routes.dump-{STAMP}.json.partial",
        tmp_path / f"routes2.dump-{STAMP}.json",
        tmp_path / f"xroutes.dump-{STAMP}.json",
        tmp_path / "routes.dump-2026.json",
    ]
    for f in ours + others:
        f.write_text("{}")
    assert server.dump_files(str(tmp_path / "routes.jsonl")) == [str(f) for f in ours]
    made = server.dump_path(str(tmp_path / "routes.jsonl"), 1795924700.25)
    assert made == str(tmp_path / "routes.dump-20261129T035820.250000Z.json")
    Path(made).write_text("{}")
    assert made in server.dump_files(str(tmp_path / "routes.jsonl"))


class _DumpingEngine:
    """An engine client with one worker, whose ``dump`` answers are counted."""

    errored = False

    def __init__(self) -> None:
        self.calls = 0

    async def collective_rpc(self, method, timeout=None, args=()):
        self.calls += 1
        return [
            {
                "hostname": "h",
                "ranks": {"dp": 0, "pp": 0},
                "recording": True,
                "mode": "routes",
                "model_name": "m",
                "num_layers": 1,
                "num_experts": 2,
                "top_k": 1,
                "layers": [0],
                "files": [],
                "bytes": 0,
                "route_lines": self.calls,
                "steps": self.calls,
                "counts": [[self.calls, 0]],
                "weight_sums": [[1.0, 0.0]],
                "tokens": self.calls,
                "prefill_tokens": 0,
                "since": 0.0,
            }
        ]


def dump_client(tmp_path, dump_keep: int) -> tuple[TestClient, _DumpingEngine]:
    app = FastAPI()
    app.include_router(server.router)
    app.state.engine_client = engine = _DumpingEngine()
    log = str(tmp_path / "routes.jsonl")
    app.state.moe_route_log_calls = server.SharedCalls()
    app.state.moe_route_log_config = LogConfig(
        log, "", None, None, None, None, 1, dump_keep=dump_keep
    )
    return TestClient(app), engine


def test_only_the_newest_dumps_stay_and_other_files_are_untouched(tmp_path):
    (tmp_path / "routes.jsonl").write_text("the log\n")
    client, _ = dump_client(tmp_path, dump_keep=3)
    answers = [client.post("/dump_expert_distribution_record").json() for _ in range(5)]
    paths = [a["dump_path"] for a in answers]
    assert len(set(paths)) == 5
    assert server.dump_files(str(tmp_path / "routes.jsonl")) == paths[2:]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["routes.jsonl"] + [Path(p).name for p in paths[2:]]
    )
    assert json.loads(Path(paths[-1]).read_text()) == answers[-1]
    assert (tmp_path / "routes.jsonl").read_text() == "the log\n"


def test_file_0_and_dump_keep_0_answer_without_writing(tmp_path):
    client, _ = dump_client(tmp_path, dump_keep=3)
    answer = client.get("/dump_expert_distribution_record?file=0").json()
    assert answer["dump_path"] is None and answer["logical_count"] == [[1, 0]]
    client, _ = dump_client(tmp_path, dump_keep=0)
    assert client.post("/dump_expert_distribution_record?file=1").json()["dump_path"] is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["", "2", "yes", "true", "0 "])
def test_a_bad_file_value_is_a_400_naming_the_parameter(tmp_path, value):
    client, engine = dump_client(tmp_path, dump_keep=3)
    answer = client.post("/dump_expert_distribution_record", params={"file": value})
    assert answer.status_code == 400
    assert answer.json()["detail"] == (
        f"query parameter file={value!r} is not valid; accepted: '1' (write the dump file, "
        "the default) or '0' (answer only)"
    )
    assert engine.calls == 0 and list(tmp_path.iterdir()) == []


class _GatedEngine:
    """An engine client whose calls answer (with their number) only when let through."""

    errored = False

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()

    async def collective_rpc(self, method, timeout=None, args=()):
        self.calls.append(args[0])
        number = len(self.calls)
        await self.release.wait()
        return [{"call": number}]


def test_concurrent_dumps_share_engine_calls_none_older_than_its_request():
    async def run():
        engine, shared = _GatedEngine(), server.SharedCalls()
        first = asyncio.ensure_future(shared.ask(engine, "dump"))
        await asyncio.sleep(0.01)  # the first call is in flight
        waiting = [asyncio.ensure_future(shared.ask(engine, "dump")) for _ in range(9)]
        status = asyncio.ensure_future(shared.ask(engine, "status"))  # its own command
        starts = [asyncio.ensure_future(shared.ask(engine, "start")) for _ in range(3)]
        await asyncio.sleep(0.01)
        engine.release.set()
        answers = await asyncio.gather(first, *waiting)
        await asyncio.gather(status, *starts)
        later = await shared.ask(engine, "dump")
        return engine.calls, [a[0]["call"] for a in answers], later[0]["call"]

    calls, numbers, later = asyncio.run(run())
    assert sorted(calls) == ["dump", "dump", "dump", "start", "start", "start", "status"]
    second = calls.index("dump", 1) + 1  # the call the nine waiting callers share
    assert numbers == [1] + [second] * 9
    assert later == len(calls) == 7  # asked after the others ended: a call of its own


def test_a_caller_leaving_does_not_cancel_the_shared_call():
    async def run():
        engine, shared = _GatedEngine(), server.SharedCalls()
        leaving = asyncio.ensure_future(shared.ask(engine, "status"))
        staying = asyncio.ensure_future(shared.ask(engine, "status"))
        await asyncio.sleep(0.01)
        leaving.cancel()
        engine.release.set()
        return await staying

    assert asyncio.run(run()) == [{"call": 1}]


class _TimedEngine:
    """An engine client that answers at once and notes when each call came."""

    errored = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def collective_rpc(self, method, timeout=None, args=()):
        self.calls.append((args[0], time.monotonic()))
        return [None]


def test_a_read_only_command_reaches_the_engine_at_most_once_per_gap(monkeypatch):
    monkeypatch.setattr(server, "SHARED_GAP_S", 1.0)  # long: the bounds hold on a busy machine

    async def run():
        engine, shared = _TimedEngine(), server.SharedCalls()
        for command in ("dump", "dump", "status", "start", "start", "dump"):
            await shared.ask(engine, command)
        return engine.calls

    calls = asyncio.run(run())
    assert [c for c, _ in calls] == ["dump", "dump", "status", "start", "start", "dump"]
    times = {i: t for i, (_, t) in enumerate(calls)}
    assert times[1] - times[0] >= 1.0 and times[5] - times[1] >= 1.0  # dumps: a gap between
    assert times[2] - times[1] < 0.5 and times[4] - times[3] < 0.5  # others: no wait for them
