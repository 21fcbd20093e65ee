"""The recorder's HTTP side without a server (moe_route_log/server.py): key gate, dead engines.

The e2e tests (test_e2e_serve.py) run the same code in a real ``vllm serve``; these
cover the cases a real server makes slow or hard: an engine that dies while a call
waits, OPTIONS, ``--root-path``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from vllm.entrypoints.openai.api_server import AuthenticationMiddleware
from vllm.v1.engine.exceptions import EngineDeadError

from moe_route_log import server


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
