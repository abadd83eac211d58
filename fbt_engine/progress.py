"""Headless progress for people, on stderr: a rich progress bar on a terminal, plain lines otherwise.

It listens to the same events the JSONL stream carries (one emitter, many listeners); plain
lines also go to the run's log.txt.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from .events import Event


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class Reporter:
    def __init__(self, run: str, log: IO[str] | None = None, stream: IO[str] | None = None,
                 quiet: bool = False) -> None:
        self.run, self.log = run, log
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() and not quiet
        self.progress = None
        self.task = None
        self.detached = quiet  # non-zero ranks under torchrun say nothing
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
            self.console = Console(file=self.stream)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                                     transient=False)

    def _write_log(self, text: str) -> None:
        """Append to log.txt; a full disk turns the log off rather than stopping the run."""
        if self.log is None:
            return
        try:
            self.log.write(text)
            self.log.flush()
        except (OSError, ValueError):
            self.log = None

    def _line(self, text: str) -> None:
        self._write_log(text + "\n")
        if self.detached:
            return
        progress = self.progress  # a SIGHUP handler may detach it meanwhile
        try:
            if progress is not None:
                progress.console.print(text, markup=False, highlight=False)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.detach()  # stderr is gone (closed terminal, dead reader): keep training, keep the log

    def detach(self) -> None:
        """Stop writing to the terminal; log.txt keeps the lines."""
        self.detached = True
        if self.progress is not None:
            try:
                self.progress.stop()
            except (OSError, ValueError):
                pass
            self.progress = None

    def note(self, text: str) -> None:
        self._line(f"[{self.run}] {text}")

    def on_event(self, e: Event) -> None:
        handler = getattr(self, f"_on_{e.type}", None)
        if handler is not None:
            handler(e)

    def _on_started(self, e: Event) -> None:
        d = e.get("dataset", {})
        self.note(f"{e.get('method')} {e.get('teacher') or '-'} -> {e.get('student')} on {d.get('name')} "
                  f"({d.get('train')} train / {d.get('val')} val), device {e.get('device')}, "
                  f"params {e.get('params')}")

    def _on_phase(self, e: Event) -> None:
        total = e.get("epochs", 0) * e.get("steps_per_epoch", 0)
        self.note(f"phase {e.get('phase')}: {e.get('epochs')} epochs x {e.get('steps_per_epoch')} steps")
        if self.progress is not None:
            if self.task is not None:
                self.progress.stop_task(self.task)
            self.progress.start()
            self.task = self.progress.add_task(e.get("phase"), total=total, info="")

    def _on_step(self, e: Event) -> None:
        info = (f"epoch {e.get('epoch')} loss {e.get('loss', 0):.4f} lr {e.get('lr', 0):.2e} "
                f"{e.get('samples_per_s', 0):.0f} img/s")
        progress = self.progress
        if progress is not None and self.task is not None and not self.detached:
            done = (e.get("epoch", 1) - 1) * e.get("steps_per_epoch", 0) + e.get("epoch_step", 0)
            progress.update(self.task, completed=done, info=info)
            self._write_log(f"[{self.run}] {e.get('phase')} step {e.get('step')} {info}\n")
            return
        self._line(f"[{self.run}] {e.get('phase')} step {e.get('step')} ({e.get('epoch_step')}/"
                   f"{e.get('steps_per_epoch')}) {info} eta {_eta(e.get('eta_s', 0))}")

    def _on_eval(self, e: Event) -> None:
        if e.get("phase") == "teacher":
            self.note(f"teacher epoch {e.get('epoch')}: top-1 {_pct(e.get('teacher_top1'))}")
            return
        self.note(f"epoch {e.get('epoch')}: student top-1 {_pct(e.get('student_top1'))} top-5 "
                  f"{_pct(e.get('student_top5'))} | fused {_pct(e.get('fused_top1'))} | teacher "
                  f"{_pct(e.get('teacher_top1'))}" + (f" | ema {_pct(e.get('ema_top1'))}" if e.get("ema_top1") is not None else ""))

    def _on_warning(self, e: Event) -> None:
        where = f"step {e.get('step')}" if e.get("step") is not None else f"epoch {e.get('epoch')}"
        self.note(f"warning ({e.get('phase')} {where}): {e.get('message')}; hint: {e.get('hint')}")

    def _on_failed(self, e: Event) -> None:
        self.close()
        self._line(f"error: {e.get('message')}")
        if e.get("hint"):
            self._line(f"hint: {e.get('hint')}")

    def _on_finished(self, e: Event) -> None:
        self.close()
        self.note(f"finished ({e.get('reason')}) in {_eta(e.get('duration_s', 0))}"
                  + (f"; student weights: {e.get('student_path')}" if e.get("student_path") else ""))

    def final_table(self, best: dict[str, Any], last: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table
        table = Table(title=f"{self.run}: top-1 accuracy (%)")
        table.add_column("model")
        table.add_column(f"best (epoch {best.get('epoch')})", justify="right")
        table.add_column(f"last (epoch {last.get('epoch')})", justify="right")
        rows = [("teacher", "teacher_top1"), ("fused", "fused_top1"), ("student", "student_top1"),
                ("student top-5", "student_top5"), ("student EMA", "ema_top1")]
        for label, key in rows:
            if best.get(key) is not None or last.get(key) is not None:
                table.add_row(label, _pct(best.get(key)), _pct(last.get(key)))
        if not self.detached:
            try:
                Console(file=self.stream, width=100).print(table)
            except (BrokenPipeError, OSError, ValueError):
                self.detach()
        if self.log is not None:
            import io
            buf = io.StringIO()
            Console(file=buf, width=100).print(table)
            self._write_log(buf.getvalue())

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
