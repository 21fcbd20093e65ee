"""``vllm serve`` with the route log, driven as users drive it (CPU build, tiny MoE).

Four real servers, each shared by the tests below it, in file order:
- routes mode, all layers: completions, chat, streaming and 16 concurrent requests
  through the ``openai`` client, each logged token checked against the response's
  token ids and phase; SGLang's stop/start/dump mid-traffic; the status; a real
  ``/metrics`` scrape parsed with prometheus_client; Ctrl-C;
- counts mode on the first batch of the routes server: equal counts; SIGTERM;
- a counts server under two kinds of traffic: its report (load over time) in Chromium;
- rotation (1 MiB, keep 2) with sampling (half the requests);
- two API keys: the recorder's endpoints refuse exactly as ``/v1`` does;
and bad values of every new variable, each refused at start with its name.
The chaos test (control calls, traffic, a killed engine) is test_e2e_chaos.py.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import (
    Server,
    bearer,
    expert_counts,
    log_lines,
    match_requests,
    wait_for_route_lines,
    wait_for_writer_exit,
)
from vllm_under_test import graceful_stop_args

from moe_profiler.analysis import pipeline
from moe_profiler.analysis.description import Options
from moe_profiler.reading import routes
from moe_profiler.reading.routes import RouteLogError
from moe_profiler.verification import report_browser
from moe_route_log.log_format import is_sampled

pytestmark = pytest.mark.e2e
LAYERS, EXPERTS = 3, 8  # the tiny model (conftest.tiny_model)
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True, "return_token_ids": True}}


def tokens_of(outputs) -> int:
    """Tokens that go through the model: prompt and every output token but the last."""
    return sum(len(p) + len(o) - 1 for p, o in outputs)


def completion(client, model, prompts, max_tokens=12):
    """A batch completion; (prompt ids, output ids) per prompt."""
    response = client.completions.create(
        model=str(model), prompt=prompts, max_tokens=max_tokens, **GREEDY
    )
    return [(c.prompt_token_ids, c.token_ids) for c in response.choices]


@pytest.fixture(scope="module")
def routes_server(tiny_model, tmp_path_factory, patched):
    log = tmp_path_factory.mktemp("serve-routes") / "routes.jsonl"
    server = Server.start(
        tiny_model, log, {"VLLM_LOG_MOE_LAYER": "all", "VLLM_LOG_MOE_INTERVAL_S": "1"}
    )
    server.outputs = {}
    yield server
    server.kill()


@pytest.fixture(scope="module")
def client(routes_server):
    return openai.OpenAI(base_url=routes_server.url + "/v1", api_key="none")


@pytest.mark.every_release
def test_every_kind_of_request_is_logged_once_with_its_token_ids(
    routes_server, client, tiny_model, questions
):
    first = completion(client, tiny_model, questions[:8])  # the counts server repeats this
    chat = client.chat.completions.create(
        model=str(tiny_model),
        messages=[{"role": "user", "content": questions[8]}],
        max_tokens=10,
        **GREEDY,
    )
    stream_ids, stream_prompt = [], None
    for chunk in client.completions.create(
        model=str(tiny_model), prompt=questions[9], max_tokens=15, stream=True, **GREEDY
    ):
        choice = chunk.choices[0]
        stream_prompt = stream_prompt or choice.prompt_token_ids
        stream_ids += choice.token_ids or []

    async def concurrent():
        aclient = openai.AsyncOpenAI(base_url=routes_server.url + "/v1", api_key="none")
        responses = await asyncio.gather(
            *(
                aclient.completions.create(
                    model=str(tiny_model), prompt=q, max_tokens=6 + i % 5, **GREEDY
                )
                for i, q in enumerate(questions[10:26])
            )
        )
        return [(r.choices[0].prompt_token_ids, r.choices[0].token_ids) for r in responses]

    outputs = [
        *first,
        (chat.prompt_token_ids, chat.choices[0].token_ids),
        (stream_prompt, stream_ids),
        *asyncio.run(concurrent()),
    ]
    assert len(outputs) == 26 and all(len(o) >= 6 for _, o in outputs)
    lines = wait_for_route_lines(routes_server, tokens_of(outputs) * LAYERS)
    matched = match_requests(lines, outputs)  # each token once, with its input token id
    routes_server.outputs["first"] = [r for r, po in matched.items() if po in first]
    prompt_len = {r["req_id"]: r["prompt_len"] for r in lines if r["type"] == "request"}
    assert prompt_len == {req: len(p) for req, (p, _) in matched.items()}
    for layer in range(LAYERS):  # one line per token and layer
        assert sum(r["type"] == "route" and r["layer"] == layer for r in lines) == tokens_of(
            outputs
        )


@pytest.mark.every_release
def test_stop_start_and_dump_mid_traffic(routes_server, client, tiny_model, questions):
    """Traffic flows the whole time; the recorder is stopped, started and dumped under it."""
    done, outputs = threading.Event(), []

    def traffic():
        i = 0
        while not done.is_set():
            outputs.extend(completion(client, tiny_model, questions[30 + i % 40 : 32 + i % 40], 40))
            i += 2

    def wait_for_requests(more: int) -> None:
        target = len(outputs) + more
        deadline = time.time() + 300
        while len(outputs) < target and time.time() < deadline:
            time.sleep(0.05)
        assert len(outputs) >= target, "the traffic stalled"

    before = sum(r["type"] == "route" for r in log_lines(routes_server.log))
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_for_requests(1)
        assert routes_server.post("/stop_expert_distribution_record") == (
            200,
            b"Stop recording the expert distribution.\n",
        )
        assert routes_server.json("/expert_distribution_status")["recording"] is False
        wait_for_requests(2)  # whole requests run while the recorder is stopped
        assert routes_server.get("/start_expert_distribution_record")[0] == 200  # GET too
        wait_for_requests(2)
        dump = routes_server.json("/dump_expert_distribution_record", method="POST")
        wait_for_requests(1)
    finally:
        done.set()
        worker.join(timeout=300)
    lines = wait_for_route_lines_to_settle(routes_server)
    controls = [r for r in lines if r["type"] == "control"]
    assert [c["action"] for c in controls] == ["stop", "start"]
    stop, start = controls
    assert start["step"] == stop["step"], "while stopped, no pass is counted"
    new = [r for r in lines if r["type"] == "route"][before:]
    # the dump holds exactly the passes after the start, up to the dump
    window = [r for r in new if start["step"] < r["step"] <= dump["last_step"][0]]
    assert window and len(window) < len(new)
    assert dump["logical_count"] == expert_counts(window, LAYERS, EXPERTS)
    assert dump["tokens"] == len(window) // LAYERS and dump["recording"] is True
    written = json.loads(Path(dump["dump_path"]).read_text())
    assert written["logical_count"] == dump["logical_count"]
    # the tokens computed while the recorder was stopped have no lines
    assert 0 < len(new) < tokens_of(outputs) * LAYERS


def wait_for_route_lines_to_settle(server: Server, quiet_s: float = 1.0) -> list[dict]:
    """The log's lines once its size has not changed for ``quiet_s`` seconds."""
    size, since = -1, time.time()
    while time.time() - since < quiet_s:
        now = server.log.stat().st_size
        if now != size:
            size, since = now, time.time()
        time.sleep(0.1)
    return log_lines(server.log)


