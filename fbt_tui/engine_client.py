"""Talking to the engine through a process boundary: one-shot JSON commands, runs, and tails.

The TUI never imports torch or timm. Everything heavy happens in `fbt-engine` child processes;
this module spawns them with asyncio (so no keypress ever waits on them), decodes their output
with `fbt_engine.events` and feeds a `RunState`. It posts no per-event messages: the run screen
redraws from the state on a timer, which is what keeps a 50 events/s stream cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable

from fbt_engine.events import decode

from .run_state import RunState

ENGINE_ENV = "FBT_ENGINE"
# A `started` event carries the whole resolved config, so lines may be long; a line longer than
# this is cut (what is kept shows as log text) rather than ending the stream.
LINE_LIMIT = 8 * 1024 * 1024
READ_CHUNK = 64 * 1024
TAIL_POLL_S = 0.25
# After the child exits, how long its pipes may stay open (a grandchild holding them) before
# the TUI stops reading and reports the exit anyway.
DRAIN_GRACE_S = 2.0
# Reads the given fds until every one is at EOF (runs in its own process, stdlib only).
DRAIN = """import os, select, sys
fds = [int(a) for a in sys.argv[1:]]
while fds:
    for fd in select.select(fds, [], [])[0]:
        if not os.read(fd, 65536):
            fds.remove(fd)
"""


def engine_command() -> list[str]:
    """The engine command as argv: `$FBT_ENGINE` split like a shell would, else the `fbt-engine`
    installed beside this interpreter (works from an unactivated venv), else `fbt-engine` on PATH."""
    override = os.environ.get(ENGINE_ENV, "").strip()
    if override:
        return shlex.split(override)
    beside = Path(sys.executable).with_name("fbt-engine")
    return [str(beside)] if beside.is_file() else ["fbt-engine"]


class EngineError(Exception):
    """An engine command failed: `message` is its one sentence, `hint` what to do instead."""

    def __init__(self, message: str, hint: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.returncode = returncode


def parse_error(stderr: str, returncode: int | None = None) -> EngineError:
    """Turn an engine's stderr into a sentence and a hint; a traceback becomes its last line."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    message = next((ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")), "")
    hint = next((ln[len("hint:"):].strip() for ln in lines if ln.startswith("hint:")), "")
    if not message:
        if any(ln.startswith("Traceback") for ln in lines):
            # A bug in the engine: show the exception line, never the whole traceback.
            message = f"the engine crashed: {lines[-1].strip()}"
            hint = hint or "this is a bug in fbt-engine; run the same command in a shell for the traceback"
        elif lines:
            message = lines[-1].strip()
        else:
            from .run_state import describe_exit  # signals named, e.g. SIGKILL: possibly out of memory
            words = describe_exit(returncode) if returncode is not None else ""
            message = f"the engine exited with code {returncode} and printed nothing" + (f": {words}" if words else "")
    return EngineError(message, hint, returncode)


async def run_json(args: list[str], cwd: str | Path | None = None,
                   on_stderr_line: Callable[[str], None] | None = None) -> Any:
    """Run `<engine> ARGS` and return its stdout parsed as JSON; raise EngineError on failure.

    `on_stderr_line` receives each stderr line as it comes (e.g. the catalog's `counting i/n`).
    Cancelling the awaiting task kills the child, so a superseded preview never lingers.
    """
    argv = engine_command() + list(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=cwd, limit=1 << 20)
    except FileNotFoundError:
        raise EngineError(f"the engine command {argv[0]!r} was not found",
                          f"install fbt-workbench or set {ENGINE_ENV} to the engine command") from None
    err_lines: list[str] = []

    async def read_stderr() -> None:
        async for raw in proc.stderr:  # type: ignore[union-attr]
            err_lines.append(raw.decode("utf-8", "replace").rstrip())
            if on_stderr_line is not None:
                on_stderr_line(err_lines[-1])
    try:
        out, _ = await asyncio.gather(proc.stdout.read(), read_stderr())  # type: ignore[union-attr]
        await proc.wait()
    except asyncio.CancelledError:
        _kill_quietly(proc)
        raise
    if proc.returncode != 0:
        raise parse_error("\n".join(err_lines), proc.returncode)
    try:
        return json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        raise EngineError(f"`{' '.join(argv)}` did not print JSON",
                          "check that FBT_ENGINE points at fbt-engine") from None


