"""Time OFA-KD's own distillation step (Hao840/OFAKD, timm 0.6.5): the reference for issue 9.

Runs inside a separate environment holding OFA-KD's pinned timm (0.6.5) and OFA-KD's source,
NOT in the workbench's venv; `benchmarks/ofakd_compare.py` sets both up in its docstring and calls
this script through that environment's python:

    /work/ofakd-venv/bin/python benchmarks/ofakd_step.py --src /work/ofakd-src \\
        --methods ofa kd --batch 8 --steps 5 --warmup 2 --threads 1

The distiller is built the way OFA-KD's `train.py` builds it: its own argparse parser (every
`parser.add_argument` of train.py's main parser, read from the source file, so the defaults are
train.py's: `--ofa-eps 1`, `--ofa-stage 1 2 3 4`, `--ofa-loss-weight 1`, `--ofa-temperature 1`,
`--gt-loss-weight 1`, `--kd-loss-weight 1`, `--kd-temperature 1`, `--smoothing 0.1`), plus the
options of `configs/imagenet/cnn.yaml` that touch a step (`--opt sgd --lr 0.1 --weight-decay 1e-4`,
`--momentum 0.9`); `timm.create_model` for student and teacher, `custom_forward.register_new_forward`
on both when the distiller `requires_feat`, a frozen teacher in eval mode (random weights: OFA-KD
would load a checkpoint, which does not change the time), the criterion train.py picks
(`LabelSmoothingCrossEntropy(0.1)`: no mixup, `--smoothing 0.1`), the distiller class from
`distillers.get_distiller`, and `create_optimizer_v2(distiller, **optimizer_kwargs(cfg=args))`.
One step is `train_one_epoch`'s body on CPU without AMP: `distiller(input, target, epoch=0)`,
`loss = sum(losses.values())`, the `.item()` logging of each loss, `optimizer.zero_grad()`,
`loss.backward()`, `optimizer.step()` (the per-step LR-scheduler update and data loading are left
out on both sides).

`--parts` also times pieces of an OFA step alone (teacher forward, student forward/backward/SGD
step with CE only, the projector branches and losses from detached student features) and
`--profile` adds the top operators of one step by self CPU time (torch.profiler). The pseudo-method
`teacher` times only the OFA distiller's teacher forward (no grad, eval mode), many times if asked.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median, time_closures  # noqa: E402  (stdlib only: importable from either venv)


def train_parser(src: Path) -> argparse.ArgumentParser:
    """OFA-KD's train.py main parser, rebuilt from its source: every `parser.add_argument(...)`
    after `parser = argparse.ArgumentParser(description='PyTorch ImageNet Training')`, executed on a
    fresh parser (importing train.py itself would need its data stack: yaml, datasets, apex)."""
    tree = ast.parse((src / "train.py").read_text())
    parser = argparse.ArgumentParser(add_help=False)
    started = False
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                ast.unparse(node.value).startswith("argparse.ArgumentParser(description='PyTorch ImageNet"):
            started = True
            continue
        if not (started and isinstance(node, ast.Expr)):
            continue
        # `parser.add_argument(...),` (train.py's `--aa` line ends with a comma) is a tuple expression
        calls = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
        for call in calls:
            if isinstance(call, ast.Call) and ast.unparse(call.func) == "parser.add_argument":
                eval(compile(ast.Expression(call), "train.py", "eval"), {"parser": parser})
    if not started:
        raise SystemExit(f"{src / 'train.py'}: main parser not found")
    return parser




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default="/work/ofakd-src", help="exported OFA-KD source tree")
    ap.add_argument("--methods", nargs="+", default=["ofa", "kd"])
    ap.add_argument("--teacher", default="swin_tiny_patch4_window7_224")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", action="store_true", help="also time the parts of an OFA step alone")
    ap.add_argument("--profile", action="store_true", help="top ops of one step per method (torch.profiler)")
    ap.add_argument("--extra", nargs="*", default=[], help="more train.py options, e.g. --extra=--ofa-eps=1.5")
    a = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    src = Path(a.src).resolve()
    sys.path.insert(0, str(src))

    # OFA-KD's packages (from --src); `custom_model` is train.py's `from custom_model import *`,
    # which registers OFA-KD's extra models
    import custom_model  # noqa: F401
    import timm
    from custom_forward import register_new_forward
    from distillers import get_distiller
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models import create_model
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.utils import random_seed

    parser = train_parser(src)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.img, a.img, generator=g)
    y = torch.randint(0, a.num_classes, (a.batch,), generator=g)

    out: dict = {"side": "ofakd", "timm": timm.__version__, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "ofakd_commit": (src / "COMMIT").read_text().strip()
                 if (src / "COMMIT").exists() else None, "python": platform.python_version(),
                 "times": {}, "extra_params": {}, "student_params": {}}

    def build(method: str):
        args = parser.parse_args([
            "/nonexistent-data", "--model", a.student, "--teacher", a.teacher, "--distiller", method,
            "--num-classes", str(a.num_classes), "--opt", "sgd", "--lr", "0.1", "--momentum", "0.9",
            "--weight-decay", "1e-4", *a.extra])
        random_seed(args.seed, 0)
        Distiller = get_distiller(args.distiller)
        model = create_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes,
                             drop_rate=args.drop, drop_connect_rate=args.drop_connect,
                             drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
                             global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps,
                             checkpoint_path=args.initial_checkpoint)
        if Distiller.requires_feat:
            register_new_forward(model)
        teacher = create_model(args.teacher, num_classes=args.num_classes)
        # train.py: load_checkpoint(teacher, args.teacher_pretrained, ...) -- random weights here
        if Distiller.requires_feat:
            register_new_forward(teacher)
        teacher.requires_grad_(False)
        teacher.eval()
        assert not (args.mixup > 0 or args.cutmix > 0 or args.jsd_loss or args.bce_loss) and args.smoothing
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        distiller = Distiller(model, teacher=teacher, criterion=criterion, args=args, num_data=1281167)
        s_params, e_params = distiller.get_learnable_parameters()
        optimizer = create_optimizer_v2(distiller, **optimizer_kwargs(cfg=args))
        distiller.train()
        return args, distiller, optimizer, s_params, e_params

    def step(distiller, optimizer) -> None:
        _output, losses = distiller(x, y, epoch=0)
        loss = sum(losses.values())
        _ = loss.item()
        for k in losses:
            _ = losses[k].item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def teacher_only(distiller, optimizer) -> None:  # pseudo-method "teacher": OFA's teacher forward alone
        with torch.no_grad():
            distiller.teacher.eval()
            distiller.teacher(x)

    for method in a.methods:
        args, distiller, optimizer, s_params, e_params = build("ofa" if method == "teacher" else method)
        if method == "teacher":
            s_params, e_params = 0, 0
        out["student_params"][method], out["extra_params"][method] = s_params, e_params
        fn = teacher_only if method == "teacher" else step
        out.setdefault("args", {})[method] = {k: getattr(args, k) for k in (
            "opt", "lr", "momentum", "weight_decay", "smoothing", "gt_loss_weight", "kd_loss_weight",
            "kd_temperature", "ofa_eps", "ofa_stage", "ofa_loss_weight", "ofa_temperature", "amp")}
        out.setdefault("criterion", type(distiller.criterion).__name__)
        out.setdefault("optimizer", type(optimizer).__name__)
        for _ in range(a.warmup):
            fn(distiller, optimizer)
        ts = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            fn(distiller, optimizer)
            ts.append(time.perf_counter() - t0)
        out["times"][method] = ts
        if a.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(distiller, optimizer)
            rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
            out.setdefault("profile", {})[method] = [
                {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in rows]
        if a.parts and method == "ofa":
            out["parts"] = time_parts(distiller, args, x, y, a, torch, create_optimizer_v2, optimizer_kwargs)
        del distiller, optimizer

    out["median"] = {m: median(v) for m, v in out["times"].items()}
    print(json.dumps(out))


def time_parts(distiller, args, x, y, a, torch, create_optimizer_v2, optimizer_kwargs) -> dict:
    """Median seconds of the pieces of OFA-KD's OFA step, each alone (same repeat count as steps)."""
    from distillers.ofa import ofa_loss
    from distillers.utils import get_module_dict
    teacher, student = distiller.teacher, distiller.student
    opt_s = create_optimizer_v2(student, **optimizer_kwargs(cfg=args))
    opt_p = create_optimizer_v2(distiller.projector, **optimizer_kwargs(cfg=args))
    with torch.no_grad():
        t_logits = teacher(x)
        _, feats = student(x, requires_feat=True)
    feats = [f.detach() for f in feats]
    target_mask = torch.nn.functional.one_hot(y, a.num_classes)

    def teacher_fwd():
        with torch.no_grad():
            teacher.eval()
            teacher(x)

    def teacher_feat_fwd():  # the teacher as a feature-returning model would run it (requires_feat)
        with torch.no_grad():
            teacher(x, requires_feat=True)

    def student_step():  # student forward (with its stage features) + CE + backward + SGD step
        logits, _ = student(x, requires_feat=True)
        loss = distiller.criterion(logits, y)
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()

    def branches_step():  # projector branches from detached stage features + OFA losses + backward + step
        losses = []
        for stage, eps in zip(args.ofa_stage, args.ofa_eps):
            idx_s, _ = student.stage_info(stage)
            logits = get_module_dict(distiller.projector, stage)(feats[idx_s])
            losses.append(ofa_loss(logits, t_logits, target_mask, eps, args.ofa_temperature))
        loss = sum(losses)
        opt_p.zero_grad()
        loss.backward()
        opt_p.step()

    per_branch = {}
    for stage in args.ofa_stage:
        idx_s, _ = student.stage_info(stage)
        proj = get_module_dict(distiller.projector, stage)
        opt_b = torch.optim.SGD(proj.parameters(), lr=0.0)

        def one(proj=proj, f=feats[idx_s], opt_b=opt_b):
            loss = ofa_loss(proj(f), t_logits, target_mask, 1.0, 1.0)
            opt_b.zero_grad()
            loss.backward()
            opt_b.step()
        per_branch[f"branch{stage}"] = one

    fns = {"teacher_fwd": teacher_fwd, "teacher_fwd_feat": teacher_feat_fwd, "student_step": student_step,
           "branches_step": branches_step, **per_branch}
    return time_closures(fns, a.steps)


if __name__ == "__main__":
    main()