@pytest.mark.every_release
def test_status(routes_server):
    status = routes_server.json("/expert_distribution_status")
    lines = log_lines(routes_server.log)
    assert status["files"] == [str(routes_server.log)] and status["mode"] == "routes"
    assert status["bytes"] == routes_server.log.stat().st_size
    assert status["route_lines"] == sum(r["type"] == "route" for r in lines)
    assert status["layers"] == [0, 1, 2] and status["model_name"] == routes_server.model.name


@pytest.mark.every_release
def test_metrics_scrape(routes_server):
    status, body = routes_server.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    lines = log_lines(routes_server.log)
    counts = np.zeros((LAYERS, EXPERTS), dtype=int)
    for s in families["vllm_moe_expert_tokens"].samples:
        assert s.name == "vllm_moe_expert_tokens_total"
        assert (s.labels["dp_rank"], s.labels["pp_rank"]) == ("0", "0")
        counts[int(s.labels["layer"]), int(s.labels["expert"])] = s.value
    assert counts.tolist() == expert_counts(lines, LAYERS, EXPERTS)  # every recorded route
    (tokens,) = families["vllm_moe_tokens"].samples
    assert tokens.value == sum(r["type"] == "route" for r in lines) / LAYERS
    assert tokens.labels["model_name"] == str(routes_server.model)
    (recording,) = families["vllm_moe_recording"].samples
    assert recording.value == 1.0
    balance = families["vllm_moe_layer_balancedness"].samples
    assert sorted(s.labels["layer"] for s in balance) == ["0", "1", "2"]
    assert all(1 / EXPERTS <= s.value <= 1 for s in balance)
    assert "vllm:num_requests_running" in families or "vllm:num_requests_running" in body.decode()


def test_ctrl_c_writes_the_trailer(routes_server):
    assert routes_server.stop(signal.SIGINT) == 0, routes_server.tail()
    routes.wait_until_complete(routes_server.log, timeout=120)  # the writer outlives the server
    lines = log_lines(routes_server.log)
    trailer = lines[-1]
    assert trailer["type"] == "end", routes_server.shutdown_lines()
    assert trailer["lines"] == sum(r["type"] == "route" for r in lines)


