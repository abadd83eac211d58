"""The event protocol between the engine and its readers (stdlib only).

JSON Lines, one object per line, UTF-8. Every object carries `v` (protocol version), `type`,
`run` (run name) and `t` (seconds since the run started). Readers ignore unknown types and
fields; a line that does not parse is returned as `LogLine` so it can be shown as log text.
The same decoder reads a live stream and an `events.jsonl` file. The event types and their
fields are defined once, as dataclasses, in `fbt_engine.protocol` (re-exported here).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import FBTError
from .protocol import (EVENTS, PROTOCOL_VERSION, Checkpoint, Eval, EventBody, Failed, Finished, HealthWarning, Log,
                       Phase, Started, Step, _clean, event_body)

# The types this version emits (one dataclass each in protocol.py). Readers must tolerate others.
STARTED = Started.TYPE
STEP = Step.TYPE
EVAL = Eval.TYPE
CHECKPOINT = Checkpoint.TYPE
FINISHED = Finished.TYPE
FAILED = Failed.TYPE
LOG = Log.TYPE
WARNING = HealthWarning.TYPE  # a health check tripped (health.py); the run goes on
PHASE = Phase.TYPE  # e.g. teacher training starts / distillation starts
EVENT_TYPES = tuple(EVENTS)


@dataclass(frozen=True)
class Event:
    """One decoded event. `data` holds every field except the four common ones."""

    type: str
    run: str
    t: float
    data: dict[str, Any] = field(default_factory=dict)
    v: int = PROTOCOL_VERSION

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "type": self.type, "run": self.run, "t": self.t, **self.data}

    def typed(self) -> EventBody | None:
        """The event's fields as its protocol dataclass (None for a type this version does not know)."""
        return event_body(self.type, self.data)


@dataclass(frozen=True)
class LogLine:
    """A line that is not a protocol event (stray print, warning, partial write)."""

    text: str


def encode(event: Event) -> str:
    """One event as one JSON line (with the trailing newline)."""
    return json.dumps(_clean(event.to_dict()), separators=(",", ":"), default=str) + "\n"


def decode(line: str) -> Event | LogLine | None:
    """Decode one line. Blank lines give None; non-protocol lines give LogLine."""
    text = line.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: a line of thousands of nested brackets
        return LogLine(line.rstrip("\n"))
    if not isinstance(obj, dict) or "type" not in obj:
        return LogLine(line.rstrip("\n"))
    data = {k: v for k, v in obj.items() if k not in ("v", "type", "run", "t")}
    try:
        t = float(obj.get("t", 0.0))
    except (TypeError, ValueError):
        t = 0.0
    return Event(type=str(obj["type"]), run=str(obj.get("run", "")), t=t, data=data,
                 v=int(obj.get("v", PROTOCOL_VERSION)) if str(obj.get("v", "")).isdigit() else PROTOCOL_VERSION)


def iter_events(lines: Iterable[str]) -> Iterator[Event | LogLine]:
    for line in lines:
        item = decode(line)
        if item is not None:
            yield item


def read_events(path: str | Path) -> list[Event | LogLine]:
    """Read a whole events.jsonl (a torn last line becomes a LogLine, never an exception).

    A file that cannot be read at all (a directory, no permission) is an FBTError naming it.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return list(iter_events(fh))
    except OSError as exc:
        raise FBTError(f"events file {str(path)!r} cannot be read: {exc.strerror or exc}",
                       "it must be the run's events.jsonl text file; move whatever is there out of the way") from None


def _open_append(path: str | Path) -> IO[str]:
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise FBTError(f"events file {str(path)!r} cannot be written: {exc.strerror or exc}",
                       "it must be a writable text file in the run folder; move whatever is there out of the way") from None


class Emitter:
    """The one place events are written: to the run's events.jsonl and optionally to a stream.

    Each event is flushed at once so a reader tailing the file or the pipe sees it live.
    """

    def __init__(self, run: str, path: str | Path | None = None, stream: IO[str] | None = None,
                 enabled: bool = True, listeners: list[Any] | None = None, t_offset: float = 0.0) -> None:
        self.run = run
        self.listeners = listeners if enabled and listeners else []  # callables taking an Event
        self.t0 = time.monotonic() - t_offset  # a resumed run continues its clock
        self.enabled = enabled
        self._path = Path(path) if path is not None else None
        self._file = _open_append(path) if (path is not None and enabled) else None
        self._lost = False  # a write failed (disk full); retried at the next event that is not a step
        self._stream = stream if enabled else None

    def send(self, body: EventBody) -> Event:
        """Emit a typed event (its dataclass fields become the event's fields)."""
        # dataclasses.fields, not __dataclass_fields__: the latter also lists ClassVars (TYPE)
        return self.emit(body.TYPE, **{f.name: getattr(body, f.name) for f in fields(body)})

    def emit(self, type: str, **data: Any) -> Event:
        event = Event(type=type, run=self.run, t=round(time.monotonic() - self.t0, 4), data=data)
        line = encode(event)
        if self._lost and type != STEP:
            self._reopen()
        if self._file is not None:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError:  # disk full: keep running (the stream still carries events), retry later
                self._drop_file()
        stream = self._stream  # a signal handler may detach it between the two calls
        if stream is not None:
            try:
                stream.write(line)
                stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._stream = None  # the reader went away: the run goes on, events.jsonl has everything
        for listener in self.listeners:
            listener(event)
        return event

    def _drop_file(self) -> None:
        try:
            self._file.close()  # its unflushed buffer may fail again: that is the same lost line
        except OSError:
            pass
        self._file = None
        if not self._lost:
            sys.stderr.write("warning: events.jsonl could not be written (disk full?); the stream still has every "
                             "event, and the file is retried at the next checkpoint, eval or end\n")
        self._lost = True

    def _reopen(self) -> None:
        """Append again after a failed write, starting on a fresh line (the failed one may be torn)."""
        try:
            with open(self._path, "rb") as raw:
                size = raw.seek(0, 2)  # end of file
                torn = size > 0 and raw.seek(size - 1) >= 0 and raw.read(1) != b"\n"
            fh = open(self._path, "a", encoding="utf-8")
            if torn:
                fh.write("\n")
            self._file, self._lost = fh, False
        except OSError:
            self._file = None

    def detach_stream(self) -> None:
        """Stop writing to the stream (its terminal closed); the file keeps every event."""
        self._stream = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
