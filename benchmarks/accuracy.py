"""Student top-1 of scratch, kd, ofa and fbt on Fashion-MNIST, for two heterogeneous pairs, 3 seeds.

    python benchmarks/accuracy.py --quick                                   # a few minutes
    nohup python benchmarks/accuracy.py --out benchmarks/results/accuracy-full.json \
        > benchmarks/results/accuracy-full.log 2>&1 &                      # the full benchmark

Pairs (both at 32x32, the 28x28 images resized; batch 64, AdamW):
  cnn->vit  resnet18 teacher -> vit_tiny_patch16_224 student (patch 8: a 4x4 grid; depth 6, stages 1-1-3-1)
  vit->cnn  vit_tiny_patch16_224 teacher (patch 8, depth 6) -> resnet18 student
Sizes (full): 3,200 training images (seeded subset of the 60k), 2,000 test images, students 5 epochs
(250 steps), teachers 8 epochs; quick: 640 / 500, 2 epochs, teachers 2 epochs, seed 0 only.
Every run goes through `fbt_engine.run.start` (the same code as `fbt-engine run`). Each teacher is
trained once, in the pipeline: the first run of a pair has `[teacher.train]` and a checkpoint path
that does not exist yet, so it trains and saves the teacher there; every later run of the pair
loads it. The student budget (subset, epochs, lr) is the same for every method. The reported top-1
is the student's at the last epoch (the val set is Fashion-MNIST's test split, so picking the best
epoch would select on the test set); the best-epoch value is kept in the JSON too.

The JSON (--out) is rewritten after every run; `--resume` skips the runs it already holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fbt_engine.methods import names as _method_names

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METHODS = _method_names()  # the registry: every method in fbt_engine/methods/

VIT_S = {"model": "vit_tiny_patch16_224", "kwargs": {"patch_size": 8, "depth": 6}}
PAIRS: dict[str, dict[str, Any]] = {
    "cnn->vit": {"teacher": {"model": "resnet18"}, "student": VIT_S},
    "vit->cnn": {"teacher": VIT_S, "student": {"model": "resnet18"}},
}

# Sizes. full: under 2 hours on a 2-core CPU (see docs/benchmarks.md for the measured time).
MODES = {
    "full": dict(train_subset=3200, val_subset=2000, epochs=5, teacher_epochs=8, seeds=[0, 1, 2]),
    "quick": dict(train_subset=640, val_subset=500, epochs=2, teacher_epochs=2, seeds=[0]),
}


def base_config(pair: str, mode: dict[str, Any], teacher_ckpt: Path, method: str, seed: int) -> dict[str, Any]:
    p = PAIRS[pair]
    return {
        "name": f"{pair.replace('->', '2')}-{method}-s{seed}",
        "method": method,
        "seed": seed,
        "teacher": {**p["teacher"], "checkpoint": str(teacher_ckpt),
                    "train": {"epochs": mode["teacher_epochs"], "lr": 2e-3, "weight_decay": 0.05}},
        "student": dict(p["student"]),
        "data": {"name": "fashion_mnist", "img_size": 32, "train_subset": mode["train_subset"],
                 "val_subset": mode["val_subset"]},
        "aug": {"hflip": 0.5},
        "train": {"epochs": mode["epochs"], "batch_size": 64, "optimizer": "adamw", "lr": 1e-3,
                  "min_lr": 1e-5, "weight_decay": 0.05, "warmup_epochs": 0, "log_every": 25,
                  "device": "cpu", "sched": "cosine"},
    }


def read_run(run_dir: Path) -> dict[str, Any]:
    """Accuracies and phase times from a run's events.jsonl."""
    from fbt_engine.events import Event, read_events
    evs = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event)]
    distill_t = next((e.t for e in evs if e.type == "phase" and e.get("phase") == "distill"), 0.0)
    fin = next((e for e in reversed(evs) if e.type in ("finished", "failed")), None)
    evals = [e for e in evs if e.type == "eval" and e.get("phase") == "distill"]
    t_evals = [e for e in evs if e.type == "eval" and e.get("phase") == "teacher"]
    last = evals[-1].data if evals else {}
    out = {"status": fin.type if fin else "unknown", "reason": fin.get("reason") if fin else None, "student_top1": last.get("student_top1"),
           "best_top1": max((e.get("student_top1") or 0) for e in evals) if evals else None,
           "fused_top1": last.get("fused_top1"), "teacher_top1": last.get("teacher_top1"),
           "student_s": round((fin.t if fin else 0.0) - distill_t, 1),
           "curve": [round(e.get("student_top1") or 0, 2) for e in evals]}
    if t_evals:
        out["teacher_trained_here_s"] = round(distill_t, 1)
        out["teacher_curve"] = [round(e.get("teacher_top1") or 0, 2) for e in t_evals]
    if fin is not None and fin.type == "failed":
        out["error"] = f"{fin.get('kind')}: {fin.get('message')}"
    return out


