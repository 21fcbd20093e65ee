"""The writer process (frames on stdin -> JSONL on disk) and the engine's handle to it.

``WriterProcess`` starts ``python -c BOOTSTRAP <package parent> <log> <bytes> <max
bytes> <keep> <encoders>``:
the child imports only this package's pure modules and numpy, never vLLM or
torch. It runs in its own session, so a Ctrl-C aimed at the engine does not cut
a line in half, and forks once more to leave the engine's process tree, which
vLLM SIGKILLs when an engine is slow to shut down. It ends when the engine
closes the pipe (cleanly, or by dying), after writing everything it received.

In the child, a reader thread moves frames from the pipe into a queue bounded
in bytes; when the queue is full it stops reading, the pipe fills and the
engine waits: data is never dropped. The main thread has the passes encoded
(``encoders.py``: here, or in a pool of encoder processes) and writes, in the
order they came: route lines of the sampled requests (the header's ``sample``;
all by default), each pass's ``request`` lines, and LINE frames. Each log file is held
under an exclusive ``flock`` until its last byte is written, so a reader can
wait for a complete file by taking a shared lock. With a size limit the log
rotates into parts, each complete on its own (``_LogFiles``).

Status bytes on the child's stdout: READY and its pid once the log is open and
locked; FAILED after an I/O error that it has reported once on stderr (the
engine then stops logging without a second message).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import select
import subprocess
import sys
import threading

from . import log_format, naming, wire
from .encoders import EncoderPool

READY = b"R"
FAILED = b"F"
BOOTSTRAP = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from moe_route_log.writer import main; sys.exit(main(sys.argv[2:]))"
)
_START_TIMEOUT_S = 60.0


class WriterStartError(RuntimeError):
    """The writer process could not open the log (it printed why)."""


class WriterProcess:
    """The engine's handle: start the writer, send it frames, close its pipe."""

    def __init__(
        self,
        path: str,
        buffer_bytes: int,
        max_bytes: int | None = None,
        keep: int | None = None,
        encoders: int = 1,
    ) -> None:
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.path = path
        args = [
            path,
            str(buffer_bytes),
            str(max_bytes) if max_bytes else "-",
            str(keep) if keep else "-",
            str(encoders),
        ]
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, package_parent, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        proc.wait()  # the first child exits at once; its own child does the work
        self._stdin, self._stdout = proc.stdin, proc.stdout
        status = self._read_status(_START_TIMEOUT_S)
        if not status.startswith(READY):
            raise WriterStartError(
                f"VLLM_LOG_MOE: the route-log writer for {path} did not start "
                "(see its message above)"
            )
        self.pid = int(status[len(READY) :])

    def send(self, buffers: list) -> None:
        """Write one frame; raises OSError (BrokenPipeError) once the writer is gone."""
        wire.write_frame(self._stdin.fileno(), buffers)

    def close(self) -> None:
        """End of stream: the writer finishes on its own and exits."""
        with contextlib.suppress(OSError):
            self._stdin.close()

    def reported_failure(self, timeout: float = 5.0) -> bool:
        """Did the writer stop on an I/O error that it has already reported?"""
        return self._read_status(timeout) == FAILED

    def _read_status(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self._stdout], [], [], timeout)
        return os.read(self._stdout.fileno(), 64).strip() if ready else b""


class _BoundedQueue:
    """A FIFO of (kind, payload) frames holding at most ``capacity`` payload bytes."""

    def __init__(self, capacity: int) -> None:
        self._frames: queue.SimpleQueue = queue.SimpleQueue()
        self._capacity = capacity
        self._held = 0
        self._cond = threading.Condition()
        self.peak = 0
        self.full_waits = 0

    def put(self, frame: tuple[int, bytes] | None) -> None:
        size = len(frame[1]) if frame else 0
        with self._cond:
            if self._held and self._held + size > self._capacity:
                self.full_waits += 1
            # A frame larger than the whole capacity still goes in, alone.
            self._cond.wait_for(lambda: not self._held or self._held + size <= self._capacity)
            self._held += size
            self.peak = max(self.peak, self._held)
        self._frames.put(frame)

    def get(self) -> tuple[int, bytes] | None:
        frame = self._frames.get()
        with self._cond:
            self._held -= len(frame[1]) if frame else 0
            self._cond.notify_all()
        return frame


def _pump(stream, frames: _BoundedQueue, errors: list[str]) -> None:
    try:
        while True:
            frame = wire.read_frame(stream)
            frames.put(frame)
            if frame is None or frame[0] == wire.CLOSE:
                return
    except (OSError, EOFError, ValueError) as e:  # the engine died inside a frame
        errors.append(str(e))
        frames.put(None)


def _say(message: str) -> None:
    print(f"VLLM_LOG_MOE: {message}", file=sys.stderr, flush=True)


