"""Step time of 1 process against N torchrun ranks (DDP), the same global batch: the table in
docs/distributed.md.

    python benchmarks/ddp_step.py                                  # CPU (gloo): 1 and 2 ranks
    python benchmarks/ddp_step.py --ranks 1 2 4 --batch 64 --steps 20 --methods kd fbt
    python benchmarks/ddp_step.py --device cuda --ranks 1 8        # GPUs (NCCL), one rank per GPU

Each case is built as a run builds it (tests/data/tiny.toml's pair: ResNet18 teacher, 4-block ViT
student at 32 px, digits-sized random images; train.batch_scope = global, so every rank count
trains the same global batch) and one step is `Loop.train_step` through DDP: forward, backward
with the gradient all-reduce, optimiser step. 1 rank runs as a plain process (no DDP), N ranks
under `python -m torch.distributed.run`. Each rank uses `--threads` CPU threads (default 1), so N
ranks use N times the cores of 1. The median of `--steps` steps after 3 warm-up steps is reported;
rank 0's time (DDP keeps the ranks in step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from fbt_engine import config as C
    from fbt_engine.methods._base import Setup, build
    from fbt_engine.run import _runtime, seed_everything
    from fbt_engine.task import create_student, create_teacher
    from fbt_engine.trainer import Loop, Phase

    cfg = C.load_preset(ROOT / "tests" / "data" / "tiny.toml",
                        [f"train.batch_size={args.batch}", f"train.device=\"{args.device}\"",
                         f"train.threads={args.threads}", "train.sched=\"none\""])
    rt = _runtime(cfg)
    per_rank = C.rank_batch_size(cfg.train, rt.world_size)
    rows = []

    class Quiet:
        def emit(self, *a: object, **k: object) -> None:
            pass

    for method in args.methods:
        mcfg = C.with_overrides(cfg, [f"method=\"{method}\""])
        seed_everything(mcfg.seed + rt.rank)
        module = build(Setup(mcfg, create_student(mcfg, 10), create_teacher(mcfg, 10), 10))
        loop = Loop(Phase("distill", module, mcfg.train, [None], None), rt, Quiet(), lambda lp, b: "",
                    lambda lp: False)
        g = torch.Generator().manual_seed(rt.rank)
        x = torch.randn(per_rank, 3, mcfg.data.img_size, mcfg.data.img_size, generator=g)
        y = torch.randint(0, 10, (per_rank,), generator=g)
        times = []
        for i in range(3 + args.steps):
            if rt.distributed:
                torch.distributed.barrier()
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loop.train_step(x, y)
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        rows.append({"method": method, "ranks": rt.world_size, "per_rank_batch": per_rank,
                     "step_ms": 1000 * statistics.median(times)})
    if rt.rank == 0:
        Path(args.out).write_text(json.dumps(rows))
    if rt.distributed:
        torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=64, help="the global batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["kd", "fbt"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.out = args.worker
        return worker(args)
    rows = []
    common = ["--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
              "--threads", str(args.threads), "--methods", *args.methods]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            out = Path(tmp) / f"{n}.json"
            launch = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc_per_node", str(n)]
            subprocess.run([*launch, __file__, *common, "--worker", str(out)], check=True, env=env, cwd=ROOT)
            rows += json.loads(out.read_text())
    base = {r["method"]: r["step_ms"] for r in rows if r["ranks"] == min(args.ranks)}
    print(f"{args.device} ({'gloo' if args.device == 'cpu' else 'nccl'}), global batch {args.batch}, "
          f"{args.threads} thread(s) per rank, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, median of {args.steps} steps")
    print(f"| method | ranks | batch per rank | step (ms) | images/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ips = args.batch / (r["step_ms"] / 1000)
        print(f"| {r['method']} | {r['ranks']} | {r['per_rank_batch']} | {r['step_ms']:.0f} | {ips:.0f} | "
              f"{base[r['method']] / r['step_ms']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