def summarise(rows: list[dict[str, Any]], pairs: list[str], methods: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for pair in pairs:
        summary[pair] = {}
        for m in methods:
            vals = [r["student_top1"] for r in rows if r["pair"] == pair and r["method"] == m
                    and r.get("student_top1") is not None]
            secs = [r["student_s"] for r in rows if r["pair"] == pair and r["method"] == m]
            if vals:
                summary[pair][m] = {"mean": statistics.fmean(vals),
                                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                    "n": len(vals), "values": vals, "mean_student_s": statistics.fmean(secs)}
    return summary


def print_summary(doc: dict[str, Any]) -> None:
    s, teachers = doc["summary"], doc.get("teachers", {})
    methods = [m for m in METHODS if any(m in v for v in s.values())]
    print(f"\nFashion-MNIST, student top-1 % at the last epoch (mean ± std over seeds {doc['seeds']}); "
          f"{doc['mode']} mode: train {doc['sizes']['train_subset']}, val {doc['sizes']['val_subset']}, "
          f"{doc['sizes']['epochs']} epochs")
    head = f"{'pair':<10}{'teacher':>9}" + "".join(f"{m:>15}" for m in methods)
    print(head)
    for pair, per in s.items():
        t = teachers.get(pair, {}).get("top1")
        line = f"{pair:<10}{(f'{t:.2f}' if t is not None else '-'):>9}"
        for m in methods:
            v = per.get(m)
            cell = f"{v['mean']:.2f} ± {v['std']:.2f}" if v else "-"
            line += f"{cell:>15}"
        print(line)
    print(f"{'s/run':<19}" + "".join(
        f"{statistics.fmean([per[m]['mean_student_s'] for per in s.values() if m in per]):>15.0f}"
        if any(m in per for per in s.values()) else f"{'-':>15}" for m in methods))
    print(f"total time {doc['total_s'] / 60:.1f} min ({doc['machine']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny subset, 2 epochs, 1 seed: a few minutes")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (quick: 0)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--teacher-epochs", type=int)
    ap.add_argument("--train-subset", type=int)
    ap.add_argument("--val-subset", type=int)
    ap.add_argument("--set", action="append", default=[], help="override for every run, e.g. loss.nce=0.5")
    ap.add_argument("--fbt-set", action="append", default=[], help="override for fbt runs only")
    ap.add_argument("--tag", default="", help="suffix of the runs/teachers folders (default: the mode)")
    ap.add_argument("--teachers-dir", help="where teacher checkpoints live (default benchmarks/results/teachers-<tag>);"
                                           " point at another tag's folder to reuse its teachers")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/accuracy-<mode>.json)")
    ap.add_argument("--resume", action="store_true", help="skip runs already in --out")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from fbt_engine import config as C
    from fbt_engine.run import start
    if args.threads:
        torch.set_num_threads(args.threads)

    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    for key in ("epochs", "teacher_epochs", "train_subset", "val_subset", "seeds"):
        if getattr(args, key) is not None:
            mode[key] = getattr(args, key)
    tag = args.tag or mode_name
    out = Path(args.out or RESULTS / f"accuracy-{tag}.json")
    runs_dir = RESULTS / f"runs-{tag}"
    teachers_dir = Path(args.teachers_dir) if args.teachers_dir else RESULTS / f"teachers-{tag}"
    rows: list[dict[str, Any]] = []
    teachers: dict[str, Any] = {}
    if args.resume and out.is_file():
        old = json.loads(out.read_text())
        rows, teachers = old.get("rows", []), old.get("teachers", {})
    done = {(r["pair"], r["method"], r["seed"]) for r in rows
            if r.get("status") == "finished" and r.get("reason") == "completed"}
    rows = [r for r in rows if (r["pair"], r["method"], r["seed"]) in done]
    load = os.getloadavg()
    t_start = time.time()
    prev_total = json.loads(out.read_text()).get("total_s", 0.0) if args.resume and out.is_file() else 0.0
    doc: dict[str, Any] = {}

    def write() -> None:
        doc.update({"benchmark": "accuracy", "mode": mode_name, "tag": tag, "sizes": mode, "seeds": mode["seeds"],
                    "pairs": {p: PAIRS[p] for p in args.pairs}, "methods": args.methods, "overrides": args.set,
                    "fbt_overrides": args.fbt_set, "rows": rows, "teachers": teachers,
                    "summary": summarise(rows, args.pairs, args.methods),
                    "total_s": prev_total + time.time() - t_start, "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load at start "
                               f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
                    "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_start))})
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)

    for pair in args.pairs:
        t_ckpt = teachers_dir / f"{pair.replace('->', '2')}-e{mode['teacher_epochs']}-n{mode['train_subset']}.safetensors"
        # kd first: its run trains the teacher (when the checkpoint is missing) and then distils
        order = [m for m in ("kd", "scratch", "ofa", "fbt") if m in args.methods]
        if not t_ckpt.is_file() and order == ["scratch"]:
            order = ["scratch"]  # scratch needs no teacher
        for seed in mode["seeds"]:
            for method in order:
                if (pair, method, seed) in done:
                    continue
                data = base_config(pair, mode, t_ckpt, method, seed)
                over = list(args.set) + (list(args.fbt_set) if method == "fbt" else [])
                cfg = C.from_dict(C.apply_overrides(data, over), source=f"accuracy {pair} {method}")
                print(f"[{time.strftime('%H:%M:%S')}] {pair} {method} seed {seed} ...", flush=True)
                code, run_dir = start(cfg, runs_dir=str(runs_dir))
                res = read_run(run_dir)
                row = {"pair": pair, "method": method, "seed": seed, "exit_code": code, "run_dir": str(run_dir),
                       **res}
                rows.append(row)
                if "teacher_trained_here_s" in res:
                    teachers[pair] = {"checkpoint": str(t_ckpt), "train_s": res["teacher_trained_here_s"],
                                      "curve": res.get("teacher_curve"), "top1": res.get("teacher_top1")}
                elif pair not in teachers or teachers[pair].get("top1") is None:
                    teachers.setdefault(pair, {"checkpoint": str(t_ckpt)})
                    if res.get("teacher_top1") is not None:
                        teachers[pair]["top1"] = res["teacher_top1"]
                fused = f", fused {res['fused_top1']:.2f}" if res.get("fused_top1") is not None else ""
                print(f"    -> student top-1 {res.get('student_top1')}{fused}, teacher {res.get('teacher_top1')}, "
                      f"{res['student_s']:.0f} s, curve {res['curve']}"
                      + (f"  ERROR {res['error']}" if "error" in res else ""), flush=True)
                write()
                if res.get("reason") == "stopped":
                    print("run stopped by a signal: ending the benchmark (continue with --resume)", flush=True)
                    print_summary(doc)
                    return 1
    write()
    print_summary(doc)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
