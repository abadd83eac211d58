"""`fbt-engine serve`: one warm engine per TUI session, speaking JSON lines on stdin/stdout.

Why it exists: every `fbt-engine fuse` process pays the torch+timm import (6-8 s on a busy laptop)
and builds both models again, even when only the summary depth changed. The service pays the
import once, keeps built models, remembers each answer by its full request (minus the depth),
re-prints torchinfo's statistics at another depth without a forward pass, and lets a newer preview
supersede an older one. The messages are the dataclasses of `fbt_engine.protocol`.

Threads: the main thread reads requests; `cancel` is answered at once; everything else goes to one
of two lanes, each a worker thread with a queue. The preview lane (`fuse`, `summary`) keeps at most
the newest waiting request: older ones are answered `superseded`, and a running one that builds a
different pair stops at its next checkpoint. The general lane (`models`, `validate`) never holds
up a preview. stdout carries only protocol lines: anything else that prints goes to stderr.
EOF on stdin: the service answers what it was sent, then exits 0 (`printf ... | fbt-engine serve`
works; the TUI's client cancels what it no longer wants before it closes the pipe).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from . import protocol as P
from .errors import FBTError
from .warm import Job, Stop, Workbench

# --- lanes and the service -------------------------------------------------------------------------

class Lane:
    """A worker thread and its queue. A preview lane keeps only the newest waiting request."""

    def __init__(self, name: str, run: Callable[[Job], None], answer_stopped: Callable[[Job], None],
                 supersede: bool) -> None:
        self.name, self._run, self._answer_stopped, self.supersede = name, run, answer_stopped, supersede
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self.running: Job | None = None
        self._closed = False
        self.thread = threading.Thread(target=self._loop, name=f"fbt-serve-{name}", daemon=True)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self.supersede:
                for old in self._queue:
                    old.stop, old.by = "superseded", job.request.id
                    self._answer_stopped(old)
                self._queue.clear()
                run = self.running
                if run is not None and not _same_build(run.request, job.request):
                    run.stop, run.by = "superseded", job.request.id
            self._queue.append(job)
            self._cond.notify()

    def cancel(self, target: int | str) -> bool:
        with self._cond:
            for job in self._queue:
                if job.request.id == target:
                    self._queue.remove(job)
                    job.stop = "cancelled"
                    self._answer_stopped(job)
                    return True
            if self.running is not None and self.running.request.id == target and not self.running.stop:
                self.running.stop = "cancelled"
                return True
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def finish(self) -> None:
        """No more requests: the thread answers what waits, then ends."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self.running = self._queue.popleft()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self.running = None


def _same_build(a: P.Request, b: P.Request) -> bool:
    return isinstance(a, P.FuseRequest) and isinstance(b, P.FuseRequest) and a.build_key() == b.build_key()