def counts_server(model, log) -> Server:
    """``vllm serve`` in counts mode, every layer, windows of 0.5 s."""
    env = {"VLLM_LOG_MOE_MODE": "counts", "VLLM_LOG_MOE_INTERVAL_S": "0.5"}
    return Server.start(model, log, {"VLLM_LOG_MOE_LAYER": "all", **env})


def test_counts_mode_equals_routes_mode_on_the_same_traffic(
    routes_server, tiny_model, questions, tmp_path, patched
):
    log = tmp_path / "counts.jsonl"
    server = counts_server(tiny_model, log)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        outputs = completion(client, tiny_model, questions[:8])
        scrape, body = server.get("/metrics")
        assert scrape == 200
        assert server.stop(signal.SIGTERM) == 0, server.tail()
    finally:
        server.kill()
    routes.wait_until_complete(log, timeout=120)  # the writer outlives the server
    lines = log_lines(log)
    assert lines[0]["mode"] == "counts" and lines[-1]["type"] == "end", server.shutdown_lines()
    assert not [r for r in lines if r["type"] in ("route", "request")]
    windows = [r for r in lines if r["type"] == "counts"]
    summed = np.sum([w["counts"] for w in windows], axis=0)
    routes_lines = [
        r
        for r in log_lines(routes_server.log)
        if r["type"] == "route" and r["req_id"] in routes_server.outputs["first"]
    ]
    assert summed.tolist() == expert_counts(routes_lines, LAYERS, EXPERTS)
    assert sum(w["tokens"] for w in windows) == tokens_of(outputs)
    assert sum(w["prefill_tokens"] for w in windows) == sum(len(p) for p, _ in outputs)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    scraped = sum(s.value for s in families["vllm_moe_expert_tokens"].samples)
    assert scraped == summed.sum()


def test_the_report_of_a_counts_log_of_vllm_serve_shows_its_load_over_time(
    tiny_model, questions, tmp_path, patched
):
    """A counts log of a real server under two kinds of traffic, read by the report and its
    page opened in Chromium: the load over time, one point per window; the server's own
    dump gives the same load, and is refused beside its log (counted twice)."""
    log = tmp_path / "counts.jsonl"
    server = counts_server(tiny_model, log)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        outputs = completion(client, tiny_model, questions[40:48])
        time.sleep(1.0)  # no traffic: no window
        numbers = [" ".join(str(n) for n in range(i, i + 60)) for i in range(4)]
        outputs += completion(client, tiny_model, numbers, max_tokens=24)
        dump = server.json("/dump_expert_distribution_record", method="POST")
        assert server.stop(signal.SIGINT) == 0, server.tail()
    finally:
        server.kill()
    routes.wait_until_complete(log, timeout=120)  # the writer outlives the server
    report = pipeline.write_report([str(log)], tmp_path / "report", Options())
    series = report["time_series"]
    assert len(series["windows"]["t_end"]) >= 2
    assert sum(series["windows"]["tokens"]) == tokens_of(outputs)
    assert all(
        len(v["balancedness"]) == len(series["windows"]["t_end"]) for v in series["layers"].values()
    )
    assert report["ep_info"]["windows"] == len(series["windows"]["t_end"])
    from_dump = pipeline.write_report([dump["dump_path"]], tmp_path / "dump", Options())
    for layer in map(str, range(LAYERS)):
        assert from_dump["load"][layer]["counts"] == report["load"][layer]["counts"]
    with pytest.raises(RouteLogError, match=r"is a dump of the server that wrote .*counts\.jsonl"):
        pipeline.write_report([str(log), dump["dump_path"]], tmp_path / "both", Options())
    shot = tmp_path / "report.png"
    seen = report_browser.visit(tmp_path / "report" / "report.html", shot)
    assert seen.errors == [] and seen.requests == [] and seen.broken_images == []
    page = (tmp_path / "report" / "report.html").read_text()
    assert '<h2 id="time_series">' in page and '<img alt="time_series"' in page
    assert html.escape("Left out: it needs each token's top-k experts") in page
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert (image < 245).any(axis=2).mean() > 0.05 and len(
        np.unique(image.reshape(-1, 3), axis=0)
    ) > 500


