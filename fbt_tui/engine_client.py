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
from typing import IO, Any, Callable

from fbt_engine.events import decode

from .run_state import RunState

ENGINE_ENV = "FBT_ENGINE"
# A `started` event carries the whole resolved config; asyncio's 64 KiB default line limit is
# too tight for that, so allow generous lines.
LINE_LIMIT = 8 * 1024 * 1024
TAIL_POLL_S = 0.25
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
            message = f"the engine exited with code {returncode} and printed nothing"
    return EngineError(message, hint, returncode)


async def run_json(args: list[str], cwd: str | Path | None = None) -> Any:
    """Run `<engine> ARGS` and return its stdout parsed as JSON; raise EngineError on failure.

    Cancelling the awaiting task kills the child, so a superseded preview never lingers.
    """
    argv = engine_command() + list(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=cwd)
    except FileNotFoundError:
        raise EngineError(f"the engine command {argv[0]!r} was not found",
                          f"install fbt-workbench or set {ENGINE_ENV} to the engine command") from None
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        _kill_quietly(proc)
        raise
    if proc.returncode != 0:
        raise parse_error(err.decode("utf-8", "replace"), proc.returncode)
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
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


async def _stream(pipe: IO[bytes]) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """An asyncio reader over a Popen pipe (closing the transport closes only the pipe)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader, transport


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
            await asyncio.gather(self._pump_stdout(out), self._pump_stderr(err))
            self.returncode = await self._wait_exit()
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
        async for raw in reader:
            item = decode(raw.decode("utf-8", "replace"))
            if item is not None:
                self.state.apply(item)

    async def _pump_stderr(self, reader: asyncio.StreamReader) -> None:
        async for raw in reader:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stderr_tail.append(line)
            self.state.note_log(line)

    # --- attaching ------------------------------------------------------------------------
    async def tail(self, events_path: str | Path, pid: int | None) -> None:
        """Follow a run folder's events.jsonl until a final event, or until its process is gone."""
        self.attached_pid = pid
        path = Path(events_path)
        pos, partial = 0, ""
        while True:
            pos, partial, got = self._read_new(path, pos, partial)
            if self.state.final:
                break
            if not got and not pid_alive(pid):
                self.state.mark_crashed("the run's process is gone and it wrote no final event")
                break
            await asyncio.sleep(TAIL_POLL_S)
        self._end()

    def _read_new(self, path: Path, pos: int, partial: str) -> tuple[int, str, bool]:
        """Read complete new lines from `pos`; keep a torn last line for the next poll."""
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
        except FileNotFoundError:
            return pos, partial, False
        text = partial + chunk
        lines = text.split("\n")
        for line in lines[:-1]:
            item = decode(line)
            if item is not None:
                self.state.apply(item)
        return pos, lines[-1], bool(chunk)

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