def _kill_quietly(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (signal 0 probes without sending anything)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all (from a bad events file)
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


async def _stream(pipe: IO[bytes]) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """An asyncio reader over a Popen pipe (closing the transport closes only the pipe)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 * READ_CHUNK)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader, transport


class LineSplitter:
    """Bytes in, complete lines out; a line longer than `limit` is cut to its first `limit` bytes
    (the rest is skipped up to its newline), so no single line can grow memory without bound."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        lines = data.split(b"\n")
        out = []
        for piece in lines[:-1]:
            self._add(piece)
            out.append(b"".join(self._parts))
            self._parts, self._size, self._skipping = [], 0, False
        self._add(lines[-1])
        return out

    def rest(self) -> bytes:
        """The torn last line (no newline yet)."""
        return b"".join(self._parts)

    def _add(self, piece: bytes) -> None:
        if self._skipping or not piece:
            return
        room = self.limit - self._size
        if len(piece) > room:
            piece, self._skipping = piece[:room], True
        self._parts.append(piece)
        self._size += len(piece)


async def read_lines(reader: asyncio.StreamReader, limit: int = LINE_LIMIT) -> AsyncIterator[list[bytes]]:
    """Yield the complete lines of a stream in batches, then a torn last line at EOF (if any)."""
    splitter = LineSplitter(limit)
    while chunk := await reader.read(READ_CHUNK):
        lines = splitter.feed(chunk)
        if lines:
            yield lines
    if splitter.rest():
        yield [splitter.rest()]


class RunSession:
    """One run the TUI watches: a child it spawned, a run folder it tails, or a finished replay.

    `state` is updated in place as lines arrive; `on_end` is called once when the stream ends
    (the app turns that into a typed message).
    """

    def __init__(self, state: RunState, on_end: Callable[["RunSession"], None] | None = None) -> None:
        self.state = state
        self.on_end = on_end
        self.proc: subprocess.Popen[bytes] | None = None
        self.attached_pid: int | None = None
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self.returncode: int | None = None
        self.ended = False

    # --- what kind of session -------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True while a child or an attached run is still going."""
        return not self.ended and (self.proc is not None or self.attached_pid is not None)

    @property
    def owns_process(self) -> bool:
        return self.proc is not None

    # --- spawning -------------------------------------------------------------------------
    async def spawn(self, args: list[str], cwd: str | Path | None = None) -> None:
        """Start `<engine> ARGS` in its own session and pump its output until it exits.

        Popen plus asyncio pipe readers rather than asyncio's subprocess API: asyncio kills a
        still-running child when its transport closes (i.e. when the TUI exits), and a run the
        user chose to leave running must survive the TUI.
        """
        argv = engine_command() + list(args)
        self.state.note_log(f"$ {' '.join(argv)}")
        try:
            # A new session puts the child in its own process group: Ctrl+C in the terminal
            # does not reach it, stop/kill signal the whole group, and it outlives the TUI.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
        except OSError as exc:
            self.state.mark_crashed(f"could not start {argv[0]!r}: {exc.strerror or exc}",
                                    f"install fbt-workbench or set {ENGINE_ENV} to the engine command")
            self._end()
            return
        assert self.proc.stdout is not None and self.proc.stderr is not None
        transports = []
        try:
            out, t1 = await _stream(self.proc.stdout)
            err, t2 = await _stream(self.proc.stderr)
            transports = [t1, t2]
            pumps = [asyncio.ensure_future(self._pump_stdout(out)), asyncio.ensure_future(self._pump_stderr(err))]
            self.returncode = await self._wait_exit()
            # Read what is still in the pipes, but do not wait forever on a pipe that an orphaned
            # grandchild (a data-loader worker, a shell) keeps open after the engine died.
            _, pending = await asyncio.wait(pumps, timeout=DRAIN_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                self.state.note_log("stopped reading the engine's pipes: something it started still holds them")
            for task in pumps:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self.state.note_log(f"lost part of the engine's output: {task.exception()!r}")
        finally:
            for transport in transports:
                transport.close()
        self.state.process_exited(self.returncode, list(self.stderr_tail))
        self._end()

    async def _wait_exit(self) -> int:
        # Poll rather than block a thread in wait(): a blocked thread would hold up the TUI's
        # exit if the user leaves the run going.
        assert self.proc is not None
        while (rc := self.proc.poll()) is None:
            await asyncio.sleep(0.05)
        return rc

    async def _pump_stdout(self, reader: asyncio.StreamReader) -> None:
        async for lines in read_lines(reader):
            for raw in lines:
                item = decode(raw.decode("utf-8", "replace"))
                if item is not None:
                    self.state.apply(item)
            await asyncio.sleep(0)  # a flood must leave the UI its turns

    async def _pump_stderr(self, reader: asyncio.StreamReader) -> None:
        async for lines in read_lines(reader, LINE_LIMIT // 8):
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                self.stderr_tail.append(line)
                self.state.note_log(line)
            await asyncio.sleep(0)

    # --- attaching ------------------------------------------------------------------------
    async def tail(self, events_path: str | Path, pid: int | None) -> None:
        """Follow a run folder's events.jsonl until a final event, or until its process is gone.

        A folder deleted underneath is reported as "lost" (the run may still be going), never
        mistaken for a crash and never followed forever.
        """
        self.attached_pid = pid
        path = Path(events_path)
        pos, splitter, seen = 0, LineSplitter(), False
        while True:
            if not path.parent.is_dir() or (seen and not path.is_file()):
                self.state.mark_lost(f"the run folder {path.parent} was deleted while it was being watched",
                                     "nothing more can be shown; press 5 for the runs that are still there")
                break
            pos, got = self._read_new(path, pos, splitter)
            seen = seen or path.is_file()
            if self.state.final:
                break
            if not got and not pid_alive(pid):
                self.state.mark_crashed("the run's process is gone and it wrote no final event")
                break
            await asyncio.sleep(TAIL_POLL_S)
        self._end()

    def _read_new(self, path: Path, pos: int, splitter: LineSplitter) -> tuple[int, bool]:
        """Fold the complete new lines after byte `pos`; a torn last line waits for the next poll."""
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < pos:
                    self.state.note_log(f"{path.name} shrank: following it from its new end")
                    pos = fh.seek(0, os.SEEK_END)
                fh.seek(pos)
                chunk = fh.read()
        except OSError:
            return pos, False
        for raw in splitter.feed(chunk):
            item = decode(raw.decode("utf-8", "replace"))
            if item is not None:
                self.state.apply(item)
        return pos + len(chunk), bool(chunk)

    def detach(self) -> None:
        """Let the child outlive the TUI: hand our ends of its pipes to a tiny drain process.

        Without a reader, the engine's next write to stdout/stderr would fail with a broken pipe
        and end the run; the drainer keeps the pipes open and discards what arrives (the engine
        writes everything that matters to the run folder anyway).
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        assert self.proc.stdout is not None and self.proc.stderr is not None
        fds = (self.proc.stdout.fileno(), self.proc.stderr.fileno())
        subprocess.Popen([sys.executable, "-c", DRAIN, *map(str, fds)], pass_fds=fds,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)

    # --- control --------------------------------------------------------------------------
    def stop(self) -> bool:
        """Ask for a graceful stop (SIGINT: finish the step, checkpoint, emit `finished`)."""
        return self._signal(signal.SIGINT)

    def kill(self) -> bool:
        """Kill at once (SIGKILL to the whole process group): no checkpoint, no final event."""
        return self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> bool:
        if not self.live:
            return False
        try:
            if self.proc is not None:
                os.killpg(self.proc.pid, sig)
            elif self.attached_pid:
                os.kill(self.attached_pid, sig)  # not our child: signal just that process
        except ProcessLookupError:
            return False
        self.state.note_log(f"sent {signal.Signals(sig).name}")
        return True

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.on_end is not None:
            self.on_end(self)
