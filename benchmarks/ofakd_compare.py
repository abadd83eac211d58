"""Our `ofa` (and `kd`) step against OFA-KD's own, same pair, batch and thread count (issue 9).

OFA-KD (Hao840/OFAKD) pins timm 0.6.5, so its side runs in a separate environment through
`benchmarks/ofakd_step.py`; our side runs in this venv. Set the other environment up once:

    python3 -m venv /work/ofakd-venv
    /work/ofakd-venv/bin/pip install torch==2.14.1 torchvision==0.29.1   # the same torch as ours
    /work/ofakd-venv/bin/pip install --no-deps timm==0.6.5             # OFA-KD's pin (needs only torch, torchvision)
    R=/path/to/OFAKD   # a git clone of Hao840/OFAKD (or its bare repository: use --git-dir=$R)
    mkdir -p /work/ofakd-src && cd /work/ofakd-src   # export the source files the distillers need
    for f in $(git -C $R ls-tree -r --name-only HEAD |
               grep -E '^(custom_forward|custom_model|distillers)/.*\\.py$|^train\\.py$'); do
        mkdir -p $(dirname $f); git -C $R show HEAD:$f > $f; done
    git -C $R rev-parse HEAD > COMMIT

Then, from the repository root:

    python benchmarks/ofakd_compare.py --rounds 3 --steps 5 --warmup 2 --parts \\
        --out /tmp/ofakd_compare.json

Every measurement is a fresh subprocess with `OMP_NUM_THREADS=N` and `torch.set_num_threads(N)`,
one at a time; rounds alternate the two sides (OFA-KD, ours, ours, OFA-KD, ...) so load drift on
a shared machine hits both. Within a subprocess each method is built, warmed up (`--warmup`
steps) and timed for `--steps` steps on one fixed random batch; the table gives the median over
all timed steps of all rounds. Our step is `trainer.Loop.train_step` of the method built as a run
builds it (`_common.pair_config` / `build_loop`: quickstart preset + the pair + SGD lr 0.1
momentum 0.9, weight decay 1e-4, label smoothing 0.1, AMP off); OFA-KD's is its `train.py` step
(see `ofakd_step.py`). Extra parameters are everything trainable outside student and teacher
(OFA-KD's `BaseDistiller.get_learnable_parameters()` definition, applied to our module too).

`--methods teacher` times only the teacher forward of the ofa method (no grad), on both sides.
`--parts` adds one more subprocess per side that times the pieces of an OFA step alone (teacher
forward, student forward/backward/step with CE only, the branches + OFA losses from detached
student features, each branch alone); `--profile` adds the top operators of one step per method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median, time_closures  # noqa: E402  (stdlib only: importable from either venv)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAIR = "swin_tiny_patch4_window7_224->resnet18@224:{batch}:1000"
OVERRIDES = ["train.optimizer=sgd", "train.lr=0.1", "train.momentum=0.9", "train.weight_decay=1e-4",
             "train.amp=off", "aug.label_smoothing=0.1"]




# --- our side (runs in a subprocess of this venv) ------------------------------------------------

def ofa_loss(logits_s, logits_t, target_mask, eps: float = 1.0, temperature: float = 1.0):
    """OFA-KD's `ofa_loss` (distillers/ofa.py), used only to time our branches alone."""
    import torch
    import torch.nn.functional as F
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t / temperature, dim=1)
    prod = (p_t + target_mask) ** eps
    return torch.sum(-(prod - target_mask) * torch.log(p_s), dim=-1).mean()


def worker_ours(a: argparse.Namespace) -> None:
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(a.threads)
    root = Path(a.engine_root).resolve()
    sys.path[:0] = [str(root / "benchmarks"), str(root)]
    import _common as B
    import timm

    pair = B.parse_pair(PAIR.format(batch=a.batch))
    out: dict = {"side": "ours", "timm": timm.__version__, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "times": {}, "extra_params": {}, "student_params": {}}
    for method in a.methods:
        cfg = B.pair_config(pair, "ofa" if method == "teacher" else method, OVERRIDES + [f"train.threads={a.threads}"])
        rt = B.runtime_for(cfg)
        loop = B.build_loop(cfg, pair.num_classes, rt)
        torch.set_num_threads(a.threads)  # in case building the loop applied train.threads differently
        x, y = B.make_batch(pair, rt.device)
        m = loop.module
        s_params = sum(p.numel() for p in m.student.parameters())
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        out["student_params"][method], out["extra_params"][method] = s_params, trainable - s_params
        out.setdefault("optimizer", type(loop.optimizer).__name__)

        def fn(loop=loop, m=m, x=x, y=y, teacher=method == "teacher"):
            if teacher:  # pseudo-method "teacher": the ofa method's teacher forward alone
                with torch.no_grad():
                    m.teacher(x)
            else:
                loop.train_step(x, y)
        if method == "teacher":
            out["student_params"][method] = out["extra_params"][method] = 0
        for _ in range(a.warmup):
            fn()
        ts = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out["times"][method] = ts
        if a.profile:
            out.setdefault("profile", {})[method] = B.profile_step(fn, rt.device, top=25)
        if a.parts and method == "ofa":
            out["parts"] = ours_parts(loop, x, y, a, B)
            try:
                out["breakdown_ms"] = B.step_breakdown(loop, x, y, repeats=a.steps)
            except Exception as e:  # noqa: BLE001  (internals the engine may rename: keep the timings)
                out["breakdown_ms"] = {"error": repr(e)}
        del loop, m
    out["median"] = {k: median(v) for k, v in out["times"].items()}
    print(json.dumps(out))


