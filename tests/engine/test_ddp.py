"""Scaling out (docs/distributed.md): N ranks x batch B/N train what 1 rank x batch B trains.

CPU, gloo, 2 processes, deterministic. The launches cost most of the time on a small CPU, so one
torchrun launch (tests/engine/ddp_worker.py) trains every method and writes its losses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fbt_engine import config as C
from fbt_engine import methods
from fbt_engine.errors import ConfigError
from fbt_engine.events import Event, read_events

WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Tolerances (relative, on the global-batch loss; measured: <= 3e-7 at step 1, <= 6e-7 at step 3).
# The two runs add the same float32 numbers in another order: each rank averages half the batch,
# the gradient all-reduce sums the halves, and AdamW's update divides by sqrt(v) + eps, which lets
# such last-bit differences grow a little each step. Nothing else differs: no BatchNorm computes
# batch statistics (ViT student, teacher in eval mode), relational losses gather the global batch.
STEP1_RTOL = 1e-5
STEPK_RTOL = 1e-4


def _run(cmd: list[str], timeout: int = 600) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_ranks_train_what_one_rank_trains_for_every_method(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _run([sys.executable, str(WORKER), str(one)])
    _run([*TORCHRUN, str(WORKER), str(two)])
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    assert set(methods.names()) <= set(a) and {"ofa0", "fbt_fs"} <= set(a)  # every method; unused parameters
    for name in a.keys() - {"world"}:
        la, lb = ([s["loss"] for s in r[name]["steps"]] for r in (a, b))
        assert len(la) == len(lb) == 3, name
        assert lb[0] == pytest.approx(la[0], rel=STEP1_RTOL), name
        assert lb == pytest.approx(la, rel=STEPK_RTOL), name
        for sa, sb in zip(a[name]["steps"], b[name]["steps"]):  # every logged term, not only the total
            assert sb["terms"] == pytest.approx(sa["terms"], rel=STEPK_RTOL, abs=1e-6), name
        d = b[name]["ddp"]  # DDP reduces each trained parameter once and no teacher parameter
        assert d["reduced"] == d["unique_reduced"] == d["trained"] and d["teacher_reduced"] == 0, (name, d)
    for name in ("ofa0", "fbt_fs"):  # parameters left unused: the same ones on 1 and 2 ranks, never updated
        assert a[name]["idle"] == b[name]["idle"] > 0 and a[name]["idle_moved"] == b[name]["idle_moved"] == 0.0
    assert b["crd"]["bank_max_diff"] == 0.0  # CRD's memory bank is the same on both ranks
    # evaluation sharded over 2 ranks without padding: 65 images, 33 + 32, the 1-rank numbers exactly
    assert a["fbt"]["eval0"]["count"] == b["fbt"]["eval0"]["count"] == 65
    assert b["fbt"]["eval0"] == a["fbt"]["eval0"]


def _events(run_dir: Path, type_: str) -> list[Event]:
    return [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event) and e.type == type_]


def _losses(run_dir: Path) -> dict[int, float]:
    return {e.get("step"): e.get("loss") for e in _events(run_dir, "step")}


def test_resume_across_world_sizes(tmp_path):
    """A run stopped mid-epoch by 2 ranks finishes on 1, and one stopped by 1 rank finishes on 2,
    each with the uninterrupted 1-rank run's steps (the same global batches, in the same order)."""
    sys.path.insert(0, str(WORKER.parent))
    import ddp_worker
    from fbt_engine import run as R
    from fbt_engine.checkpoint import save_weights
    from fbt_engine.task import create_teacher
    teacher = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_weights(create_teacher(ddp_worker.preset(""), 10), teacher, "teacher")

    code, full = R.start(ddp_worker.preset(str(teacher)), runs_dir=str(tmp_path / "full"))
    assert code == 0
    reference = _losses(full)
    assert sorted(reference) == [1, 2, 3, 4]

    # 2 ranks stop after step 1 of epoch 1; 1 rank resumes
    _run([*TORCHRUN, str(WORKER), "@run", str(teacher), str(tmp_path / "two"), "1", "1"])
    two = Path((tmp_path / "two" / "where.txt").read_text())
    assert _events(two, "started")[0].get("world_size") == 2
    assert R.resume(two) == 0
    # 1 rank stops after step 1 of epoch 2; 2 ranks resume
    code, one = R.start(ddp_worker.preset(str(teacher)), runs_dir=str(tmp_path / "one"),
                        stop_when=ddp_worker.stop_at(2, 1))
    assert code == 0
    _run([*TORCHRUN, str(WORKER), "@resume", str(one)])
    assert _events(one, "started")[-1].get("world_size") == 2

    val = _events(full, "started")[0].get("dataset")["val"]
    for run in (two, one):
        assert _events(run, "finished")[-1].get("reason") == "completed"
        losses = _losses(run)
        assert sorted(losses) == [1, 2, 3, 4]
        assert [losses[s] for s in sorted(losses)] == pytest.approx([reference[s] for s in sorted(reference)],
                                                                     rel=STEPK_RTOL)
        for ea, eb in zip(_events(full, "eval"), _events(run, "eval")):  # within one image of 65
            assert abs(ea.get("student_top1") - eb.get("student_top1")) <= 100 / val + 1e-9


# --- config: batch_scope, lr_scale, sync_bn --------------------------------------------------

def _cfg(*sets: str) -> C.RunConfig:
    return C.load_preset(TINY, list(sets))


