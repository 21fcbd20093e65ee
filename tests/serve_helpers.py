"""Helpers of the server tests: a real ``vllm serve`` process, and its log read back as lines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from e2e_helpers import engine_pythonpath
from vllm_under_test import serve_command

from moe_profiler.reading import routes

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """``vllm serve MODEL`` with the VLLM_LOG_MOE* variables in ``env``."""

    process: subprocess.Popen
    url: str
    log: Path
    output: Path
    model: Path

    @classmethod
    def start(
        cls,
        model: Path,
        log: Path,
        env: dict[str, str],
        timeout: float = 600,
        args: tuple[str, ...] = (),
    ) -> Server:
        """Start it (``args``: more ``vllm serve`` options) and wait until it is healthy."""
        port = free_port()
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("VLLM_LOG_MOE") and k != "VLLM_API_KEY"
        }
        environ.update(
            VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=engine_pythonpath(), VLLM_LOG_MOE=str(log)
        )
        environ.update(env)
        output = log.with_suffix(".server.txt")
        cmd = [
            *serve_command(model),
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max-model-len",
            "512",
            "--seed",
            "0",
            "--no-enable-prefix-caching",  # every prompt token goes through the model
            *args,
        ]
        with open(output, "w") as out:
            # its own process group: kill() must take its engine core along (see kill)
            process = subprocess.Popen(
                cmd, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = cls(process, f"http://127.0.0.1:{port}", log, output, model)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({process.returncode}):\n{server.tail()}")
            try:
                if server.get("/health")[0] == 200:
                    return server
            except OSError:
                pass
            time.sleep(1)
        server.kill()
        raise RuntimeError(f"vllm serve did not come up in {timeout:.0f} s:\n{server.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.output.read_text()[-chars:]

    def shutdown_lines(self) -> str:
        """What vLLM said about its shutdown (an assertion's message: the output's tail is
        often only the interpreter's exit noise)."""
        lines = self.output.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if "[shutdown]" in line or "terminat" in line)

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body); an error status raises ``HTTPError``."""
        return self._open("GET", path)

    def post(self, path: str) -> tuple[int, bytes]:
        """(status, body) of an empty POST; an error status raises ``HTTPError``."""
        return self._open("POST", path, body=b"")

    def request(
        self, method: str, path: str, headers: dict | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        """(status, body) of any request, whatever its status."""
        try:
            return self._open(method, path, headers, body)
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _open(
        self, method: str, path: str, headers: dict | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url + path, data=body, headers=headers or {}, method=method
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read()

    def json(self, path: str, method: str = "GET") -> dict:
        status, body = self.get(path) if method == "GET" else self.post(path)
        assert status == 200, body
        return json.loads(body)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120) -> int:
        """Send ``sig`` (Ctrl-C by default) and wait for the server to exit."""
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server and its engine core, which outlives a killed server otherwise
        (an orphan holding gigabytes); the log's writer, in a session of its own, then ends."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


def wait_for_writer_exit(log: Path, timeout: float = 120) -> None:
    """Block until the writer named in ``log``'s header has exited. A stopped server does
    not wait for it (it runs in a session of its own and finishes the log alone). One file
    needs only ``routes.wait_until_complete`` (its lock); a rotating log has no one file
    whose lock covers the parts still to come."""
    import psutil

    pid = routes.read_header(log)["writer_pid"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"the writer of {log} still runs after {timeout} s"
        time.sleep(0.05)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def log_lines(path: Path) -> list[dict]:
    """The complete lines of a log that may still be written."""
    with open(path, "rb") as f:
        return [json.loads(line) for line in f if line.endswith(b"\n")]


def wait_for_route_lines(server: Server, expected: int, timeout: float = 120) -> list[dict]:
    """The log's lines once its writer has written ``expected`` route lines."""
    deadline = time.time() + timeout
    while True:
        lines = log_lines(server.log)
        got = sum(r["type"] == "route" for r in lines)
        if got >= expected or time.time() > deadline:
            assert got == expected, f"{got} route lines, expected {expected}"
            return lines
        time.sleep(0.2)


def expert_counts(lines: list[dict], num_layers: int, num_experts: int) -> list[list[int]]:
    """Per layer and expert, how many route lines chose it."""
    counts = np.zeros((num_layers, num_experts), dtype=np.int64)
    for r in lines:
        if r["type"] == "route":
            np.add.at(counts[r["layer"]], r["experts"], 1)
    return counts.tolist()


def logged_sequences(lines: list[dict], layer: int = 0) -> dict[str, tuple[list[int], list[int]]]:
    """Per logged request: its positions and its input token ids, in position order."""
    seen: dict[str, list[tuple[int, int]]] = {}
    for r in lines:
        if r["type"] == "route" and r["layer"] == layer:
            seen.setdefault(r["req_id"], []).append((r["pos"], r["tok"]))
    return {
        req: ([p for p, _ in sorted(items)], [t for _, t in sorted(items)])
        for req, items in seen.items()
    }


def match_requests(lines: list[dict], outputs: list[tuple[list[int], list[int]]]) -> dict:
    """Logged request id -> (prompt ids, output ids) of the response it is, by token ids.

    Every token that went through the model is logged once with its input token id:
    the prompt and every output token but the last, at positions 0, 1, ...
    """
    wanted = Counter(tuple(p + o[:-1]) for p, o in outputs)
    by_sequence = {tuple(p + o[:-1]): (p, o) for p, o in outputs}
    matched = {}
    for req, (positions, toks) in logged_sequences(lines).items():
        assert positions == list(range(len(positions))), f"{req}: positions {positions[:5]}..."
        key = tuple(toks)
        assert wanted[key] > 0, f"{req}: its token ids match no response"
        wanted[key] -= 1
        matched[req] = by_sequence[key]
    assert not +wanted, f"{sum(wanted.values())} responses have no route lines"
    return matched
