"""`fbt-engine run/resume --gpus N` (or `--nproc-per-node N`): torchrun started for the user.

The command checks the preset once (as `run` does), then runs torchrun's own `main` with

    [rendezvous] --nproc-per-node N --max-restarts 0 \\
        -m fbt_engine.cli run PRESET [--set ...] [--name ...] [--runs-dir ...] [--jsonl]

in its own session, so the terminal's Ctrl-C reaches the launcher only, which forwards it once:
torchrun passes it to every rank (each finishes its step, rank 0 saves a checkpoint, exit 0); a
second Ctrl-C goes straight to the ranks (abort at once). If the launcher itself is killed,
torchrun gets SIGTERM (the parent-death signal) and stops the ranks the same way. Typing
`torchrun ... -m fbt_engine.cli run PRESET` by hand stays equivalent.

One node: `--standalone` rendezvous (a free port on localhost). Several nodes: either a static
`--master HOST:PORT` with `--node-rank R` on each node, or a `--rdzv-endpoint HOST:PORT` with a
`--rdzv-id` shared by the nodes (torchrun's c10d rendezvous; ranks are assigned on arrival).

Exit code: that of the run (0 done or stopped, 2 user error, 1 failure), read from the run's last
event; when rank 0 died without writing one, the launcher writes the `failed` event from the
ranks' notes (ranks.py) and exits 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import FBTError

# The options `run` and `resume` share (Annotated, as the rest of cli.py).
Gpus = Annotated[Optional[int], typer.Option(
    "--gpus", min=1, help="Train on N local GPUs, one process each (torchrun is started for you).")]
NprocPerNode = Annotated[Optional[int], typer.Option(
    "--nproc-per-node", min=1, help="Processes per node on the preset's device (torchrun's option; on a "
                                    "CPU-only machine: N gloo processes).")]
Nodes = Annotated[int, typer.Option("--nodes", min=1, help="Nodes taking part (torchrun --nnodes).")]
NodeRank = Annotated[Optional[int], typer.Option(
    "--node-rank", min=0, help="This node's rank, 0..nodes-1 (with --master).")]
Master = Annotated[str, typer.Option(
    "--master", help="HOST:PORT of node 0 (static rendezvous, with --node-rank on every node).")]
RdzvEndpoint = Annotated[str, typer.Option(
    "--rdzv-endpoint", help="HOST:PORT of the c10d rendezvous (instead of --master; node ranks are assigned).")]
RdzvId = Annotated[str, typer.Option("--rdzv-id", help="Job id shared by the nodes of one job (with --rdzv-endpoint).")]
RdzvBackend = Annotated[str, typer.Option("--rdzv-backend", help="torchrun rendezvous backend (c10d, etcd-v2...).")]


@dataclass(frozen=True)
class Launch:
    """How many processes where, and how they meet (torchrun's terms)."""

    nproc: int
    gpus: bool = False
    nodes: int = 1
    node_rank: Optional[int] = None
    master: str = ""
    rdzv_endpoint: str = ""
    rdzv_id: str = ""
    rdzv_backend: str = "c10d"


def wanted(gpus: Optional[int], nproc: Optional[int], nodes: int = 1, node_rank: Optional[int] = None,
           master: str = "", rdzv_endpoint: str = "", rdzv_id: str = "", rdzv_backend: str = "c10d") -> Optional[Launch]:
    """The launch the options ask for, or None for a plain one-process run. Raises FBTError."""
    if gpus is None and nproc is None:
        if nodes > 1 or master or rdzv_endpoint or node_rank is not None:
            raise FBTError("--nodes, --node-rank, --master and --rdzv-endpoint need --gpus N or --nproc-per-node N",
                           "e.g. fbt-engine run PRESET --gpus 8 --nodes 2 --node-rank 0 --master node0:29500")
        return None
    if gpus is not None and nproc is not None:
        raise FBTError("give either --gpus or --nproc-per-node, not both",
                       "--gpus N: one process per GPU; --nproc-per-node N: N processes on the preset's device")
    launch = Launch(nproc=gpus or nproc or 1, gpus=gpus is not None, nodes=nodes, node_rank=node_rank, master=master,
                    rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id, rdzv_backend=rdzv_backend or "c10d")
    _check(launch)
    return launch


def _check(launch: Launch) -> None:
    if launch.master and launch.rdzv_endpoint:
        raise FBTError("give either --master (static) or --rdzv-endpoint (c10d rendezvous), not both",
                       "--master HOST:PORT with --node-rank R on each node, or --rdzv-endpoint HOST:PORT --rdzv-id JOB")
    for flag, value in (("--master", launch.master), ("--rdzv-endpoint", launch.rdzv_endpoint)):
        host, _, port = value.rpartition(":")
        if value and not (host and port.isdigit()):
            raise FBTError(f"{flag} {value!r} is not HOST:PORT", f"e.g. {flag} node0.cluster:29500")
    if launch.nodes > 1 and not (launch.master or launch.rdzv_endpoint):
        raise FBTError(f"--nodes {launch.nodes} needs a meeting point: --master HOST:PORT or --rdzv-endpoint HOST:PORT",
                       "node 0's address and a free port, the same on every node")
    if launch.master and launch.node_rank is None and launch.nodes > 1:
        raise FBTError("--master needs --node-rank on each node (0 on the master's node)",
                       "or use --rdzv-endpoint HOST:PORT --rdzv-id JOB, which assigns node ranks")
    if launch.node_rank is not None and not 0 <= launch.node_rank < launch.nodes:
        raise FBTError(f"--node-rank {launch.node_rank} is outside 0..{launch.nodes - 1}",
                       f"number the nodes 0 to {launch.nodes - 1} (--nodes {launch.nodes})")
    if launch.gpus:
        check_gpus(launch.nproc, gpu_count())


def gpu_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(wanted_gpus: int, visible: int) -> None:
    if wanted_gpus > visible:
        raise FBTError(f"--gpus {wanted_gpus} needs {wanted_gpus} CUDA GPUs; this machine shows {visible}",
                       f"use --gpus {visible} or fewer" if visible else
                       f"to try several processes on the CPU (gloo), use --nproc-per-node {wanted_gpus}")


def run_folder(path: str) -> Path:
    """The run folder `resume --gpus` continues, checked before any rank starts."""
    from .sweep import is_sweep
    if is_sweep(path):
        raise FBTError(f"{path!r} is a sweep: its runs resume one process each",
                       f"fbt-engine resume {path} (without --gpus/--nproc-per-node)")
    if not (Path(path) / "config.toml").is_file():
        raise FBTError(f"{path!r} is not a run folder (it has no config.toml)",
                       "give a folder under runs/, e.g. runs/quickstart")
    return Path(path)


def torchrun_args(launch: Launch, command: list[str]) -> list[str]:
    """torchrun's arguments for `command` (the `fbt_engine.cli` arguments of one rank): what a user
    would type after `torchrun`."""
    argv: list[str] = []
    if launch.nodes == 1 and not (launch.master or launch.rdzv_endpoint):
        argv += ["--standalone"]
    else:
        argv += ["--nnodes", str(launch.nodes)]
    if launch.master:
        host, _, port = launch.master.rpartition(":")
        argv += ["--master-addr", host, "--master-port", port, "--node-rank", str(launch.node_rank or 0)]
    if launch.rdzv_endpoint:
        argv += ["--rdzv-backend", launch.rdzv_backend, "--rdzv-endpoint", launch.rdzv_endpoint]
        argv += ["--rdzv-id", launch.rdzv_id] if launch.rdzv_id else []
    argv += ["--nproc-per-node", str(launch.nproc), "--max-restarts", "0", "-m", "fbt_engine.cli", *command]
    return argv


def torchrun_argv(launch: Launch, command: list[str]) -> list[str]:
    """The process the launcher starts: torchrun's own `main` through this module (see `_torchrun`)."""
    return [sys.executable, "-m", "fbt_engine.launch", *torchrun_args(launch, command)]


def rank_command(verb: str, target: str, sets: list[str] | None = None, name: Optional[str] = None,
                 runs_dir: Optional[str] = None, jsonl: bool = False) -> list[str]:
    """What each rank runs: the same `run`/`resume` without the launch options."""
    cmd = [verb, target]
    for s in sets or []:
        cmd += ["--set", s]
    cmd += ["--name", name] if name is not None else []
    cmd += ["--runs-dir", runs_dir] if runs_dir is not None else []
    return cmd + (["--jsonl"] if jsonl else [])


def execute(launch: Launch, command: list[str], jsonl: bool = False, run_dir: Path | None = None) -> int:
    """Run torchrun until it exits; returns the run's exit code (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="fbt-launch-") as tmp:
        marker = Path(tmp) / "run_dir"
        env = {**os.environ, "FBT_LAUNCH_RUN_FILE": str(marker)}
        proc = subprocess.Popen(torchrun_argv(launch, command), env=env, start_new_session=True,
                                preexec_fn=_stop_with_parent)
        code = _wait(proc)
        if run_dir is None and marker.is_file():
            run_dir = Path(marker.read_text())
    return settle(run_dir, code, jsonl) if run_dir is not None else code


def _stop_with_parent() -> None:
    """In torchrun's process, before it starts: when the launcher dies (SIGKILL, a TUI's kill),
    torchrun gets SIGTERM and stops its ranks (they are in sessions of their own) instead of
    training on as orphans. Linux only; elsewhere nothing."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait(proc: subprocess.Popen) -> int:
    """Wait for torchrun, forwarding SIGINT/SIGTERM: the first to torchrun (a graceful stop of every
    rank), a second SIGINT to the ranks themselves (abort). SIGHUP is ignored (the ranks keep
    training when the terminal closes; their notes say so in log.txt)."""
    count = [0]

    def forward(signum: int, _frame: Any) -> None:
        count[0] += 1
        targets = [proc.pid] if count[0] == 1 else _children(proc.pid)
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # pragma: no cover - the handler above replaces it
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _children(pid: int) -> list[int]:
    """The ranks: torchrun's child processes (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def settle(run_dir: Path, torchrun_code: int, jsonl: bool = False) -> int:
    """The run's exit code from its last event; when rank 0 died without writing one, write it here."""
    from .events import Emitter, Event, read_events
    from .protocol import FAILED_KINDS
    from .ranks import RankBoard
    path = run_dir / "events.jsonl"
    events = [e for e in read_events(path) if isinstance(e, Event)] if path.is_file() else []
    ends = [e for e in events if e.type in ("started", "finished", "failed")]
    if ends and ends[-1].type == "finished":
        return 0 if torchrun_code == 0 or ends[-1].get("reason") == "stopped" else torchrun_code
    if ends and ends[-1].type == "failed":
        return FAILED_KINDS.get(ends[-1].get("kind"), (1, ""))[0]
    if torchrun_code == 0:
        return 0
    attempts = sorted((p for p in (run_dir / "ranks").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    board = RankBoard(attempts[-1], 0, len(list(attempts[-1].glob("rank-*[0-9].json")))) if attempts else None
    found = board.culprit(wait_s=0.0) if board is not None else None
    rank, kind, message = found if found else (None, "rank_lost", "a rank ended without reporting an error")
    kind = kind if kind in ("rank_lost", "hang") else "rank_failed"
    if kind == "rank_failed":
        message = f"rank {rank} failed: {message}"
    t0 = events[-1].t if events else 0.0
    Emitter(run_dir.name, path, sys.stdout if jsonl else None, t_offset=t0).emit(
        "failed", kind=kind, rank=rank, message=message,
        hint=f"written by the launcher (rank 0 ended without a word); the ranks' output is above. "
             f"{_resume_hint(run_dir)}")
    return 1


def _resume_hint(run_dir: Path) -> str:
    ckpts = run_dir / "checkpoints"
    if any((ckpts / n).is_file() for n in ("last.pt", "teacher-last.pt")):
        return f"the last checkpoint is kept: fbt-engine resume {run_dir}"
    return "no checkpoint had been written yet: start the run again with `fbt-engine run`"


def _torchrun(argv: list[str]) -> int:
    """torchrun (`torch.distributed.run.main`), except that a stop forwarded by the launcher ends
    without torchrun's SignalException traceback (the ranks have stopped and saved by then); a
    rank's failure still prints torchrun's summary of which rank failed how."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main
    try:
        main(argv)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun(sys.argv[1:]))
