"""Experiment trackers as sinks of EpochRows: W&B, trackio, MLflow (see the package docstring).

Each imports its package in its constructor, so nothing here is imported unless the backend is
chosen. All three log the same scalars under the same names:

    <phase>/train/<term>   per logged step (loss, lr, each loss term)
    <phase>/epoch/<column> per evaluated epoch (summary.csv's numeric columns)

against the phase's global step (the teacher phase and the distillation each count from 1). A
resumed run continues the tracker run its folder started: the id is kept in runs/<name>/loggers.json.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..events import Event
from . import row_scalars, step_scalars

IDS = "loggers.json"


def tracker_ids(run_dir: Path) -> dict[str, str]:
    """The tracker run ids this run folder has used ({} before the first)."""
    try:
        data = json.loads((run_dir / IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _remember(run_dir: Path, backend: str, run_id: str) -> None:
    from ..checkpoint import write_bytes_atomic
    ids = {**tracker_ids(run_dir), backend: run_id}
    write_bytes_atomic((json.dumps(ids, indent=1, sort_keys=True) + "\n").encode(), run_dir / IDS)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _config(cfg: Any) -> dict[str, Any]:
    from .. import config as C
    return C.to_dict(cfg)


class _Steps:
    """The phase's global step of the latest `step` event: an epoch row is logged at it (as in
    TensorBoard), so train and epoch curves share their x axis."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def of_step(self, ev: Event) -> tuple[str, int]:
        phase, step = str(ev.get("phase", "distill")), int(ev.get("step", 0))
        self.last[phase] = step
        return phase, step

    def of_row(self, row: dict[str, Any]) -> tuple[str, int]:
        phase = str(row["phase"])
        return phase, self.last.get(phase, int(row["epoch"]))


def _named(phase: str, group: str, scalars: dict[str, float]) -> dict[str, float]:
    return {f"{phase}/{group}/{name}": value for name, value in scalars.items()}


class _PhaseSink:
    """What the trackers share: `step` events as `<phase>/train/<term>`, epoch rows as
    `<phase>/epoch/<column>`, both at the phase's global step; a tracker says how to `_log`."""

    steps: _Steps

    def _log(self, phase: str, group: str, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def step(self, ev: Event) -> None:
        phase, step = self.steps.of_step(ev)
        self._log(phase, "train", step_scalars(ev), step)

    def row(self, row: dict[str, Any]) -> None:
        phase, step = self.steps.of_row(row)
        self._log(phase, "epoch", row_scalars(row), step)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Trackers print banners; stdout is the engine's data stream (`--jsonl`), so they go to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class WandbSink(_PhaseSink):
    """One W&B run per run folder, its files under runs/<name>/wandb/. Each phase has its own x axis
    (`<phase>/step`, by define_metric) rather than wandb.log's `step=`, which must grow across the
    whole W&B run and would drop the distillation's steps after the teacher phase's."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        import wandb
        log = cfg.log
        run_id = tracker_ids(run_dir).get("wandb") or secrets.token_hex(4)
        with _stdout_to_stderr():
            self.run = wandb.init(
                dir=str(run_dir), project=log.project, entity=log.wandb_entity or None, name=cfg.name, id=run_id,
                resume="allow", config=_config(cfg), mode=None if log.wandb_mode == "auto" else log.wandb_mode,
                settings=wandb.Settings(console="off"))  # leave stdout/stderr alone: log.txt has them
        _remember(run_dir, "wandb", run_id)
        self.steps, self.phases, self.exit_code = _Steps(), set(), 0

    def _log(self, phase: str, group: str, scalars: dict[str, float], step: int) -> None:
        if phase not in self.phases:
            self.run.define_metric(f"{phase}/step")
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self.phases.add(phase)
        self.run.log({f"{phase}/step": step, **_named(phase, group, scalars)})

    def end(self, ev: Event) -> None:
        self.exit_code = 1 if ev.type == "failed" else 0

    def close(self) -> None:
        with _stdout_to_stderr():
            self.run.finish(exit_code=self.exit_code)


class TrackioSink(_PhaseSink):
    """A trackio run named as the run folder, in trackio's own local store ($TRACKIO_DIR; a Space or
    server only with $TRACKIO_SPACE_ID / $TRACKIO_SERVER_URL). A resumed run continues it by name."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        import trackio
        resumed = "trackio" in tracker_ids(run_dir)
        with _stdout_to_stderr():
            self.run = trackio.init(project=cfg.log.project, name=cfg.name, config=_config(cfg),
                                    resume="allow" if resumed else "never", embed=False)
        _remember(run_dir, "trackio", cfg.name)
        self.trackio, self.steps = trackio, _Steps()

    def _log(self, phase: str, group: str, scalars: dict[str, float], step: int) -> None:
        self.run.log(_named(phase, group, scalars), step=step)

    def close(self) -> None:
        with _stdout_to_stderr():
            try:  # trackio.finish also forgets the run; its exit hook would finish it again, on stdout
                self.trackio.finish()
            except RuntimeError:  # not trackio's current run (closed from another context)
                self.run.finish()


_MLFLOW_BAD = re.compile(r"[^\w\-. :/]")
MLFLOW_DB = "mlflow.db"


def mlflow_key(name: str) -> str:
    """MLflow names allow letters, digits, _ - . space : / only: `ofa/t->f` becomes `ofa/t_to_f`."""
    return _MLFLOW_BAD.sub("_", name.replace("->", "_to_"))


def mlflow_uri(log: Any, run_dir: Path) -> str:
    """log.mlflow_uri, else $MLFLOW_TRACKING_URI, else a SQLite store in the run folder (MLflow 3
    refuses new file stores: ./mlruns needs MLFLOW_ALLOW_FILE_STORE)."""
    import os
    return log.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or _local_uri(run_dir)


def _local_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


class MlflowSink(_PhaseSink):
    """An MLflow run in experiment `log.project`, through MlflowClient (no global active run). Params
    are the flattened resolved preset, logged once when the MLflow run is made."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient
        uri = mlflow_uri(cfg.log, run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = self._resumed(tracker_ids(run_dir).get("mlflow"))
        if self.run_id is None:
            artifacts = run_dir / "mlartifacts" if uri == _local_uri(run_dir) else None  # else the store's own
            self.run_id = self._create(cfg, self._experiment(cfg.log.project, artifacts))
            _remember(run_dir, "mlflow", self.run_id)
        self.steps, self.status = _Steps(), "FINISHED"

    def _resumed(self, run_id: str | None) -> str | None:
        if run_id is None:
            return None
        try:
            self.client.update_run(run_id, status="RUNNING")
        except Exception:  # noqa: BLE001 - not in this store (another mlflow_uri): start a new MLflow run
            return None
        return run_id

    def _experiment(self, name: str, artifacts: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifacts.resolve().as_uri() if artifacts else None)

    def _create(self, cfg: Any, experiment_id: str) -> str:
        from mlflow.entities import Param
        run_id = self.client.create_run(experiment_id, run_name=cfg.name).info.run_id
        params = [Param(mlflow_key(k), (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000])
                  for k, v in flatten(_config(cfg)).items()]  # 6000: MLflow's longest param value
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params a call
            self.client.log_batch(run_id, params=params[i:i + 100])
        return run_id

    def _log(self, phase: str, group: str, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), float(v), now, step) for k, v in _named(phase, group, scalars).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, ev: Event) -> None:
        stopped = ev.type == "finished" and ev.get("reason") == "stopped"
        self.status = "FAILED" if ev.type == "failed" else "KILLED" if stopped else "FINISHED"

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status=self.status)
