"""The TUI's warm engine: one `fbt-engine serve` child per session, asked with asyncio (no torch here).

`EngineService.start()` spawns it in the background when the app starts (it imports torch and timm
while the user looks at the catalog); every question afterwards is one JSON line with an id, and
the answer is matched by that id (protocol: `fbt_engine.protocol`, docs/protocol.md).

- Supersede: `fuse`/`summary` share the "preview" group; sending one makes the older pending one
  raise `Superseded` at once (and the service drops it if it is still waiting).
- Cancel: cancelling the awaiting task sends `cancel` for its id, so no work is wasted on it.
- Crash: if the child dies, every pending request raises `ServiceError` (kind `engine_exited`)
  with the exit code and the last line of its stderr; the next request starts a new child,
  unless it died `MAX_RESTARTS` times within `RESTART_WINDOW_S` (then the error says so).
- Shutdown: `close()` cancels what is pending and closes the child's stdin (it exits at EOF);
  a child still there after `CLOSE_WAIT_S` is terminated, then killed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from pathlib import Path
from typing import Any

from fbt_engine import protocol as P

from .engine_client import ENGINE_ENV, EngineError, engine_command, read_lines

PREVIEW = "preview"
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0
CLOSE_WAIT_S = 3.0


class ServiceError(EngineError):
    """A request failed: `kind` is the protocol's error kind (or `engine_exited`, `engine_not_found`)."""

    def __init__(self, message: str, hint: str = "", kind: str = "crash") -> None:
        super().__init__(message, hint)
        self.kind = kind


class Superseded(ServiceError):
    """A newer request of the same group replaced this one: nothing to show, nothing went wrong."""


