"""The training loop: one readable function per concern, used for both phases (teacher, distill)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from . import faults
from .checkpoint import nonfinite_tensors, rng_state, set_rng_state
from .config import TrainConfig
from .events import Emitter


@dataclass
class TrainState:
    """Where a phase stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps in this phase
    epoch_step: int = 0  # steps done in the current, unfinished epoch (a graceful stop mid-epoch)
    best_top1: float = -1.0
    best_epoch: int = 0
    teacher_top1: float | None = None
    last: dict[str, Any] = field(default_factory=dict)  # last eval
    best: dict[str, Any] = field(default_factory=dict)  # eval at the best epoch


@dataclass
class Runtime:
    """Device, precision and distribution settings resolved for this process."""

    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: bool
    channels_last: bool
    distributed: bool = False
    rank: int = 0
    world_size: int = 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite and its terms.

    Checking `isfinite(loss)` on the host every step would force a device sync; this keeps the
    check on the device and is read only when events are emitted.
    """

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None
        self.bad_terms: torch.Tensor | None = None
        self.names: list[str] = []

    def update(self, step: int, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Record this step; returns [total, *terms] as one device tensor (reused for logging)."""
        values = torch.stack([total.detach().float()] + [v.float() for v in terms.values()])
        bad = ~torch.isfinite(values[0])
        if self.first_bad is None:
            self.names = ["total"] + list(terms)
            self.first_bad = torch.full((), -1, dtype=torch.long, device=total.device)
            self.bad_terms = torch.zeros_like(values)
        fresh = bad & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_terms = torch.where(fresh, values, self.bad_terms)
        return values

    def check(self, weights: dict[str, float] | None = None) -> tuple[int, str] | None:
        """(step, term) of the first non-finite loss, or None. Reads from the device.

        When every term is finite but their weighted sum is not, the term with the largest
        weighted value is named, with its weight (a huge loss weight overflowed the total).
        """
        if self.first_bad is None or int(self.first_bad) < 0:
            return None
        vals = self.bad_terms.tolist()
        culprits = [n for n, v in zip(self.names[1:], vals[1:]) if not math.isfinite(v)]
        if culprits:
            return int(self.first_bad), culprits[0]
        weighted = {n: abs(v * (weights or {}).get(n, 1.0)) for n, v in zip(self.names[1:], vals[1:])}
        if not weighted:
            return int(self.first_bad), "total"
        name = max(weighted, key=weighted.get)
        w = (weights or {}).get(name, 1.0)
        return int(self.first_bad), f"{name} (finite value {vals[1 + self.names[1:].index(name)]:.4g} times weight " \
                                    f"{w:g} overflows the total)"


class NonFiniteLoss(Exception):
    def __init__(self, step: int, term: str) -> None:
        super().__init__(f"the loss became non-finite at step {step} (term `{term}`)")
        self.step, self.term = step, term


def build_optimizer(module: nn.Module, tc: TrainConfig, world_size: int = 1) -> torch.optim.Optimizer:
    """timm's optimizer over the trained parameters; `lr` scaled to the global batch by `lr_scale`."""
    from timm.optim import create_optimizer_v2
    from .config import scaled_lr
    kw = {"momentum": tc.momentum} if tc.optimizer.lower() in ("sgd", "momentum", "nesterov") else {}
    return create_optimizer_v2(module, opt=tc.optimizer, lr=scaled_lr(tc, world_size), weight_decay=tc.weight_decay,
                               **kw)


