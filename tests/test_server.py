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
