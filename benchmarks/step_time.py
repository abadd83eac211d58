"""Step time and peak memory of every method, and each method's floor.

    python benchmarks/step_time.py                         # the two default CPU cases
    python benchmarks/step_time.py --pair 'resnet18->vit_tiny_patch16_224,patch_size=8@32:64' \
        --repeats 15 --out benchmarks/results/step_time.json

Each method is built as a run builds it (quickstart preset + the pair's overrides -> the method ->
trainer.Loop) and one step is `Loop.train_step`: forward, backward, optimiser step, scheduler. A
method's floor is the sum of the parts it cannot avoid (`_common.floor_of`), each timed alone: teacher
forward without grad, student forward/backward/step, and the networks the method adds (FBT: the fused
tail from L's reused stage activation, `_common.FloorParts`; OFA: its branches from the student's
stage outputs, `_common.BranchesPart`). Methods and floor parts are interleaved within each repeat
(the order rotates), so load drift on a shared machine hits all of them alike; the median over
repeats is reported.

Targets: every method within 5 % of its floor (step/floor <= 1.05), fbt/kd <= 1.20. `--profile` (or
a missed target) adds the top operators of one fbt step and one kd step (torch.profiler).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as B  # noqa: E402

DEFAULT_PAIRS = [
    "swin_tiny_patch4_window7_224->resnet18@224:8:100",   # the paper's pair at its input size
    "resnet18->vit_tiny_patch16_224,patch_size=8@32:64:10",  # the quickstart pair
]
TARGET_FBT_KD, TARGET_FLOOR = 1.20, 1.05


def bench_pair(pair: B.Pair, args: argparse.Namespace) -> dict:
    methods = args.methods
    cfgs = {m: B.pair_config(pair, m, args.set, device=args.device) for m in methods}
    rt = B.runtime_for(cfgs[methods[0]])
    loops = {m: B.build_loop(cfgs[m], pair.num_classes, rt) for m in methods}
    x, y = B.make_batch(pair, rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fns = {m: (lambda lp=loops[m]: lp.train_step(x, y, B.batch_index(pair))) for m in methods}
    floor = None
    parts_needed = set() if args.no_floor else {p for m in methods for p in B.floor_of(m)}
    if parts_needed:
        # the teacher/student parts come from FBT's adapters when FBT is measured (its own passes),
        # else from a plain forward of another method's models (the same modules)
        floor = B.FloorParts(loops["fbt"], x, y, rt) if "fbt" in loops else None
        fns["floor/student"] = floor.student if floor else _plain_student(loops[methods[0]], x, y, rt)
        with_teacher = [m for m in methods if loops[m].module.teacher is not None]
        if "teacher" in parts_needed and with_teacher:
            fns["floor/teacher"] = floor.teacher if floor else _plain_teacher(loops[with_teacher[0]], x, rt)
        if floor is not None:
            fns["floor/tail"] = floor.tail
        if "ofa" in loops:
            fns["floor/branches"] = B.BranchesPart(loops["ofa"], x, y, rt)
    keys = list(fns)
    for _ in range(args.warmup):
        for k in keys:
            fns[k]()
    B.sync(rt.device)
    times: dict[str, list[float]] = {k: [] for k in keys}
    load_before = B.load_note()
    t0 = time.perf_counter()
    for r in range(args.repeats):
        order = keys[r % len(keys):] + keys[:r % len(keys)]  # rotate: no method always runs first
        for k in order:
            times[k].append(B.timed(fns[k], rt.device))
    wall = time.perf_counter() - t0
    med = {k: B.median(v) for k, v in times.items()}
    rows = []
    for m in methods:
        mem = B.peak_memory(fns[m], rt.device)
        rows.append({"method": m, "ms": med[m] * 1e3, "img_s": pair.batch_size / med[m],
                     "peak_mib": mem["peak_mib"], "mem_kind": mem["kind"],
                     "min_ms": min(times[m]) * 1e3, "max_ms": max(times[m]) * 1e3})
    out = {"pair": pair.label, "teacher": pair.teacher, "student": pair.student, "img_size": pair.img_size,
           "batch_size": pair.batch_size, "num_classes": pair.num_classes, "device": str(rt.device),
           "repeats": args.repeats, "warmup": args.warmup, "rows": rows,
           "samples_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
           "load_before": load_before, "load_after": B.load_note(), "timed_wall_s": round(wall, 1)}
    parts = {k.split("/")[1]: med[k] * 1e3 for k in fns if k.startswith("floor/")}
    if parts:
        out["floor_parts_ms"] = parts
        for r in rows:
            need = B.floor_of(r["method"])
            if all(p in parts for p in need):
                r["floor_ms"] = sum(parts[p] for p in need)
                r["over_floor"] = r["ms"] / r["floor_ms"]
    if "fbt" in loops:
        out["fusion_chain"] = loops["fbt"].module.fused.plan.chain
    if "fbt" in med and "kd" in med:
        out["fbt_over_kd"] = med["fbt"] / med["kd"]
    if args.breakdown or "fbt" in loops:
        out["breakdown_ms"] = {m: B.step_breakdown(loops[m], x, y, max(3, args.repeats // 2))
                               for m in ("kd", "fbt") if m in loops}
    missed = out.get("fbt_over_kd", 0) > TARGET_FBT_KD or any(r.get("over_floor", 0) > TARGET_FLOOR for r in rows)
    if args.profile or (missed and not args.no_profile):
        out["profile"] = {m: B.profile_step(fns[m], rt.device, args.profile_top)
                          for m in ("fbt", "kd") if m in fns}
        if floor is not None:
            out["profile"]["floor"] = B.profile_step(lambda: [floor.teacher(), floor.student(), floor.tail()],
                                                     rt.device, args.profile_top)
    return out


def _plain_student(loop, x: torch.Tensor, y: torch.Tensor, rt) -> "callable":
    """Student forward + CE + backward + optimiser step, through the model's own forward."""
    m = loop.module
    opt = B.build_optimizer(m.student, loop.phase.tc)

    def run() -> None:
        with rt.autocast():
            loss = torch.nn.functional.cross_entropy(m.student(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def _plain_teacher(loop, x: torch.Tensor, rt) -> "callable":
    m = loop.module

    def run() -> None:
        with torch.no_grad(), rt.autocast():
            m.teacher(x)
    return run


def print_table(results: list[dict]) -> None:
    for res in results:
        print(f"\n{res['pair']}  ({res['device']}, median of {res['repeats']}, {res['load_before']})")
        kind = res["rows"][0]["mem_kind"]
        mem_head = "peak MiB" + (" (RSS delta)" if kind == "cpu_rss_delta" else " (max alloc)")
        print(f"  {'method':<10}{'ms/step':>10}{'img/s':>9}{mem_head:>22}{'min..max ms':>18}"
              f"{'floor ms':>10}{'step/floor':>12}  floor parts")
        for r in res["rows"]:
            floor = f"{r['floor_ms']:>10.1f}{r['over_floor']:>11.3f}{'' if r['over_floor'] <= TARGET_FLOOR else '!'}" \
                    f"  {' + '.join(B.floor_of(r['method']))}" if "floor_ms" in r else ""
            print(f"  {r['method']:<10}{r['ms']:>10.1f}{r['img_s']:>9.1f}{r['peak_mib']:>22.0f}"
                  f"{r['min_ms']:>9.0f}..{r['max_ms']:<8.0f}{floor}")
        if "floor_parts_ms" in res:
            print("  floor parts (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in res["floor_parts_ms"].items()))
        if "fbt_over_kd" in res:
            ok = "ok" if res["fbt_over_kd"] <= TARGET_FBT_KD else "MISSED"
            print(f"  fbt/kd    = {res['fbt_over_kd']:.3f}  (target <= {TARGET_FBT_KD}: {ok})")
        print(f"  ('!': step/floor above the target {TARGET_FLOOR})")
        for name, b in res.get("breakdown_ms", {}).items():
            print(f"  {name} step split: " + ", ".join(f"{k} {v:.1f} ms" for k, v in b.items()))
        for name, rows in res.get("profile", {}).items():
            tot = sum(r["self_ms"] for r in rows) or 1.0
            print(f"  profile {name} (share of top-{len(rows)} self time): "
                  + ", ".join(f"{r['op']} {100 * r['self_ms'] / tot:.0f}%" for r in rows[:8]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", action="append", help="TEACHER[,k=v]->STUDENT[,k=v]@IMG:BATCH[:CLASSES] (repeatable)")
    ap.add_argument("--methods", nargs="+", default=list(B.METHODS), choices=B.METHODS)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--set", action="append", default=[], help="preset override key=value (repeatable)")
    ap.add_argument("--breakdown", action="store_true", help="time forward/loss/backward/optimiser of kd and fbt")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--profile", action="store_true", help="always profile fbt, kd and the floor")
    ap.add_argument("--no-profile", action="store_true", help="never profile, even when a target is missed")
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats (a smoke test)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.pair or DEFAULT_PAIRS
    if args.quick:
        specs = args.pair or ["resnet18->vit_tiny_patch16_224,patch_size=8,depth=4@32:8:10"]
        args.repeats, args.warmup = min(args.repeats, 2), 1
    results = []
    for spec in specs:
        res = bench_pair(B.parse_pair(spec), args)
        results.append(res)
        print_table([res])
        sys.stdout.flush()
    doc = {"benchmark": "step_time", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "targets": {"fbt_over_kd": TARGET_FBT_KD, "step_over_floor": TARGET_FLOOR}, "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
