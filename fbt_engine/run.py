"""A run from preset to finished student: run folder, phases (teacher, distill), resume, signals.

    runs/<name>/config.toml        the fully resolved preset (repeat the run exactly)
    runs/<name>/events.jsonl       every event (see events.py)
    runs/<name>/log.txt            human-readable progress and any traceback
    runs/<name>/checkpoints/       last.pt, best.pt (distill), teacher-last.pt (teacher phase)
    runs/<name>/student.safetensors, teacher.safetensors (when trained here)
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as C
from .errors import FBTError, TrainingError
from .events import Emitter


@dataclass
class StopSignal:
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. Second SIGINT: abort at once."""

    requested: bool = False
    on_request: Callable[[], None] | None = None
    _previous: dict[int, Any] = field(default_factory=dict)

    on_hangup: Callable[[], None] | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        if hasattr(signal, "SIGHUP"):  # the terminal closed: keep training, stop writing to it
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: self.on_hangup and self.on_hangup())

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.on_request:
            self.on_request()


def unique_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<name>, or <name>-2, -3 ... when taken (a run folder is never overwritten)."""
    path, n = runs_dir / name, 1
    while path.exists():
        n += 1
        path = runs_dir / f"{name}-{n}"
    return path


class Run:
    """Everything one `fbt-engine run`/`resume` process does."""

    def __init__(self, cfg: C.RunConfig, run_dir: Path, jsonl: bool, resume: dict[str, Any] | None = None,
                 stop_when: Callable[[Any], bool] | None = None) -> None:
        from .progress import Reporter
        self.cfg, self.dir, self.resume = cfg, run_dir, resume
        self.stop = StopSignal()
        self.stop_when = stop_when  # tests: stop as if signalled once this returns True for the loop
        self.started = time.monotonic() - (resume or {}).get("elapsed", 0.0)
        self.rt = self._runtime()
        is_main = self.rt.rank == 0
        self.log = open(run_dir / "log.txt", "a", encoding="utf-8") if is_main else None
        self.reporter = Reporter(cfg.name, log=self.log, quiet=not is_main)
        self.stop.on_request = lambda: self.reporter.note("stop requested: finishing this step and saving a "
                                                          "checkpoint (Ctrl-C again aborts at once)")
        self.stop.on_hangup = self._hangup
        self.emitter = Emitter(cfg.name, run_dir / "events.jsonl", sys.stdout if jsonl else None, enabled=is_main,
                               listeners=[self.reporter.on_event], t_offset=(resume or {}).get("elapsed", 0.0))

    def _hangup(self) -> None:
        self.reporter.detach()
        self.emitter.detach_stream()
        self.reporter.note("terminal closed (SIGHUP): training goes on; follow runs/<name>/log.txt")

    # --- setup ----------------------------------------------------------------------------
    def _runtime(self):
        import numpy as np
        import torch
        from .trainer import Runtime
        tc = self.cfg.train
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        rank = world = 0
        if distributed:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            rank, world = dist.get_rank(), dist.get_world_size()
        device = self._device(tc.device, int(os.environ.get("LOCAL_RANK", "0")))
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(self.cfg.seed + rank)
        random.seed(self.cfg.seed + rank)
        np.random.seed(self.cfg.seed + rank)
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        amp = {"auto": "bf16" if device.type == "cuda" else "off"}.get(tc.amp, tc.amp)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        cl = tc.channels_last == "on" or (tc.channels_last == "auto" and device.type == "cuda")
        return Runtime(device=device, amp_dtype=dtype, scaler=amp == "fp16", channels_last=cl,
                       distributed=distributed, rank=rank, world_size=max(world, 1))

    @staticmethod
    def _device(spec: str, local_rank: int):
        import torch
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        if spec.startswith("cuda"):
            if not torch.cuda.is_available():
                raise FBTError(f"device {spec!r} was asked for but no CUDA GPU is visible",
                               "set train.device = \"cpu\" (or \"auto\")")
            if spec == "cuda":
                spec = f"cuda:{local_rank}"
            torch.cuda.set_device(torch.device(spec))
        return torch.device(spec)

    def _stop_requested(self, loop: Any) -> bool:
        flag = self.stop.requested or (self.stop_when is not None and self.stop_when(loop))
        if self.rt.distributed:  # every rank must stop at the same step
            import torch
            import torch.distributed as dist
            t = torch.tensor([float(flag)], device=self.rt.device)
            dist.all_reduce(t)
            flag = bool(t.item() > 0)
        return flag

    # --- phases ---------------------------------------------------------------------------
    def execute(self) -> int:
        """Run to the end; returns the process exit code (0 done/stopped, 1 failed, 2 user error)."""
        self.stop.install()
        try:
            return self._execute()
        except FBTError as exc:
            self.emitter.emit("failed", kind=exc.kind, message=exc.message, hint=exc.hint)
            return 2
        except KeyboardInterrupt:
            self.emitter.emit("failed", kind="aborted", message="aborted by a second Ctrl-C",
                              hint=f"the last checkpoint is kept: fbt-engine resume {self.dir}")
            return 130
        except Exception as exc:  # a bug: keep the traceback in the log, tell the reader
            from .trainer import NonFiniteLoss
            if isinstance(exc, NonFiniteLoss):
                self.emitter.emit("failed", kind="nan_loss", message=str(exc), step=exc.step, term=exc.term,
                                  hint="lower the learning rate, enable grad_clip, or turn off fp16; the last good "
                                       "checkpoint is kept")
                return 1
            text = traceback.format_exc()
            if self.log:
                self.log.write(text)
            self.emitter.emit("failed", kind="crash", message=f"{type(exc).__name__}: {exc}", hint="see log.txt")
            raise
        finally:
            self.stop.uninstall()
            self.reporter.close()
            self.emitter.close()

    def _execute(self) -> int:
        from .data import build_loaders, build_mixup
        cfg, rt = self.cfg, self.rt
        self._check_teacher_source()  # fail before the (possibly slow) data set-up
        train_loader, val_loader, info = build_loaders(cfg.data, cfg.aug, cfg.train.batch_size, cfg.seed,
                                                       distributed=rt.distributed, device_type=rt.device.type)
        self.loaders = (train_loader, val_loader, build_mixup(cfg.aug, info.num_classes))
        self.info = info
        teacher, teacher_reason = self._teacher(info.num_classes)
        if teacher_reason == "stopped":
            return self._finish("stopped", None)
        return self._distill(teacher, info.num_classes)

    def _emit_started(self, params: dict[str, int]) -> None:
        import torch
        self.emitter.emit("started", config=C.to_dict(self.cfg), method=self.cfg.method,
                          teacher=self.cfg.teacher.model, student=self.cfg.student.model,
                          device=str(self.rt.device), world_size=self.rt.world_size, params=params,
                          pid=os.getpid(), resumed=self.resume is not None, torch=torch.__version__,
                          dataset={"name": self.info.name, "train": self.info.train_size, "val": self.info.val_size,
                                   "classes": self.info.num_classes})

    def teacher_path(self) -> Path:
        t = self.cfg.teacher
        return Path(t.checkpoint) if t.checkpoint else self.dir / "teacher.safetensors"

    def _check_teacher_source(self) -> None:
        t = self.cfg.teacher
        if self.cfg.method == "scratch" or t.train is not None or self.teacher_path().is_file():
            return
        if t.pretrained and not t.checkpoint:
            return
        raise TrainingError(f"teacher checkpoint {str(self.teacher_path())!r} does not exist",
                            "give the path of a teacher trained on this dataset, add a [teacher.train] section to "
                            "train it in this run, or set teacher.pretrained = true (needs internet)")

    def _teacher(self, num_classes: int):
        """The frozen teacher: loaded from a file, from the hub, or trained here first."""
        from .checkpoint import load_weights, save_weights
        from .task import create_teacher
        cfg = self.cfg
        if cfg.method == "scratch":
            return None, "none"
        teacher = create_teacher(cfg, num_classes)
        path = self.teacher_path()
        resuming_teacher = self.resume is not None and self.resume.get("phase") == "teacher"
        if path.is_file() and not resuming_teacher:
            load_weights(teacher, path, "teacher")
            return teacher, "loaded"
        if cfg.teacher.train is None:  # _check_teacher_source ruled out a missing file
            return teacher, "pretrained"
        outcome = self._train_teacher(teacher)
        if outcome == "completed" and self.rt.rank == 0:  # other ranks hold the same weights in memory
            save_weights(teacher, path)
            self.reporter.note(f"teacher saved to {path}")
        return teacher, outcome

    def _train_teacher(self, teacher: Any) -> str:
        from .task import TeacherModule
        from .trainer import Phase
        tt, tc = self.cfg.teacher.train, self.cfg.train
        train_cfg = C.replace(tc, epochs=tt.epochs, optimizer=tt.optimizer, lr=tt.lr, min_lr=tt.min_lr,
                              weight_decay=tt.weight_decay, warmup_epochs=tt.warmup_epochs, ema_decay=0.0,
                              grad_clip=tc.grad_clip)
        module = TeacherModule(teacher, self.cfg.aug.label_smoothing)
        self._emit_started(module.params())
        phase = Phase("teacher", module, train_cfg, self.loaders[0], self.loaders[1], self.loaders[2])
        return self._run_phase(phase, "teacher-last.pt")

    def _distill(self, teacher: Any, num_classes: int) -> int:
        from .task import DistillModule, create_student
        from .trainer import Phase
        module = DistillModule(self.cfg, create_student(self.cfg, num_classes), teacher, num_classes)
        self._emit_started(module.params())
        phase = Phase("distill", module, self.cfg.train, *self.loaders)
        outcome = self._run_phase(phase, "last.pt")
        return self._finish(outcome, self._loop)

    def _run_phase(self, phase: Any, last_name: str) -> str:
        from .trainer import Loop
        ckpt_dir = self.dir / "checkpoints"
        loop = Loop(phase, self.rt, self.emitter, lambda lp, best: self._save(lp, best, ckpt_dir, last_name),
                    self._stop_requested)
        self._loop = loop
        if self.resume is not None and self.resume.get("phase") == phase.name:
            loop.load_state_dict(self.resume)
            self.resume = {"elapsed": self.resume.get("elapsed", 0.0)}  # consumed
        return loop.run()

    def _save(self, loop: Any, best: bool, ckpt_dir: Path, last_name: str) -> str:
        from .checkpoint import atomic_copy, atomic_save
        if self.rt.rank != 0:
            return ""
        last = ckpt_dir / last_name
        atomic_save({"version": 1, "config": C.to_dict(self.cfg), "config_hash": C.config_hash(self.cfg),
                     "elapsed": time.monotonic() - self.started, **loop.state_dict()}, last)
        if best and loop.phase.name == "distill":
            atomic_copy(last, ckpt_dir / "best.pt")
            return str(ckpt_dir / "best.pt")
        return str(last)

    def _finish(self, reason: str, loop: Any) -> int:
        from .checkpoint import save_weights
        duration = time.monotonic() - self.started
        st = loop.state if loop is not None else None
        student_path = ""
        if loop is not None and reason == "completed" and self.rt.rank == 0:
            student_path = str(self.dir / "student.safetensors")
            save_weights(loop.module.student, student_path)
        best = {"epoch": st.best_epoch, "student_top1": st.best.get("student_top1")} if st and st.best else {}
        last = {"epoch": st.last.get("epoch"), "student_top1": st.last.get("student_top1")} if st and st.last else {}
        self.emitter.emit("finished", reason=reason, best=best, last=last, duration_s=round(duration, 1),
                          student_path=student_path, best_eval=st.best if st else {}, last_eval=st.last if st else {})
        if st is not None and st.last:
            self.reporter.final_table(st.best, st.last)
        if reason == "stopped":
            self.reporter.note(f"stopped; continue with: fbt-engine resume {self.dir}")
        return 0


# --- entry points used by the CLI -------------------------------------------------------------

def start(cfg: C.RunConfig, name: str | None = None, runs_dir: str | None = None, jsonl: bool = False,
          stop_when: Callable[[Any], bool] | None = None) -> tuple[int, Path]:
    """Create a fresh run folder for `cfg` and run it."""
    cfg = C.replace(cfg, name=name or cfg.name, runs_dir=runs_dir or cfg.runs_dir)
    run_dir = _main_rank_decides(lambda: _new_run_dir(cfg))
    cfg = C.replace(cfg, name=run_dir.name)
    return Run(cfg, run_dir, jsonl, stop_when=stop_when).execute(), run_dir


def _new_run_dir(cfg: C.RunConfig) -> Path:
    run_dir = unique_run_dir(Path(cfg.runs_dir), cfg.name)
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(C.dumps(C.replace(cfg, name=run_dir.name)), encoding="utf-8")
    return run_dir


def _main_rank_decides(fn: Callable[[], Any]) -> Any:
    """Under torchrun, rank 0 runs `fn` (e.g. creates the run folder) and every rank gets its result."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return fn()
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    box = [fn() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resume(run_dir: str | Path, jsonl: bool = False, stop_when: Callable[[Any], bool] | None = None) -> int:
    """Continue a stopped (or crashed) run in its own folder from checkpoints/*last.pt."""
    from .checkpoint import load
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise TrainingError(f"{str(run_dir)!r} is not a run folder (it has no config.toml)",
                            "give a folder under runs/, e.g. runs/quickstart")
    cfg = C.load_preset(run_dir / "config.toml")
    ckpts = [run_dir / "checkpoints" / n for n in ("last.pt", "teacher-last.pt")]
    found = next((p for p in ckpts if p.is_file()), None)
    state = load(found) if found else None
    if state is not None and state.get("config_hash") != C.config_hash(cfg):
        raise TrainingError(f"the checkpoint in {str(run_dir)!r} was written by another configuration",
                            "config.toml was edited after the run started; restore it or start a new run")
    if _completed(run_dir):
        raise TrainingError(f"run {str(run_dir)!r} has already completed",
                            "start a new run with `fbt-engine run`, or evaluate it with `fbt-engine eval`")
    return Run(cfg, run_dir, jsonl, resume=state or {}, stop_when=stop_when).execute()


def _completed(run_dir: Path) -> bool:
    from .events import Event, read_events
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return False
    last = [e for e in read_events(path) if isinstance(e, Event) and e.type in ("finished", "failed", "started")]
    return bool(last) and last[-1].type == "finished" and last[-1].get("reason") == "completed"