def build_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig, steps_per_epoch: int) -> Any:
    """timm scheduler updated per step (warm-up and decay are smooth within an epoch)."""
    if tc.sched == "none":
        return None
    from timm.scheduler import create_scheduler_v2
    sched, _ = create_scheduler_v2(
        optimizer, sched=tc.sched, num_epochs=tc.epochs, decay_epochs=tc.decay_epochs, decay_rate=tc.decay_rate,
        min_lr=tc.min_lr, warmup_lr=tc.warmup_lr, warmup_epochs=tc.warmup_epochs, step_on_epochs=False,
        updates_per_epoch=steps_per_epoch)
    return sched


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of top-1 and top-k hits (as device tensors)."""
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hits = topk == target[:, None]
    return hits[:, 0].sum(), hits.any(dim=1).sum()


@torch.no_grad()
def evaluate(module: nn.Module, loader: Any, rt: Runtime, with_teacher: bool) -> dict[str, float | None]:
    """Top-1/top-5 of the trained model; fused and teacher top-1 when the module has them.

    `module` follows the task contract (a method or `ClassifierTask`): `eval_logits(x, with_teacher)`
    returns logits under `model`, and under `fused` / `teacher` where it has those models.
    """
    was = module.training
    module.eval()
    with_teacher = with_teacher and getattr(module, "teacher", None) is not None
    sums = torch.zeros(5, dtype=torch.float64, device=rt.device)  # s1, s5, fused, teacher, n
    has_fused = False
    for batch in loader:
        x, y = _to_device(batch[0], batch[1], rt)
        with rt.autocast():
            logits = module.eval_logits(x, with_teacher)
            s1, s5 = accuracy_counts(logits["model"], y)
            sums[0] += s1
            sums[1] += s5
            if "fused" in logits:
                has_fused = True
                sums[2] += accuracy_counts(logits["fused"], y)[0]
            if "teacher" in logits:
                sums[3] += accuracy_counts(logits["teacher"], y)[0]
        sums[4] += y.shape[0]
    if rt.distributed:  # each rank scored its own images (data.py shards them without padding): sum the counts
        torch.distributed.all_reduce(sums)
    module.train(was)
    s = (sums[:4] / sums[4].clamp(min=1) * 100).tolist()
    return {"top1": s[0], "top5": s[1], "fused_top1": s[2] if has_fused else None,
            "teacher_top1": s[3] if with_teacher else None, "count": int(sums[4])}


def _to_device(x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(rt.device, non_blocking=True)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(rt.device, non_blocking=True)


@dataclass
class Phase:
    """One training phase: `teacher` (CE on the teacher) or `distill` (the chosen method)."""

    name: str
    module: nn.Module
    tc: TrainConfig
    train_loader: Any
    val_loader: Any
    mixup: Any = None


class Loop:
    """Runs a phase: steps, events, evaluation, checkpoints, graceful stop and NaN detection."""

    def __init__(self, phase: Phase, rt: Runtime, emitter: Emitter, save: Callable[["Loop", bool], str],
                 stop_requested: Callable[["Loop"], bool]) -> None:
        self.phase, self.rt, self.emitter, self.save, self.stop_requested = phase, rt, emitter, save, stop_requested
        tc = phase.tc
        self.module = phase.module.to(rt.device)
        if rt.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.steps_per_epoch = self._steps_per_epoch()
        if rt.distributed:
            from . import ddp
            ddp.replicate(self.module)  # before the EMA copies the student
            if tc.sync_bn:
                ddp.convert_sync_bn(self.module)
        self.optimizer = build_optimizer(self.module, tc, rt.world_size)
        self.scheduler = build_scheduler(self.optimizer, tc, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(rt.device.type) if rt.scaler else None
        self.ema = None
        if tc.ema_decay > 0:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.module.model, decay=tc.ema_decay)
        self.state = TrainState()
        self.watch = NonFiniteWatch()
        self._gen: torch.Generator | None = getattr(phase.train_loader, "generator", None)
        self._epoch_gen_state = self._gen.get_state() if self._gen is not None else None
        self._resume_rng: dict[str, Any] | None = None
        self.step_fn = self._wrap(self.module)

    def _steps_per_epoch(self) -> int:
        n = len(self.phase.train_loader)
        cap = self.phase.tc.max_steps_per_epoch
        return min(n, cap) if cap > 0 else n

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.rt.distributed:
            from . import ddp
            module = ddp.wrap(module, self.rt.device)
        if self.phase.tc.compile:
            module = torch.compile(module)
        return module

    # --- state for checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The phase's state; under torchrun called on rank 0 only, after `_save` gathered the ranks' RNG."""
        return {
            "phase": self.phase.name, "state": asdict(self.state), "module": self._trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(self._gen), "epoch_gen": self._epoch_gen_state,
            "rank_rng": getattr(self, "_rank_rng", None), "world_size": self.rt.world_size,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        missing, unexpected = self.module.load_state_dict(ckpt["module"], strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]  # the frozen teacher is saved on its own
        if missing or unexpected:
            from .errors import TrainingError
            example = (missing or unexpected)[0]
            raise TrainingError(f"the checkpoint does not fit this version's `{self.phase.name}` phase "
                                f"({len(missing)} weights missing, {len(unexpected)} unexpected, e.g. {example!r})",
                                "it was written by an older fbt-workbench; finish it with that version, or start "
                                "a new run")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.state = TrainState(**ckpt["state"])
        self._resume_rng = ckpt.get("rng")
        self._epoch_gen_state = ckpt.get("epoch_gen")
        if self.rt.distributed or ckpt.get("rank_rng"):
            from . import ddp
            self._resume_rng, self._epoch_gen_state = ddp.rank_rng(ckpt, self.rt.rank, self.state.step)

    def _start_epoch_rng(self) -> None:
        """Before iterating: on resume, put the shuffle generator where the interrupted epoch had it."""
        if self._gen is None:
            return
        if self._resume_rng is not None and self.state.epoch_step > 0 and self._epoch_gen_state is not None:
            self._gen.set_state(self._epoch_gen_state)  # replay this epoch's order, then skip done steps
        elif self._resume_rng is not None:
            set_rng_state(self._resume_rng, self._gen)
            self._resume_rng = None
        self._epoch_gen_state = self._gen.get_state()

    def _after_skip_rng(self) -> None:
        """Mid-epoch resume: after skipping done batches, restore the RNG as it was at the stop."""
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> str:
        """Train to the configured number of epochs. Returns `completed` or `stopped`."""
        tc = self.phase.tc
        self.emitter.emit("phase", phase=self.phase.name, epochs=tc.epochs, steps_per_epoch=self.steps_per_epoch,
                          start_epoch=self.state.epoch + 1)
        faults.point(f"phase.{self.phase.name}")
        for epoch in range(self.state.epoch + 1, tc.epochs + 1):
            if self.train_epoch(epoch) == "stopped":
                return "stopped"
            self.state.epoch, self.state.epoch_step = epoch, 0
            self._raise_if_nonfinite()
            if epoch % tc.eval_every == 0 or epoch == tc.epochs:
                self.end_of_epoch(epoch)
            else:
                self._save(False)
        return "completed"

    def train_epoch(self, epoch: int) -> str:
        loader, tc = self.phase.train_loader, self.phase.tc
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        self.module.train()
        skip = self.state.epoch_step  # resuming a run stopped mid-epoch
        self._start_epoch_rng()
        clock, seen = time.perf_counter(), 0
        for i, batch in enumerate(loader):
            if i >= self.steps_per_epoch:
                break
            if i < skip:
                continue
            if i == skip and skip > 0:
                self._after_skip_rng()
            seen += self.train_step(*batch)  # (x, y) or, for methods that need it, (x, y, index)
            self.state.epoch_step = i + 1
            if self.state.step % tc.log_every == 0:
                self._raise_if_nonfinite()
                self.emit_step(epoch, seen / max(time.perf_counter() - clock, 1e-9))
                clock, seen = time.perf_counter(), 0
            if self.stop_requested(self):
                self._save(False)
                return "stopped"
        self._after_skip_rng()  # a run stopped after the epoch's last step skipped every batch
        return "done"

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> int:
        x, y = _to_device(x, y, self.rt)
        if self.phase.mixup is not None:
            x, y = self.phase.mixup(x, y)
        with self.rt.autocast():  # `index` stays where the loader put it (CRD draws on the CPU)
            total, terms = self.step_fn(x, y) if index is None else self.step_fn(x, y, index)
        self.optimizer.zero_grad(set_to_none=True)
        self._lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (logged)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        self._grad_norm = None  # before clipping (the health checks' `grad_norm`); read only when logged
        if self.phase.tc.grad_clip > 0:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.phase.tc.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.state.step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.state.step)
        if self.ema is not None:
            self.ema.update(self.module.model, step=self.state.step)
        values = self.watch.update(self.state.step, total, terms)
        self._last = (list(terms), values)  # device tensor: read only when a step event is emitted
        faults.point(f"{self.phase.name}.step")
        return x.shape[0] * self.rt.world_size

    def health_signals(self) -> dict[str, torch.Tensor]:
        """The step's cheap health signals (health.py) as device scalars: the gradient norm (the
        grads of the last step are still there), and whatever the method reports (fbt: F's spread,
        the temperatures). Read together with the loss, in the step event's one sync."""
        grad = self._grad_norm
        if grad is None:
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            grad = torch.nn.utils.get_total_norm(grads) if grads else None
        out = {"grad_norm": grad} if grad is not None else {}
        method_signals = getattr(self.phase.module, "health_signals", None)
        return {**out, **(method_signals() if method_signals is not None else {})}

    def emit_step(self, epoch: int, samples_per_s: float) -> None:
        names, stacked = self._last
        signals = self.health_signals()
        if signals:
            stacked = torch.cat([stacked, torch.stack([v.detach().float().reshape(()) for v in signals.values()])
                                 .to(stacked.device)])
        if self.rt.distributed:  # the global batch's loss: the mean of the ranks' (equal-sized) batches
            stacked = stacked.clone()
            torch.distributed.all_reduce(stacked)
            stacked /= self.rt.world_size
        values = stacked.tolist()
        n = len(names) + 1
        signal_values = {k: round(v, 6) for k, v in zip(signals, values[n:])}
        values = values[:n]
        left = (self.phase.tc.epochs - epoch + 1) * self.steps_per_epoch - self.state.epoch_step
        step_time = self.phase.train_loader.batch_size * self.rt.world_size / max(samples_per_s, 1e-9)
        self.emitter.emit("step", phase=self.phase.name, epoch=epoch, step=self.state.step,
                          epoch_step=self.state.epoch_step, steps_per_epoch=self.steps_per_epoch,
                          lr=self._lr, loss=values[0],
                          terms=dict(zip(names, values[1:])), samples_per_s=round(samples_per_s, 2),
                          eta_s=round(left * step_time, 1), signals=signal_values)

    def _raise_if_nonfinite(self, before_save: bool = False) -> None:
        """Stop on a non-finite loss, or on non-finite weights after the optimiser step (one sync).

        At log points the trained parameters are scanned; before a save, every tensor the
        checkpoint will hold (BatchNorm buffers too), so a diverged model is never saved.
        """
        bad = self.watch.check(self.phase.module.weights())
        if bad is not None:
            raise NonFiniteLoss(*bad)
        tensors = self._trainable_state() if before_save else \
            {n: p for n, p in self.module.named_parameters() if p.requires_grad}
        bad_names = nonfinite_tensors(tensors)
        if bad_names:
            raise NonFiniteLoss(self.state.step, f"weights (NaN/inf after the optimiser step in {len(bad_names)} "
                                                 f"tensors, e.g. {bad_names[0]})")

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the module: everything but the frozen teacher (saved on its own)."""
        return {k: v for k, v in self.module.state_dict().items() if not k.startswith("teacher.")}

    def _save(self, best: bool) -> str:
        self._raise_if_nonfinite(before_save=True)
        if self.rt.distributed:  # every rank's random streams, so that each rank resumes its own
            from . import ddp
            self._rank_rng = ddp.gather_rng(self._gen, self._epoch_gen_state)
        return self.save(self, best)

    def end_of_epoch(self, epoch: int) -> None:
        st = self.state
        m = evaluate(self.module, self.phase.val_loader, self.rt, with_teacher=st.teacher_top1 is None)
        if m["teacher_top1"] is not None:
            st.teacher_top1 = m["teacher_top1"]
        ema_top1 = evaluate(ModelView(self.ema.module), self.phase.val_loader, self.rt, False)["top1"] \
            if self.ema is not None else None
        result = {"epoch": epoch, "student_top1": m["top1"], "student_top5": m["top5"],
                  "fused_top1": m["fused_top1"], "teacher_top1": st.teacher_top1, "ema_top1": ema_top1}
        if self.phase.name == "teacher":  # the model trained in this phase *is* the teacher
            result.update(teacher_top1=m["top1"], student_top1=None, student_top5=None)
        self.emitter.emit("eval", phase=self.phase.name, **result)
        st.last = result
        is_best = m["top1"] > st.best_top1
        if is_best:
            st.best_top1, st.best_epoch, st.best = m["top1"], epoch, result
        path = self._save(is_best)
        self.emitter.emit("checkpoint", phase=self.phase.name, path=path, epoch=epoch, best=is_best)


class ModelView(nn.Module):
    """Lets `evaluate` score a bare model (the EMA copy, an exported student)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def eval_logits(self, x: torch.Tensor, with_teacher: bool) -> dict[str, torch.Tensor]:
        return {"model": self.model(x)}