class _LogFiles:
    """The file the writer appends to: ``path``, or rotating parts of it.

    Each file is held under an exclusive ``flock`` until its last byte. With
    ``max_bytes``, a part that reaches it gets a trailer and the next part a
    header of its own; only the newest ``keep`` parts stay on disk.
    """

    def __init__(self, path: str, max_bytes: int | None, keep: int | None) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.part = 0
        self.lines = self.tokens = 0  # in the current file
        self._file = self._open(self._name(0))

    def _name(self, part: int) -> str:
        return self.path if self.max_bytes is None else naming.part_path(self.path, part)

    @staticmethod
    def _open(name: str):
        log = open(name, "wb", buffering=0)  # noqa: SIM115 (closed in rotate/close)
        fcntl.flock(log, fcntl.LOCK_EX)
        return log

    @property
    def name(self) -> str:
        return self._name(self.part)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]

    def full(self) -> bool:
        return self.max_bytes is not None and self._file.tell() >= self.max_bytes

    def rotate(self, header: dict) -> None:
        """Close this part with a trailer; open the next one with ``header``."""
        self.write(
            log_format.trailer_line(
                log_format.rotated_trailer_fields(self.part, self.lines, self.tokens)
            )
        )
        self._file.close()
        self.part += 1
        self.lines = self.tokens = 0
        self._file = self._open(self.name)
        self.write(log_format.header_line({**header, "part": self.part, "log_path": self.name}))
        if self.keep is not None and self.part >= self.keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name(self.part - self.keep))

    def close(self) -> None:
        self._file.close()


def run(
    stream,
    path: str,
    buffer_bytes: int,
    on_ready=lambda: None,
    max_bytes: int | None = None,
    keep: int | None = None,
    encoders: int = 1,
) -> bool:
    """Copy frames from ``stream`` into the JSONL log at ``path``; False after an I/O error."""
    try:
        files = _LogFiles(path, max_bytes, keep)
    except OSError as e:
        _say(f"cannot open {path}: {e.strerror or e}")
        return False
    pool = EncoderPool(encoders)  # forked before any thread starts
    frames = _BoundedQueue(buffer_bytes)
    pump_errors: list[str] = []
    header: dict = {}
    previous_pass: set[str] = set()  # requests of the last written pass
    closed = False

    def write_passes(wait: bool) -> None:
        nonlocal previous_pass
        for encoded in pool.results(wait):
            if not encoded.lines:
                continue  # no request of this pass is sampled
            new = [i for i, req in enumerate(encoded.req_ids) if req not in previous_pass]
            files.write(
                log_format.request_lines(
                    encoded.step,
                    [encoded.req_ids[i] for i in new],
                    [encoded.prompt_lens[i] for i in new],
                )
                + encoded.data
            )
            previous_pass = set(encoded.req_ids)
            files.lines += encoded.lines
            files.tokens += encoded.tokens
            rotate_if_full()

    def rotate_if_full() -> None:
        nonlocal previous_pass
        if files.full():
            files.rotate(header)
            previous_pass = set()  # every part names its requests' prompt lengths

    on_ready()
    threading.Thread(target=_pump, args=(stream, frames, pump_errors), daemon=True).start()
    try:
        while (frame := frames.get()) is not None:
            kind, payload = frame
            if kind == wire.ROUTES:
                pool.submit(payload, header["layers"], header.get("sample", 1.0))
                write_passes(wait=False)
                continue
            write_passes(wait=True)  # every earlier pass goes first
            if kind == wire.HEADER:
                header = wire.decode_json(payload)
                if max_bytes is not None:
                    header.update(part=0, log_path=files.name)
                files.write(log_format.header_line(header))
            elif kind == wire.LINE:
                files.write(log_format.json_line(wire.decode_json(payload)))
                rotate_if_full()
            elif kind == wire.CLOSE:
                stats = log_format.trailer_fields(
                    wire.decode_json(payload),
                    lines=files.lines,
                    tokens=files.tokens,
                    buffer_peak_bytes=frames.peak,
                    buffer_full_waits=frames.full_waits,
                    encoders=encoders,
                    cpu_s=sum(os.times()[:2]),
                    part=files.part if max_bytes is not None else None,
                )
                files.write(log_format.trailer_line(stats))
                closed = True
                break
        if not closed:
            write_passes(wait=True)
    except OSError as e:
        _say(
            f"writing {files.name} failed ({e.strerror or e}); route logging stopped after "
            f"{files.lines} route lines in that file; generation carries on."
        )
        return False
    finally:
        pool.close()
        files.close()
    if not closed:
        why = f"its pipe broke ({pump_errors[0]})" if pump_errors else "it exited"
        _say(
            f"the engine went away ({why}); {files.name} has {files.lines} route lines "
            "and no trailer."
        )
    return True


def _unpin() -> None:
    """Run on any core, not the one the engine thread was pinned to (vLLM's CPU backend
    binds its threads to cores, and children inherit that: the writer then only gets
    the scraps of a core an OpenMP thread keeps busy, and falls behind)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def main(argv: list[str]) -> int:
    """Entry point of the writer process: ``<log> <buffer bytes> <max bytes> <keep> <encoders>``."""
    path, buffer_bytes = argv[0], int(argv[1])
    max_bytes = int(argv[2]) if argv[2] != "-" else None
    keep = int(argv[3]) if argv[3] != "-" else None
    encoders = int(argv[4])
    if os.fork():
        os._exit(0)  # the engine reaps this parent at once; the child works on
    _unpin()

    def ready() -> None:
        sys.stdout.buffer.write(READY + str(os.getpid()).encode() + b"\n")
        sys.stdout.buffer.flush()

    if run(sys.stdin.buffer, path, buffer_bytes, ready, max_bytes, keep, encoders):
        return 0
    with contextlib.suppress(OSError):
        sys.stdout.buffer.write(FAILED)
        sys.stdout.buffer.flush()
    return 1
