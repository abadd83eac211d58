"""Trains every method a few steps and writes the global-batch losses to a JSON file.

Run as one process (`python tests/engine/ddp_worker.py OUT.json`) or under torchrun
(`python -m torch.distributed.run --nproc_per_node 2 tests/engine/ddp_worker.py OUT.json`): the
same global batch either way (train.batch_scope = global), so test_ddp.py compares the two files.
One launch covers every method in the registry (start-up dominates on a small CPU).

Models: a frozen ResNet18 teacher (BatchNorm in eval mode: no batch statistics) and a 4-block ViT
student (LayerNorm only), so no BatchNorm computes batch statistics per rank (docs/distributed.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

STEPS = int(os.environ.get("FBT_DDP_STEPS", "3"))  # docs/distributed.md's drift numbers: 24 (3 epochs of 8)
# resume across world sizes (test_ddp.py): kd, 2 epochs of 2 global batches of 16
RESUME_SETS = ["method=\"kd\"", "train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=16",
               "train.threads=1", "train.device=\"cpu\"", "data.val_subset=65", "train.eval_every=1"]


def preset(teacher_file: str):
    from fbt_engine import config as C
    return C.load_preset(Path(__file__).parents[1] / "data" / "tiny.toml",
                         [f"teacher.checkpoint={json.dumps(teacher_file)}", *RESUME_SETS])


def stop_at(epoch: int, epoch_step: int):
    """stop_when: after `epoch_step` steps of epoch `epoch` (1-based)."""
    return lambda loop: loop.state.epoch == epoch - 1 and loop.state.epoch_step == epoch_step


def run_mode(argv: list[str]) -> None:
    """`@run TEACHER RUNS_DIR EPOCH STEP`: start, stop there (RUNS_DIR/where.txt names the folder);
    `@resume RUN_DIR`: resume it to the end."""
    torch.set_num_threads(1)
    from fbt_engine import run as R
    if argv[0] == "@run":
        code, run_dir = R.start(preset(argv[1]), runs_dir=argv[2], stop_when=stop_at(int(argv[3]), int(argv[4])))
        if os.environ.get("RANK", "0") == "0":
            (Path(argv[2]) / "where.txt").write_text(str(run_dir))
    else:
        code = R.resume(argv[1])
    sys.exit(code)


def main(out: str, only: list[str]) -> None:
    torch.set_num_threads(1)
    from fbt_engine import config as C
    from fbt_engine import ddp, methods
    from fbt_engine.data import build_datasets, dataset_labels, make_loaders
    from fbt_engine.methods._base import Setup, build
    from fbt_engine.run import _runtime, seed_everything
    from fbt_engine.task import create_student, create_teacher
    from fbt_engine.trainer import Loop, Phase, evaluate

    base = C.load_preset(Path(__file__).parents[1] / "data" / "tiny.toml")
    epochs = -(-STEPS // 8)  # 128 training images, batches of 16: 8 steps an epoch
    cfg = C.with_overrides(base, [f"train.max_steps_per_epoch={min(STEPS, 8)}", f"train.epochs={epochs}",
                                  "train.threads=1",
                                  "train.device=\"cpu\"", "train.batch_size=16", "data.val_subset=65",
                                  "train.sched=\"none\"", "loss.crd_k=32"])
    rt = _runtime(cfg)
    train_set, val_set, info = build_datasets(cfg.data, cfg.aug, cfg.seed)
    results: dict = {"world": rt.world_size}

    class Record:
        def __init__(self) -> None:
            self.steps: list[dict] = []

        def emit(self, type_: str, **kw: object) -> None:
            if type_ == "step":
                self.steps.append({"loss": kw["loss"], "terms": kw["terms"]})

    cases = [(m, []) for m in methods.names()]
    cases += [("ofa0", ["loss.ofa_branch=0"]), ("fbt_fs", ["loss.paths=[\"f->s\"]"])]  # parameters left unused
    for name, extra in cases:
        if only and name not in only:
            continue
        method = {"ofa0": "ofa", "fbt_fs": "fbt"}.get(name, name)
        mcfg = C.with_overrides(cfg, [f"method=\"{method}\"", *extra])
        seed_everything(mcfg.seed + rt.rank)  # as run.py: each rank its own stream; DDP sends rank 0's weights
        cls = methods.get(method)
        teacher = create_teacher(mcfg, info.num_classes) if cls.needs_teacher else None
        labels = dataset_labels(train_set) if cls.needs_index else None
        module = build(Setup(mcfg, create_student(mcfg, info.num_classes), teacher, info.num_classes, labels))
        per_rank = C.rank_batch_size(mcfg.train, rt.world_size)
        train, val = make_loaders(train_set, val_set, 0, per_rank, mcfg.seed, rt.distributed, "cpu", cls.needs_index)
        rec = Record()
        loop = Loop(Phase("distill", module, mcfg.train, train, val), rt, rec, lambda lp, best: "",
                    lambda lp: False)
        entry: dict = {}
        if name == "fbt":  # evaluation before any step: the same weights on every rank, so exactly equal
            entry["eval0"] = evaluate(loop.module, val, rt, with_teacher=True)
        if rt.distributed:
            trained = {id(p) for p in module.parameters() if p.requires_grad}
            reduced = ddp.reduced_parameters(loop.step_fn)
            teacher_ids = {id(p) for p in module.teacher.parameters()} if module.teacher is not None else set()
            entry["ddp"] = {"reduced": len(reduced), "unique_reduced": len({id(p) for p in reduced}),
                            "trained": len(trained), "teacher_reduced": sum(id(p) in teacher_ids for p in reduced)}
        before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        loop.run()
        entry["steps"] = rec.steps
        # parameters no term reaches (zero weights): no gradient, left as they were (as one process leaves them)
        idle = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        entry["idle"] = len(idle)
        entry["idle_moved"] = max([float((dict(module.named_parameters())[n].detach() - before[n]).abs().max()) for n in idle],
                                  default=0.0)
        if method == "crd":  # the memory bank must be the same on every rank
            bank = module.crd.memory.memory_s.clone()
            if rt.distributed:
                other = bank.clone()
                torch.distributed.broadcast(other, 0)
                entry["bank_max_diff"] = float((other - bank).abs().max())
        results[name] = entry
    if rt.rank == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    if rt.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if sys.argv[1].startswith("@"):
        run_mode(sys.argv[1:])
    else:
        main(sys.argv[1], sys.argv[2:])