def ours_parts(loop, x, y, a: argparse.Namespace, B) -> dict:
    """Median seconds of the pieces of our OFA step, each alone: the same pieces ofakd_step.py times."""
    import torch
    import torch.nn.functional as F

    from fbt_engine.trainer import build_optimizer
    m = loop.module
    tc = loop.phase.tc
    teacher, student = m.teacher, m.student
    adapter = getattr(m, "s", None)
    branches = getattr(m, "branches", None)
    if adapter is None or branches is None:  # the method's internals moved: find them by type
        for sub in m.modules():
            if branches is None and type(sub).__name__ == "OFABranches":
                branches = sub
        adapter = adapter or _find_attr(m, "forward_stages")
    opt_s = build_optimizer(student, tc)
    opt_b = build_optimizer(branches, tc)
    with torch.no_grad():
        t_logits = teacher(x)
        feats = [f.detach() for f in adapter.forward_stages(x)]
    target_mask = F.one_hot(y, t_logits.shape[1])

    def teacher_fwd():
        with torch.no_grad():
            teacher(x)

    from fbt_engine.adapters import get_adapter
    ta = get_adapter(teacher, "swin_tiny_patch4_window7_224")

    def teacher_fwd_stages():  # the teacher through our adapter, keeping every stage output (as fbt runs it)
        with torch.no_grad():
            ta.head_and_pooled(ta.forward_stages(x)[-1])

    def student_step():
        outs = adapter.forward_stages(x)
        logits, _ = adapter.head_and_pooled(outs[-1])
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()

    def branches_step():
        loss = sum(ofa_loss(lg, t_logits, target_mask) for lg in branches(feats))
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()

    per_branch = {}
    for i, (stage, br) in enumerate(zip(branches.stages, branches.branches)):
        f = feats[stage - 1]
        ob = torch.optim.SGD(br.parameters(), lr=0.0)

        def one(br=br, f=f, ob=ob):
            loss = ofa_loss(br(f), t_logits, target_mask)
            ob.zero_grad(set_to_none=True)
            loss.backward()
            ob.step()
        per_branch[f"branch{stage}"] = one

    fns = {"teacher_fwd": teacher_fwd, "teacher_fwd_feat": teacher_fwd_stages, "student_step": student_step,
           "branches_step": branches_step, **per_branch}
    return time_closures(fns, a.steps)


def _find_attr(module, name: str):
    for v in vars(module).values():
        if hasattr(v, name):
            return v
    raise RuntimeError(f"no object with .{name} on {type(module).__name__}")


# --- the driver ------------------------------------------------------------------------------------

