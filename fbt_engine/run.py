"""A run from preset to finished student: checks, run folder, phases (teacher, distill), resume, signals.

    runs/<name>/config.toml        the fully resolved preset (repeat the run exactly)
    runs/<name>/events.jsonl       every event (see events.py)
    runs/<name>/log.txt            human-readable progress and any traceback
    runs/<name>/checkpoints/       last.pt, best.pt (distill), teacher-last.pt (teacher phase)
    runs/<name>/summary.csv        one row per evaluated epoch (timm train.py style; see loggers.py)
    runs/<name>/tensorboard/       with `[log] backends = ["tensorboard"]`
    runs/<name>/wandb/, mlflow.db  with backends "wandb" / "mlflow" (trackio keeps its own store)
    runs/<name>/loggers.json       the tracker run ids, so a resumed run continues the same tracker run
    runs/<name>/student.safetensors, teacher.safetensors (when trained here)
    runs/<name>/export/timm/       the finished student in timm's format: model.safetensors (the same
                                   bytes as student.safetensors) + config.json (architecture, args,
                                   preprocessing); timm.create_model("local-dir:<folder>", pretrained=True)
    runs/<name>/export/onnx/       written by `fbt-engine export --format onnx` (see export.py)
    runs/<name>/.lock              held by the process writing the folder
    runs/<name>/ranks/             under torchrun: each rank's notes (pid, failure, hang; see ranks.py)

Order of work (fail before work starts): validate the config -> preflight (models on the meta
device, optimiser, augmentation, device, files) -> data set-up -> only then the run folder.
Each phase starts from the run's seed (not from whatever the previous phase left in the RNG), so a
run resumed at any point computes the same numbers as an uninterrupted one.
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
from . import faults
from .errors import FBTError, TrainingError
from .events import Emitter
from .ranks import RankBoard, RankEmitter, Watchdog, is_peer_error


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


@dataclass
class Prepared:
    """What a run needs before its folder exists: resolved runtime and the built datasets."""

    rt: Any
    train_set: Any
    val_set: Any
    info: Any
    mixup: Any


def prepare(cfg: C.RunConfig, source: str) -> Prepared:
    """Every check that needs no run folder, then the data set-up. Raises FBTError."""
    from . import preflight
    from .data import build_datasets, build_mixup
    preflight.check(cfg, source=source)  # before torch.distributed starts: its dry run must not gather
    rt = _runtime(cfg)
    train_set, val_set, info = build_datasets(cfg.data, cfg.aug, cfg.seed)
    return Prepared(rt, train_set, val_set, info, build_mixup(cfg.aug, info.num_classes))


def _runtime(cfg: C.RunConfig) -> Any:
    import torch
    from .trainer import Runtime
    tc = cfg.train
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = world = 0
    if distributed:
        import torch.distributed as dist
        if not dist.is_initialized():
            from datetime import timedelta  # a collective waiting longer than this for a lost peer fails
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                    timeout=timedelta(seconds=tc.dist_timeout_s))
        rank, world = dist.get_rank(), dist.get_world_size()
    device = _device(tc.device, int(os.environ.get("LOCAL_RANK", "0")))
    _check_scale_out(cfg, max(world, 1), device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
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


def _check_scale_out(cfg: C.RunConfig, world: int, device: Any) -> None:
    """Before any work: the global batch divides over the ranks; SyncBatchNorm has what it needs."""
    C.rank_batch_size(cfg.train, world)
    if cfg.teacher.train is not None:
        C.rank_batch_size(C.teacher_train_config(cfg), world)
    if cfg.train.sync_bn and world > 1 and device.type != "cuda":
        from .errors import ConfigError
        raise ConfigError("`train.sync_bn = true` needs CUDA (torch's SyncBatchNorm runs on GPUs only), but this "
                          f"run is on {device.type}", "set train.sync_bn = false (each rank then keeps its own "
                          "BatchNorm batch statistics)")


def _device(spec: str, local_rank: int) -> Any:
    import torch
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    if spec.startswith("cuda"):
        torch.cuda.set_device(torch.device(spec))
    return torch.device(spec)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class Run:
    """Everything one `fbt-engine run`/`resume` process does once its folder exists."""

    def __init__(self, cfg: C.RunConfig, run_dir: Path, jsonl: bool, prep: Prepared, lock: Any = None,
                 resume: dict[str, Any] | None = None, stop_when: Callable[[Any], bool] | None = None) -> None:
        from .progress import Reporter
        self.cfg, self.dir, self.resume, self.prep, self.lock = cfg, run_dir, resume, prep, lock
        self.rt, self.info = prep.rt, prep.info
        self.stop = StopSignal()
        self.stop_when = stop_when  # tests: stop as if signalled once this returns True for the loop
        self.started = time.monotonic() - (resume or {}).get("elapsed", 0.0)
        self.teacher_digest: str | None = None
        is_main = self.rt.rank == 0
        self.log = open(run_dir / "log.txt", "a", encoding="utf-8") if is_main else None
        self.reporter = Reporter(cfg.name, log=self.log, quiet=not is_main)
        self.stop.on_request = lambda: self.reporter.note("stop requested: finishing this step and saving a "
                                                          "checkpoint (Ctrl-C again aborts at once)")
        self.stop.on_hangup = self._hangup
        from .loggers import build_loggers
        self.loggers = build_loggers(cfg, run_dir, self.reporter.note) if is_main else None
        from .health import build_monitor
        self.health = build_monitor(cfg.health, lambda warning: self.emitter.send(warning)) if is_main else None
        listeners = [self.reporter.on_event, *([self.loggers] if self.loggers else []),
                     *([self.health] if self.health else [])]
        self.board = self._rank_board() if self.rt.distributed else None
        emitter_cls, extra = (Emitter, {}) if self.board is None else (RankEmitter, {"board": self.board,
                                                                                    "device": self.rt.device})
        self.emitter = emitter_cls(cfg.name, run_dir / "events.jsonl", sys.stdout if jsonl else None, enabled=is_main,
                                   listeners=listeners, t_offset=(resume or {}).get("elapsed", 0.0), **extra)
        self.watchdog = None
        if self.board is not None and cfg.train.watchdog_s > 0:
            self.watchdog = Watchdog(cfg.train.watchdog_s, self.board, self.emitter.emit, self.log, self._resume_hint)
            self.emitter.on_any = self.watchdog.tick
        if is_main and os.environ.get("FBT_LAUNCH_RUN_FILE"):  # launch.py: where rank 0's folder is
            Path(os.environ["FBT_LAUNCH_RUN_FILE"]).write_text(str(run_dir))

    def _rank_board(self) -> RankBoard:
        """This attempt's notes folder (rank 0 names it; see ranks.py)."""
        import torch.distributed as dist
        box = [f"{int(time.time())}-{os.getpid()}" if self.rt.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return RankBoard.start(self.dir, self.rt.rank, self.rt.world_size, box[0])

    def _hangup(self) -> None:
        self.reporter.detach()
        self.emitter.detach_stream()
        self.reporter.note("terminal closed (SIGHUP): training goes on; follow runs/<name>/log.txt")

    def _stop_requested(self, loop: Any) -> bool:
        if self.watchdog is not None:
            self.watchdog.tick()  # a step finished on this rank
        flag = self.stop.requested or (self.stop_when is not None and self.stop_when(loop))
        return bool(self._agree(float(flag), "max"))  # every rank must stop at the same step

    def _agree(self, value: float, op: str = "max") -> float:
        """Under torchrun, combine a number across ranks (max: any rank's yes is everyone's)."""
        if not self.rt.distributed:
            return value
        import torch
        import torch.distributed as dist
        t = torch.tensor([value], device=self.rt.device, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
        return float(t.item())

    # --- phases ---------------------------------------------------------------------------
    def execute(self) -> int:
        """Run to the end; returns the process exit code (0 done/stopped, 1 failed, 2 user error)."""
        self.stop.install()
        if self.watchdog is not None:
            self.watchdog.start()
        try:
            return self._execute()
        except FBTError as exc:
            self.emitter.emit("failed", kind=exc.kind, message=exc.message, hint=exc.hint)
            return 2
        except KeyboardInterrupt:
            self.emitter.emit("failed", kind="aborted", message="aborted by a second Ctrl-C", hint=self._resume_hint())
            return 130
        except Exception as exc:  # noqa: BLE001 - classify known runtime faults; anything else is a bug
            return self._runtime_fault(exc)
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()
            self.stop.uninstall()
            self.reporter.close()
            self.emitter.close()
            if self.loggers is not None:
                self.loggers.close()
            if self.lock is not None:
                self.lock.release()

    def _resume_hint(self) -> str:
        ckpts = self.dir / "checkpoints"
        if any((ckpts / n).is_file() for n in ("last.pt", "teacher-last.pt")):
            return f"the last checkpoint is kept: fbt-engine resume {self.dir}"
        return "no checkpoint had been written yet: start the run again with `fbt-engine run`"

    def _runtime_fault(self, exc: Exception) -> int:
        import torch
        from .trainer import NonFiniteLoss
        if self.board is not None and self._peer_fault(exc):
            return 1
        if isinstance(exc, NonFiniteLoss):
            self.emitter.emit("failed", kind="nan_loss", message=str(exc), step=exc.step, term=exc.term,
                              hint="lower the learning rate, enable train.grad_clip, or turn off fp16; nothing "
                                   "non-finite was saved: " + self._resume_hint().replace("the last", "the last good"))
            return 1
        if isinstance(exc, torch.OutOfMemoryError):
            self.emitter.emit("failed", kind="oom", message=f"out of GPU memory: {str(exc).splitlines()[0]}",
                              hint="lower train.batch_size, use train.amp = \"bf16\", or fewer data.num_workers; "
                                   + self._resume_hint())
            return 1
        if isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
            self.emitter.emit("failed", kind="data_worker", message=f"a data-loading worker died: {exc}",
                              hint="it was killed (out of host memory?): lower data.num_workers (0 loads in the main "
                                   "process); " + self._resume_hint())
            return 1
        if self.log:
            try:
                self.log.write(traceback.format_exc())
            except OSError:
                pass
        self.emitter.emit("failed", kind="crash", message=f"{type(exc).__name__}: {exc}", hint="see log.txt")
        raise exc

    def _peer_fault(self, exc: Exception) -> bool:
        """Under torchrun: a collective broke because another rank died, raised or hung. The `failed`
        event names that rank (RankEmitter); this rank's own error is only the symptom."""
        if self.watchdog is not None and self.watchdog.fired.is_set():
            while True:  # the watchdog reports the hang and ends the process
                time.sleep(1)
        if not is_peer_error(exc):
            return False
        self.emitter.peer_error = True
        if self.log is not None:  # this rank's own view, for the record
            try:
                self.log.write(f"rank {self.rt.rank}: a collective broke: {type(exc).__name__}: {exc}\n")
            except (OSError, ValueError):
                pass
        self.emitter.emit("failed", kind="crash", message=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                          hint=self._resume_hint())
        return True

    def _execute(self) -> int:
        faults.point("run.folder")
        teacher, teacher_reason = self._teacher(self.info.num_classes)
        if teacher_reason == "stopped":
            return self._finish("stopped", None)
        return self._distill(teacher, self.info.num_classes)

    def _loaders(self, batch_size: int, with_index: bool = False) -> tuple[Any, Any, Any]:
        """Fresh, freshly seeded loaders for a phase (batches carry sample indices when `with_index`)."""
        from .data import make_loaders
        batch_size = C.rank_batch_size(C.replace(self.cfg.train, batch_size=batch_size), self.rt.world_size)
        train, val = make_loaders(self.prep.train_set, self.prep.val_set, self.cfg.data.num_workers, batch_size,
                                  self.cfg.seed, self.rt.distributed, self.rt.device.type, with_index)
        return train, val, self.prep.mixup

    def _start_phase(self) -> None:
        """A phase's numbers depend on the seed only, not on how the process got here (fresh run,
        resume after the teacher, teacher loaded from a file)."""
        seed_everything(self.cfg.seed + self.rt.rank)

    def _emit_started(self, params: dict[str, int]) -> None:
        import torch
        self.emitter.emit("started", config=C.to_dict(self.cfg), method=self.cfg.method,
                          teacher=self.cfg.teacher.model, student=self.cfg.student.model,
                          device=str(self.rt.device), world_size=self.rt.world_size, params=params,
                          pid=os.getpid(), resumed=self.resume is not None, torch=torch.__version__,
                          teacher_digest=self.teacher_digest,
                          dataset={"name": self.info.name, "train": self.info.train_size, "val": self.info.val_size,
                                   "classes": self.info.num_classes})

    def teacher_path(self) -> Path:
        t = self.cfg.teacher
        return Path(t.checkpoint) if t.checkpoint else self.dir / "teacher.safetensors"

    def _teacher(self, num_classes: int) -> tuple[Any, str]:
        """The frozen teacher: loaded from a file, from the hub, or trained here first."""
        from . import methods
        from .task import create_teacher
        if not methods.get(self.cfg.method).needs_teacher:
            return None, "none"
        self._start_phase()
        teacher = create_teacher(self.cfg, num_classes)
        path = self._fresh_source(teacher) or self.teacher_path()
        if path.exists() and not path.is_file():
            raise TrainingError(f"the teacher file {str(path)!r} is a directory", "remove it, or set teacher.checkpoint "
                                "to a file path")
        if path.is_file() or self.cfg.teacher.train is None:  # preflight ruled out a missing file
            return teacher, self._load_teacher(teacher, path) if path.is_file() else "pretrained"
        from .checkpoint import WriteError
        from .locks import FileLock
        lock = None
        if self.rt.rank == 0:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WriteError(f"cannot create the teacher's folder {str(path.parent)!r}: {exc.strerror or exc}",
                                 "set teacher.checkpoint to a path in a writable folder") from None
            lock = FileLock(path.with_name(path.name + ".lock"))
        if lock is not None and not lock.wait(self.reporter.note, lambda: self.stop.requested,
                                              f"training the teacher {path}"):
            return teacher, "stopped"
        if lock is not None:  # ours now: a `.tmp` beside the teacher is a killed writer's debris
            path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
        try:
            if self._agree(float(path.is_file())):  # another run trained it while we waited
                return teacher, self._load_teacher(teacher, path)
            outcome = self._train_teacher(teacher)
            if outcome == "completed" and self.rt.rank == 0:  # other ranks hold the same weights in memory
                from .checkpoint import save_weights
                self.teacher_digest = save_weights(teacher, path, "teacher")
                self.reporter.note(f"teacher saved to {path}")
            return teacher, outcome
        finally:
            if lock is not None:
                lock.release()

    def _fresh_source(self, teacher: Any) -> Path | None:
        """A teacher.checkpoint whose classifier does not fit (pretrained elsewhere) and a [teacher.train]:
        its backbone is loaded now and the fine-tuned teacher goes to the run folder (the source
        file stays as it is). Returns that run-folder path, or None for every other case."""
        t = self.cfg.teacher
        if not (t.checkpoint and t.train is not None and Path(t.checkpoint).is_file()):
            return None
        from .checkpoint import load_weights
        if not load_weights(teacher, t.checkpoint, "teacher", fresh_head_ok=True):
            return None
        self.reporter.note(f"teacher {t.checkpoint}: backbone loaded, classifier freshly initialised for "
                           f"{self.info.num_classes} classes; it is fine-tuned first")
        return self.dir / "teacher.safetensors"

    def _load_teacher(self, teacher: Any, path: Path) -> str:
        from .checkpoint import file_digest, load_weights
        load_weights(teacher, path, "teacher")
        self.teacher_digest = file_digest(path)
        expected = (self.resume or {}).get("teacher_digest")
        if expected and expected != self.teacher_digest:
            raise TrainingError(f"the teacher file {str(path)!r} changed since this run's checkpoint was written "
                                f"(sha256 {self.teacher_digest} now, {expected} then)",
                                "restore the teacher this run was distilled from, or start a new run with the new one")
        return "loaded"

    def _train_teacher(self, teacher: Any) -> str:
        from .task import ClassifierTask
        from .trainer import Phase
        train_cfg = C.teacher_train_config(self.cfg)
        module = ClassifierTask(teacher, self.cfg.aug.label_smoothing,
                                head_only=self.cfg.teacher.train.tune == "head")
        self._emit_started(module.params())
        phase = Phase("teacher", module, train_cfg, *self._loaders(train_cfg.batch_size))
        return self._run_phase(phase, "teacher-last.pt")

    def _distill(self, teacher: Any, num_classes: int) -> int:
        from . import methods
        from .data import dataset_labels
        from .methods._base import Setup, build
        from .task import create_student
        from .trainer import Phase
        self._start_phase()
        needs_index = methods.get(self.cfg.method).needs_index
        labels = dataset_labels(self.prep.train_set) if needs_index else None
        module = build(Setup(self.cfg, create_student(self.cfg, num_classes), teacher, num_classes, labels))
        self._emit_started(module.params())
        phase = Phase("distill", module, self.cfg.train, *self._loaders(self.cfg.train.batch_size, needs_index))
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
        from .checkpoint import serialize, write_bytes_atomic
        if self.rt.rank != 0:
            return ""
        last = ckpt_dir / last_name
        data = serialize({"version": 2, "config": C.to_dict(self.cfg), "config_hash": C.config_hash(self.cfg),
                          "teacher_digest": self.teacher_digest, "elapsed": time.monotonic() - self.started,
                          **loop.state_dict()})
        if best and loop.phase.name == "distill":
            # best.pt first: a kill between the two writes leaves last.pt one epoch behind, so the
            # resumed run redoes that epoch and writes best.pt again (the other order loses it)
            write_bytes_atomic(data, ckpt_dir / "best.pt")
        write_bytes_atomic(data, last)
        return str(ckpt_dir / "best.pt") if best and loop.phase.name == "distill" else str(last)

    def _finish(self, reason: str, loop: Any) -> int:
        duration = time.monotonic() - self.started
        st = loop.state if loop is not None else None
        student_path = ""
        if loop is not None and reason == "completed" and self.rt.rank == 0:
            student_path = str(self.dir / "student.safetensors")
            self._export_student(loop.module.model)
        best = {"epoch": st.best_epoch, "student_top1": st.best.get("student_top1")} if st and st.best else {}
        last = {"epoch": st.last.get("epoch"), "student_top1": st.last.get("student_top1")} if st and st.last else {}
        faults.point("finish")
        self.emitter.emit("finished", reason=reason, best=best, last=last, duration_s=round(duration, 1),
                          student_path=student_path, best_eval=st.best if st else {}, last_eval=st.last if st else {})
        if st is not None and st.last:
            self.reporter.final_table(st.best, st.last)
        if reason == "stopped":
            self.reporter.note(f"stopped; continue with: fbt-engine resume {self.dir}")
        return 0


    def _export_student(self, model: Any) -> None:
        """student.safetensors with its preprocessing in the metadata, and the same file with
        config.json in export/timm, so timm resolves the run's input size, mean and std (the
        evaluation transform: resize, no crop, bilinear); see export.py."""
        from .export import export_finished_student, student_config
        export_finished_student(model, self.dir, student_config(model, self.cfg, self.info))


# --- entry points used by the CLI -------------------------------------------------------------

def start(cfg: C.RunConfig, name: str | None = None, runs_dir: str | None = None, jsonl: bool = False,
          stop_when: Callable[[Any], bool] | None = None, source: str = "<preset>") -> tuple[int, Path]:
    """Check everything, set up the data, then create a fresh run folder for `cfg` and run it."""
    cfg = C.replace(cfg, name=cfg.name if name is None else name, runs_dir=cfg.runs_dir if runs_dir is None else runs_dir)
    C.validate(cfg, source if name is None and runs_dir is None else "the command line")  # --name is user input too
    prep = _announce_failure(lambda: prepare(cfg, source), cfg.name, jsonl)
    run_dir = _announce_failure(lambda: _main_rank_decides(lambda: _new_run_dir(cfg)), cfg.name, jsonl)
    lock = _locked(run_dir, prep.rt.rank)
    cfg = C.replace(cfg, name=run_dir.name)
    return Run(cfg, run_dir, jsonl, prep, lock, stop_when=stop_when).execute(), run_dir


def _announce_failure(fn: Callable[[], Any], name: str, jsonl: bool) -> Any:
    """Failures before the run folder exists: a `failed` event on the stream (the TUI reads it), then
    the FBTError for the CLI to print. Nothing is written to disk."""
    try:
        return fn()
    except FBTError as exc:
        if jsonl:
            Emitter(name, None, sys.stdout).emit("failed", kind=exc.kind, message=exc.message, hint=exc.hint)
        raise


def _locked(run_dir: Path, rank: int) -> Any:
    from .locks import lock_run_folder
    return lock_run_folder(run_dir) if rank == 0 else None


def unique_folder(runs: Path, name: str) -> Path:
    """runs/<name>, or <name>-2, -3 ... when taken; made with one mkdir, so concurrent starts never
    share a folder, and a folder is never overwritten (runs and sweeps alike)."""
    from .checkpoint import WriteError
    try:
        runs.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            path = runs / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                n += 1
    except OSError as exc:
        raise WriteError(f"cannot create a run folder under {str(runs)!r}: {exc.strerror or exc}",
                         "choose a writable folder with --runs-dir") from None


def _new_run_dir(cfg: C.RunConfig) -> Path:
    """A fresh run folder (unique_folder) holding the resolved config.toml, or nothing at all."""
    from .checkpoint import WriteError, write_bytes_atomic
    runs = Path(cfg.runs_dir)
    path = unique_folder(runs, cfg.name)
    try:
        write_bytes_atomic(C.dumps(C.replace(cfg, name=path.name)).encode(), path / "config.toml")
    except WriteError as exc:  # a folder without config.toml is no run (resume refuses it): leave nothing
        try:
            path.rmdir()
        except OSError:
            pass  # someone put a file in it meanwhile: theirs, keep it
        raise WriteError(exc.message, f"nothing was written (the empty folder {path.name} was removed): free space "
                                      f"under {str(runs)!r} and start the run again") from None
    return path


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


CHECKPOINT_ORDER = ("last.pt", "best.pt", "teacher-last.pt")


def resume(run_dir: str | Path, jsonl: bool = False, stop_when: Callable[[Any], bool] | None = None) -> int:
    """Continue a stopped (or crashed) run in its own folder from its newest good checkpoint."""
    from .checkpoint import load_first
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise TrainingError(f"{str(run_dir)!r} is not a run folder (it has no config.toml)",
                            "give a folder under runs/, e.g. runs/quickstart")
    # on the stream too, so a TUI resuming a folder that is in use shows the holder's pid
    lock = _announce_failure(lambda: _locked(run_dir, int(os.environ.get("RANK", "0"))), run_dir.name, jsonl)
    try:
        _remove_stale_tmp(run_dir)
        cfg = C.load_preset(run_dir / "config.toml")
        if _completed(run_dir):
            raise TrainingError(f"run {str(run_dir)!r} has already completed",
                                "start a new run with `fbt-engine run`, or evaluate it with `fbt-engine eval`")
        notes: list[str] = []
        found, state = load_first([run_dir / "checkpoints" / n for n in CHECKPOINT_ORDER], notes.append)
        if state is not None and state.get("config_hash") != C.config_hash(cfg):
            raise TrainingError(f"the checkpoint {str(found)!r} was written by another configuration",
                                "config.toml was edited after the run started; restore it or start a new run")
        prep = _announce_failure(lambda: prepare(cfg, str(run_dir / "config.toml")), cfg.name, jsonl)
        run = Run(cfg, run_dir, jsonl, prep, lock, resume=state or {}, stop_when=stop_when)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    for note in notes:
        run.reporter.note(note)
    if found is not None:
        run.reporter.note(f"resuming from {found.name}")
    return run.execute()


def _remove_stale_tmp(folder: Path) -> None:
    """A SIGKILL during a write leaves `.<name>.tmp`; with the folder's lock held, nobody else is
    writing it, so it is debris."""
    for tmp in [*folder.glob(".*.tmp"), *folder.glob("checkpoints/.*.tmp")]:
        tmp.unlink(missing_ok=True)


def _completed(run_dir: Path) -> bool:
    from .events import Event, read_events
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return False
    last = [e for e in read_events(path) if isinstance(e, Event) and e.type in ("finished", "failed", "started")]
    return bool(last) and last[-1].type == "finished" and last[-1].get("reason") == "completed"