class EngineService:
    """One warm engine child; `await service.fuse(...)` and friends return the plain JSON result."""

    def __init__(self, command: list[str] | None = None, cwd: str | Path | None = None) -> None:
        self.command = command
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: P.Ready | None = None
        self.stderr_tail: deque[str] = deque(maxlen=50)
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[Any]] = {}
        self._groups: dict[str, int | str] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._crashes: deque[float] = deque(maxlen=MAX_RESTARTS)
        self._start_lock = asyncio.Lock()
        self._closing = False

    # --- life cycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start the child unless it runs (idempotent; called at app start and before each request)."""
        async with self._start_lock:
            if self.running:
                return
            if self._closing:
                raise ServiceError("the engine service is shut down", "restart fbt-tui", "engine_exited")
            if len(self._crashes) == MAX_RESTARTS and time.monotonic() - self._crashes[0] < RESTART_WINDOW_S:
                raise ServiceError(f"the engine service stopped {MAX_RESTARTS} times within {RESTART_WINDOW_S:.0f} s"
                                   + self._last_words(), "run `fbt-engine serve` in a shell to see why; "
                                   "it is tried again in a minute", "engine_exited")
            argv = (self.command or engine_command()) + ["serve"]
            try:
                # Its own session: Ctrl+C in the terminal is the TUI's, never the engine's.
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, cwd=self.cwd, start_new_session=True)
            except OSError as exc:  # the words of engine_client.run_json, so both read the same
                what = "was not found" if isinstance(exc, FileNotFoundError) else f"cannot be started: {exc.strerror or exc}"
                raise ServiceError(f"the engine command {argv[0]!r} {what}",
                                   f"install fbt-workbench or set {ENGINE_ENV} to the engine command",
                                   "engine_not_found") from None
            self.ready = None
            proc = self.proc
            self._tasks = [asyncio.ensure_future(self._pump_stdout(proc)),
                           asyncio.ensure_future(self._pump_stderr(proc)),
                           asyncio.ensure_future(self._watch(proc))]

    async def close(self) -> None:
        """End the child: cancel what is pending, then EOF (it exits cleanly), then SIGTERM, then SIGKILL."""
        self._closing = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            for rid in list(self._pending):
                self._send_cancel(rid)
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                await asyncio.wait_for(proc.wait(), CLOSE_WAIT_S)
            except (TimeoutError, OSError):
                for stop in (proc.terminate, proc.kill):
                    try:
                        stop()
                        await asyncio.wait_for(proc.wait(), CLOSE_WAIT_S)
                        break
                    except (TimeoutError, ProcessLookupError):
                        continue
        self._fail_pending(ServiceError("the engine service was shut down", "", "cancelled"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # --- requests -------------------------------------------------------------------------
    async def request(self, req: P.Request, group: str | None = None) -> Any:
        """Send a request and wait for its result (plain JSON). Raises ServiceError (or Superseded)."""
        await self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[req.id] = future
        if group is not None:
            older = self._groups.get(group)
            self._groups[group] = req.id
            if older is not None and older in self._pending:
                self._resolve(older, Superseded(f"request {older!r} was superseded by request {req.id!r}",
                                                "only the newest preview request is answered", "superseded"))
        try:
            self._write(P.encode_request(req))
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(req.id, None) is not None:
                self._send_cancel(req.id)
            raise
        finally:
            self._pending.pop(req.id, None)
            if group is not None and self._groups.get(group) == req.id:
                del self._groups[group]

    def next_id(self) -> int:
        return next(self._ids)

    async def fuse(self, teacher: str, student: str, **fields: Any) -> dict[str, Any]:
        """The `fuse --json` object of a pair (fields: img_size, order, split, depth, ...); a newer
        preview request supersedes this one."""
        return await self.request(P.FuseRequest(id=self.next_id(), teacher=teacher, student=student, **fields),
                                  group=PREVIEW)

    async def summary(self, teacher: str, student: str, **fields: Any) -> dict[str, Any]:
        """Only the torchinfo tree at `depth` (answered without a rebuild when the pair is warm)."""
        return await self.request(P.SummaryRequest(id=self.next_id(), teacher=teacher, student=student, **fields),
                                  group=PREVIEW)

    async def models(self, **fields: Any) -> list[dict[str, Any]]:
        """The catalog, as `fbt-engine models --json` (fields: filter, kind, fusable, counts)."""
        return await self.request(P.ModelsRequest(id=self.next_id(), **fields))

    async def validate(self, preset: str, overrides: list[str] | None = None, quick: bool = False) -> dict[str, Any]:
        """Check a preset like `fbt-engine validate`; a bad preset raises ServiceError (sentence + hint)."""
        return await self.request(P.ValidateRequest(id=self.next_id(), preset=preset, set=list(overrides or []),
                                                    quick=quick))

    def _write(self, line: str) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None or proc.stdin.is_closing():
            raise ServiceError("the engine service is not running" + self._last_words(),
                               "it is restarted at the next request", "engine_exited")
        proc.stdin.write(line.encode("utf-8"))

    def _send_cancel(self, target: int | str) -> None:
        try:
            self._write(P.encode_request(P.CancelRequest(id=self.next_id(), target=target)))
        except (ServiceError, OSError):
            pass  # gone anyway

    # --- answers --------------------------------------------------------------------------
    def _resolve(self, rid: int | str | None, outcome: Any) -> None:
        future = self._pending.pop(rid, None) if rid is not None else None
        if future is None or future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _fail_pending(self, error: ServiceError) -> None:
        for rid in list(self._pending):
            self._resolve(rid, error)

    async def _pump_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for lines in read_lines(proc.stdout):
            for raw in lines:
                answer = P.parse_answer(raw)
                if isinstance(answer, P.Ready):
                    self.ready = answer
                elif isinstance(answer, P.Response):
                    self._resolve(answer.id, answer.result)
                elif isinstance(answer, P.ErrorResponse):
                    e = answer.error
                    cls = Superseded if e.kind == "superseded" else ServiceError
                    self._resolve(answer.id, cls(e.message, e.hint, e.kind))
                else:
                    self.stderr_tail.append(raw.decode("utf-8", "replace"))

    async def _pump_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for lines in read_lines(proc.stderr, 64 * 1024):
            self.stderr_tail.extend(raw.decode("utf-8", "replace").rstrip() for raw in lines)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        await asyncio.sleep(0.05)  # let the pumps read what it said last
        if self._closing:
            return
        self._crashes.append(time.monotonic())
        self._fail_pending(ServiceError(f"the engine service stopped (exit code {code})" + self._last_words(),
                                        "it is restarted at the next request; if this repeats, run "
                                        "`fbt-engine serve` in a shell to see why", "engine_exited"))

    def _last_words(self) -> str:
        lines = [ln for ln in self.stderr_tail if ln.strip()]
        return f": {lines[-1].strip()}" if lines else ""