def run_side(side: str, a: argparse.Namespace, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    common = ["--methods", *a.methods, "--batch", str(a.batch), "--steps", str(a.steps),
              "--warmup", str(a.warmup), "--threads", str(a.threads), *extra]
    if side == "ofakd":
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        cmd = [a.ofakd_python, str(HERE / "ofakd_step.py"), "--src", a.ofakd_src, *common]
    else:
        env["PYTHONPATH"] = str(Path(a.engine_root).resolve())
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "ours", "--engine-root", a.engine_root,
               *common]
    t0 = time.perf_counter()
    for attempt in range(a.retries + 1):
        p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        if p.returncode == 0:
            break
        print(f"[{side}] exit {p.returncode} (attempt {attempt + 1}):\n{p.stderr[-3000:]}", file=sys.stderr)
        if attempt < a.retries:
            time.sleep(a.retry_wait)
    else:
        raise SystemExit(f"{side} side failed")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def load_note() -> str:
    try:
        return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    ap.add_argument("--methods", nargs="+", default=["ofa", "kd"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--parts", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ofakd-python", default="/work/ofakd-venv/bin/python")
    ap.add_argument("--ofakd-src", default="/work/ofakd-src")
    ap.add_argument("--retries", type=int, default=2, help="retries of a failed side (our imports may be mid-refactor)")
    ap.add_argument("--retry-wait", type=float, default=180.0)
    ap.add_argument("--engine-root", default=str(ROOT),
                    help="checkout whose fbt_engine and benchmarks/_common.py our side uses (default: this one)")
    ap.add_argument("--out", help="write all raw results as JSON here")
    a = ap.parse_args()
    if a.worker == "ours":
        worker_ours(a)
        return

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rounds = []
    for r in range(a.rounds):
        order = ("ofakd", "ours") if r % 2 == 0 else ("ours", "ofakd")
        for side in order:
            before = load_note()
            res = run_side(side, a, [])
            res["round"], res["load_before"], res["load_after"] = r, before, load_note()
            rounds.append(res)
            print(f"round {r} {side:5s}: " + "  ".join(f"{m} {res['median'][m]:.3f}s" for m in a.methods)
                  + f"  ({before} -> {res['load_after']})", file=sys.stderr, flush=True)
    extras = {}
    if a.parts or a.profile:
        flags = (["--parts"] if a.parts else []) + (["--profile"] if a.profile else [])
        for side in ("ofakd", "ours"):
            extras[side] = run_side(side, a, flags)
            print(f"parts/profile {side} done", file=sys.stderr, flush=True)

    table = []
    for m in a.methods:
        ours = [t for res in rounds if res["side"] == "ours" for t in res["times"][m]]
        theirs = [t for res in rounds if res["side"] == "ofakd" for t in res["times"][m]]
        ro = [res["median"][m] for res in rounds if res["side"] == "ours"]
        rt = [res["median"][m] for res in rounds if res["side"] == "ofakd"]
        extra_o = next(res["extra_params"][m] for res in rounds if res["side"] == "ours")
        extra_t = next(res["extra_params"][m] for res in rounds if res["side"] == "ofakd")
        table.append({"method": m, "ours_s": median(ours), "ofakd_s": median(theirs),
                      "ratio": median(ours) / median(theirs), "ours_rounds": ro, "ofakd_rounds": rt,
                      "ours_extra_params": extra_o, "ofakd_extra_params": extra_t})

    sides = {res["side"]: res for res in rounds}
    meta = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "pair": PAIR.format(batch=a.batch), "threads": a.threads, "rounds": a.rounds,
            "steps": a.steps, "warmup": a.warmup, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "ours": {k: sides["ours"].get(k) for k in ("timm", "torch", "optimizer")},
            "ofakd": {k: sides["ofakd"].get(k) for k in ("timm", "torch", "optimizer", "criterion", "ofakd_commit")},
            "overrides": OVERRIDES + [f"train.threads={a.threads}"], "argv": sys.argv[1:]}
    root = Path(a.engine_root).resolve()
    git = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=False,
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "fbt_engine",
                            "benchmarks/_common.py"], check=False, capture_output=True, text=True)
    meta["engine"] = {"root": str(root), "head": git.stdout.strip() or None,
                      "uncommitted_engine_changes": bool(dirty.stdout.strip()) if git.returncode == 0 else None}
    try:
        with open("/proc/cpuinfo") as f:
            meta["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    lines = [("| method | ours s/step (median) | OFA-KD s/step (median) | ours / OFA-KD | per-round medians ours"
              " | per-round medians OFA-KD | extra params ours | extra params OFA-KD |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table:
        lines.append(f"| {row['method']} | {row['ours_s']:.3f} | {row['ofakd_s']:.3f} | {row['ratio']:.3f} | "
                     + " ".join(f"{v:.3f}" for v in row["ours_rounds"]) + " | "
                     + " ".join(f"{v:.3f}" for v in row["ofakd_rounds"]) + " | "
                     + f"{row['ours_extra_params']:,} | {row['ofakd_extra_params']:,} |")
    if extras:
        keys = list(dict.fromkeys(k for s in extras.values() for k in s.get("parts", {})))
        if keys:
            lines += ["", "| part (alone, median s) | ours | OFA-KD | ours / OFA-KD |", "| --- | --- | --- | --- |"]
            for k in keys:
                o, t = extras.get("ours", {}).get("parts", {}).get(k), extras.get("ofakd", {}).get("parts", {}).get(k)
                ratio = f"{o / t:.3f}" if o and t else "-"
                lines.append(f"| {k} | {o:.3f} | {t:.3f} | {ratio} |" if o and t else f"| {k} | {o} | {t} | - |")
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text(json.dumps({"meta": meta, "table": table, "rounds": rounds, "extras": extras},
                                          indent=1) + "\n")


if __name__ == "__main__":
    main()