@pytest.mark.every_release
def test_rotation_and_sampling(tiny_model, questions, tmp_path, patched):
    log = tmp_path / "rot.jsonl"
    server = Server.start(
        tiny_model,
        log,
        {
            "VLLM_LOG_MOE_LAYER": "all",
            "VLLM_LOG_MOE_MAX_MB": "1",
            "VLLM_LOG_MOE_KEEP": "2",
            "VLLM_LOG_MOE_SAMPLE": "0.5",
        },
        args=graceful_stop_args(),  # the last part's trailer is checked below
    )
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        response = client.completions.create(
            model=str(tiny_model), prompt=questions[100:260], max_tokens=64, **GREEDY
        )
        status = server.json("/expert_distribution_status")
        assert server.stop(signal.SIGINT) == 0, server.tail()
    finally:
        server.kill()
    wait_for_writer_exit(max(tmp_path.glob("rot.p*.jsonl")))  # it may still write the last part
    parts = sorted(tmp_path.glob("rot.p*.jsonl"))
    numbers = [int(p.name.split(".")[1][1:]) for p in parts]
    assert len(parts) == 2 and numbers[1] == numbers[0] + 1 and numbers[0] >= 1, numbers
    assert status["files"] and all(
        re.fullmatch(r".*/rot\.p\d{5}\.jsonl", f) for f in status["files"]
    )
    sampled = {f"{response.id}-{i}" for i in range(160) if is_sampled(f"{response.id}-{i}-x", 0.5)}
    assert 50 < len(sampled) < 110
    for number, part in zip(numbers, parts, strict=True):
        lines = log_lines(part)
        assert lines[0]["type"] == "meta" and lines[0]["part"] == number
        assert lines[-1]["type"] == "end", server.shutdown_lines()
        route_lines = [r for r in lines if r["type"] == "route"]
        assert lines[-1]["lines"] == len(route_lines) > 0
        assert {r["req_id"].rsplit("-", 1)[0] for r in route_lines} <= sampled
        if number == numbers[0]:
            # a file closes after the pass that takes it past the limit
            assert lines[-1]["reason"] == "rotated" and 2**20 <= part.stat().st_size < 2**23


CONTROL = (
    "/start_expert_distribution_record",
    "/stop_expert_distribution_record",
    "/dump_expert_distribution_record",
    "/expert_distribution_status",
)


@pytest.mark.every_release
def test_with_an_api_key_the_recorder_endpoints_refuse_exactly_as_v1_does(
    tiny_model, tmp_path, patched
):
    """Keys from --api-key (two of them); VLLM_API_KEY is ignored then, as vLLM ignores it."""
    log = tmp_path / "auth.jsonl"
    server = Server.start(
        tiny_model, log, {"VLLM_API_KEY": "env-key"}, args=("--api-key", "key-1", "key-2")
    )
    try:
        for method in ("GET", "POST", "PUT"):
            for headers in (None, bearer("env-key"), bearer("key-3"), {"Authorization": "key-1"}):
                refusal = server.request(method, "/v1/models", headers)
                assert refusal[0] == 401
                for path in CONTROL:
                    assert server.request(method, path, headers) == refusal, (method, path)
        assert not list(tmp_path.glob("*dump*")), "a refused dump wrote nothing"
        status = server.request("GET", CONTROL[3], bearer("key-2"))
        assert status[0] == 200 and json.loads(status[1])["recording"] is True, "refused stops"
        assert server.request("POST", CONTROL[1], bearer("key-1")) == (
            200,
            b"Stop recording the expert distribution.\n",
        )
        status = server.request("GET", CONTROL[3], bearer("key-2"))
        assert status[0] == 200 and json.loads(status[1])["recording"] is False
        assert server.request("PUT", CONTROL[0], bearer("key-1"))[0] == 405
        assert server.request("GET", "/metrics")[0] == 200  # as vLLM has it: open
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("VLLM_LOG_MOE_MODE", "tokens", "'routes' or 'counts'"),
        ("VLLM_LOG_MOE_INTERVAL_S", "0", "a number > 0"),
        ("VLLM_LOG_MOE_START", "maybe", "'on' or 'off'"),
        ("VLLM_LOG_MOE_MAX_MB", "-1", "an integer >= 1"),
        ("VLLM_LOG_MOE_KEEP", "x", "an integer"),
        ("VLLM_LOG_MOE_SAMPLE", "2", "a number > 0 and <= 1"),
        ("VLLM_LOG_MOE_DUMP_KEEP", "-1", "an integer >= 0"),
    ],
)
def test_bad_values_stop_the_server_at_start(tiny_model, tmp_path, patched, name, value, accepted):
    env = {name: value}
    if name == "VLLM_LOG_MOE_KEEP":
        env["VLLM_LOG_MOE_MAX_MB"] = "1"
    with pytest.raises(RuntimeError, match="vllm serve exited"):
        Server.start(tiny_model, tmp_path / "bad.jsonl", env, timeout=300)
    output = (tmp_path / "bad.server.txt").read_text()
    assert f"{name}={value!r} is not valid; accepted: {accepted}" in output