def test_batch_scope_splits_the_global_batch_and_refuses_a_remainder():
    assert C.rank_batch_size(_cfg("train.batch_size=32").train, 4) == 8
    assert C.rank_batch_size(_cfg("train.batch_size=32", "train.batch_scope=\"per_rank\"").train, 4) == 32
    with pytest.raises(ConfigError, match="does not divide over 3 ranks") as err:
        C.rank_batch_size(_cfg("train.batch_size=32").train, 3)
    assert "per_rank" in err.value.hint
    with pytest.raises(ConfigError, match="train.batch_scope"):
        _cfg("train.batch_scope=\"global_\"")


@pytest.mark.parametrize("sets,world,lr", [
    ((), 4, 1e-3),  # none: lr as written
    (("train.lr_scale=\"linear\"",), 1, 1e-3 * 32 / 256),
    (("train.lr_scale=\"linear\"",), 4, 1e-3 * 32 / 256),  # global scope: the global batch is 32 on any world
    (("train.lr_scale=\"linear\"", "train.batch_scope=\"per_rank\""), 4, 1e-3 * 128 / 256),
    (("train.lr_scale=\"sqrt\"", "train.lr_base_size=8"), 2, 1e-3 * 2.0),
])
def test_lr_scale_follows_the_global_batch(sets, world, lr):
    assert C.scaled_lr(_cfg(*sets).train, world) == pytest.approx(lr)


def test_lr_scale_choices_and_base_size_are_validated():
    with pytest.raises(ConfigError, match="train.lr_scale"):
        _cfg("train.lr_scale=\"linear2\"")
    with pytest.raises(ConfigError, match="train.lr_base_size"):
        _cfg("train.lr_base_size=0")


def test_sync_bn_on_cpu_is_refused_before_work_starts():
    from fbt_engine.run import _check_scale_out
    cfg = _cfg("train.sync_bn=true")
    _check_scale_out(cfg, 1, torch.device("cpu"))  # one process: nothing to synchronise
    with pytest.raises(ConfigError, match="needs CUDA"):
        _check_scale_out(cfg, 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="does not divide"):
        _check_scale_out(_cfg("train.batch_size=33"), 2, torch.device("cpu"))


def test_sync_bn_converts_the_trained_modules_only():
    """A CNN student's BatchNorms become SyncBatchNorm holding the same tensors; the teacher's do not."""
    from fbt_engine import ddp
    from fbt_engine.methods._base import Setup, build
    from fbt_engine.task import create_student, create_teacher
    cfg = _cfg("method=\"kd\"", "student.model=\"resnet18\"", "student.kwargs={}")
    module = build(Setup(cfg, create_student(cfg, 10), create_teacher(cfg, 10), 10))
    before = {id(p) for p in module.parameters()}
    ddp.convert_sync_bn(module)
    bns = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]  # noqa: E731
    assert bns(module.student) and all(isinstance(b, torch.nn.SyncBatchNorm) for b in bns(module.student))
    assert not any(isinstance(b, torch.nn.SyncBatchNorm) for b in bns(module.teacher))
    assert {id(p) for p in module.parameters()} == before  # the same parameters: the optimiser sees no change


def test_fbt_shared_parameters_are_one_tensor_for_ddp():
    """The fused model shares the student's modules: DDP lists (and reduces) each shared tensor once."""
    from fbt_engine.methods._base import Setup, build
    from fbt_engine.task import create_student, create_teacher
    cfg = _cfg()
    module = build(Setup(cfg, create_student(cfg, 10), create_teacher(cfg, 10), 10))
    student = {id(p) for p in module.student.parameters()}
    fused = {id(p) for p in module.fused.parameters()}
    assert student & fused, "the fused model shares no student parameter"
    trained = [p for p in module.parameters() if p.requires_grad]  # what DDP iterates (deduplicated)
    assert len(trained) == len({id(p) for p in trained})


def test_ranks_batches_together_are_the_single_process_batch(monkeypatch):
    """data.make_loaders: rank r of W takes samples r, r + W, ... of one seed+epoch order, so the
    ranks' batch k is the 1-process batch k of W times the size, in every epoch (set_epoch); the
    validation shards cover every image once, without padding."""
    from torch.utils.data import TensorDataset
    from fbt_engine.data import make_loaders
    train = TensorDataset(torch.arange(40), torch.zeros(40, dtype=torch.long))
    val = TensorDataset(torch.arange(65), torch.zeros(65, dtype=torch.long))

    def batches(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return [x.tolist() for x, _ in loader]

    one, one_val = make_loaders(train, val, 0, 8, seed=3)
    ranks = []
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    for r in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=r: r)
        ranks.append(make_loaders(train, val, 0, 4, seed=3, distributed=True))
    for epoch in (1, 2):
        single = batches(one, epoch)
        per_rank = [batches(tr, epoch) for tr, _ in ranks]
        assert len(single) == len(per_rank[0]) == len(per_rank[1]) == 5
        for k, b in enumerate(single):
            assert b[0::2] == per_rank[0][k] and b[1::2] == per_rank[1][k]
    assert batches(one, 1) != batches(one, 2)  # set_epoch reshuffles
    shards = [sorted(x for xb, _ in vl for x in xb.tolist()) for _, vl in ranks]
    assert len(shards[0]) == 33 and len(shards[1]) == 32 and sorted(shards[0] + shards[1]) == list(range(65))