class Service:
    """Reads requests from `inp`, answers on `out`. `run()` returns the exit code (0 at EOF)."""

    def __init__(self, inp: IO[bytes], out: IO[str], workbench: Workbench | None = None) -> None:
        self.inp, self.out = inp, out
        self.bench = workbench or Workbench()
        self._out_lock = threading.Lock()
        self._out_ok = True
        self._ready = threading.Event()
        self._warm_error: BaseException | None = None
        self.t0 = time.monotonic()
        handlers = {"models": self.bench.models_list, "validate": self.bench.validate,
                    "fuse": self.bench.fuse, "summary": self.bench.summary}
        self.handlers: dict[str, Callable[[Any, Job], Any]] = handlers
        self.lanes = {"preview": Lane("preview", self._execute, self._answer_stopped, supersede=True),
                      "general": Lane("general", self._execute, self._answer_stopped, supersede=False)}

    # --- output -----------------------------------------------------------------------------
    def send(self, message: P.Response | P.ErrorResponse | P.Ready) -> None:
        line = P.encode(message)
        with self._out_lock:
            if not self._out_ok:
                return
            try:
                self.out.write(line)
                self.out.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._out_ok = False  # the client is gone; EOF on stdin follows

    def fail(self, rid: int | str | None, kind: str, message: str, hint: str = "") -> None:
        self.send(P.ErrorResponse(id=rid, error=P.ErrorInfo(kind=kind, message=message, hint=hint)))

    def _answer_stopped(self, job: Job) -> None:
        r = job.request
        if job.stop == "superseded":
            self.fail(r.id, "superseded", f"request {r.id!r} ({r.OP}) was superseded by request {job.by!r}",
                      "only the newest preview request is answered")
        else:
            self.fail(r.id, "cancelled", f"request {r.id!r} ({r.OP}) was cancelled", "")

    # --- work -----------------------------------------------------------------------------
    def _warm(self) -> None:
        try:
            versions = self.bench.warm()
            self.send(P.Ready(pid=os.getpid(), warm_s=round(time.monotonic() - self.t0, 3), versions=versions,
                              ops=list(P.REQUESTS)))
        except BaseException as exc:  # noqa: BLE001 - every request that needs torch then answers this error
            self._warm_error = exc
            traceback.print_exc(file=sys.stderr)
        finally:
            self._ready.set()

    @staticmethod
    def needs_warm(req: P.Request) -> bool:
        """The catalog names and a quick validate need neither torch nor timm: they do not wait
        for the warm-up (the TUI's catalog fills while the service still imports torch)."""
        return not ((isinstance(req, P.ModelsRequest) and not req.counts)
                    or (isinstance(req, P.ValidateRequest) and req.quick))

    def _execute(self, job: Job) -> None:
        r = job.request
        if self.needs_warm(r):
            self._ready.wait()
        t0 = time.perf_counter()
        try:
            if self._warm_error is not None and self.needs_warm(r):
                raise self._warm_error
            job.check()
            result = self.handlers[r.OP](r, job)
        except Stop:
            self._answer_stopped(job)
        except FBTError as exc:
            self.fail(r.id, exc.kind, exc.message, exc.hint)
        except MemoryError:
            self.fail(r.id, "oom", f"out of memory answering request {r.id!r} ({r.OP})",
                      "use a smaller input size or smaller models")
        except Exception as exc:  # noqa: BLE001 - a bug: say so, and keep serving
            if "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
                self.fail(r.id, "oom", f"out of memory answering request {r.id!r} ({r.OP})",
                          "use a smaller input size or smaller models")
                return
            traceback.print_exc(file=sys.stderr)
            self.fail(r.id, "crash", f"{type(exc).__name__}: {exc}".splitlines()[0],
                      "this is a bug in fbt-engine (the traceback is on the service's stderr); the service goes on")
        else:
            self.send(P.Response(id=r.id, result=result, elapsed_s=round(time.perf_counter() - t0, 4)))

    # --- reading ----------------------------------------------------------------------------
    def handle(self, line: bytes) -> None:
        """One request line: answered at once (errors, cancel) or queued on its lane."""
        if not line.strip():
            return
        try:
            req = P.parse_request(line)
        except P.ProtocolError as exc:
            self.fail(exc.id, "bad_request", exc.message, exc.hint)
            return
        if isinstance(req, P.CancelRequest):
            done = any(lane.cancel(req.target) for lane in self.lanes.values())
            self.send(P.Response(id=req.id, result=P.CancelResult(target=req.target, cancelled=done)))
            return
        self.lanes[req.LANE].submit(Job(req))

    def _lines(self) -> Any:
        """Request lines; one longer than LINE_LIMIT is answered as an error and skipped."""
        while True:
            line = self.inp.readline(P.LINE_LIMIT + 1)
            if not line:
                return
            if len(line) > P.LINE_LIMIT and not line.endswith(b"\n"):
                while (rest := self.inp.readline(P.LINE_LIMIT)) and not rest.endswith(b"\n"):
                    pass
                self.fail(None, "bad_request", f"a request line is longer than {P.LINE_LIMIT} bytes",
                          "send one JSON object per line")
                continue
            yield line

    def run(self) -> int:
        threading.Thread(target=self._warm, name="fbt-serve-warm", daemon=True).start()
        for lane in self.lanes.values():
            lane.thread.start()
        try:
            for line in self._lines():
                self.handle(line)
        except KeyboardInterrupt:
            pass
        for lane in self.lanes.values():
            lane.finish()
        for lane in self.lanes.values():
            while lane.thread.is_alive():
                lane.thread.join(0.5)  # in slices: Ctrl-C still reaches the main thread
        return 0


def protocol_streams() -> tuple[IO[bytes], IO[str]]:
    """stdin for requests and a private copy of stdout for answers; fd 1 then points at stderr,
    so a stray print (ours, timm's, torch's) can never corrupt the protocol stream."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return sys.stdin.buffer, out


def serve() -> int:
    """Run the service on this process's stdin/stdout until EOF."""
    inp, out = protocol_streams()
    code = Service(inp, out).run()
    out.flush()
    return code
