"""Step time and peak memory of scratch, kd, ofa and fbt, and the floor of an FBT step.

    python benchmarks/step_time.py                         # the two default CPU cases
    python benchmarks/step_time.py --pair 'resnet18->vit_tiny_patch16_224,patch_size=8@32:64' \
        --repeats 15 --out benchmarks/results/step_time.json

Each method is built as a run builds it (quickstart preset + the pair's overrides -> DistillModule ->
trainer.Loop) and one step is `Loop.train_step`: forward, backward, optimiser step, scheduler. The
FBT floor is the sum of its parts, each timed alone (see `_common.FloorParts`): teacher forward
without grad + student forward/backward/step + fused tail forward/backward from L's reused stage
activation. Methods and floor parts are interleaved within each repeat (the order rotates), so load
drift on a shared machine hits all of them alike; the median over repeats is reported.

Targets: fbt/kd <= 1.20 and fbt/floor <= 1.05. `--profile` (or a missed target) adds the top
operators of one fbt step and one kd step (torch.profiler) to the output.
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
TARGET_FBT_KD, TARGET_FBT_FLOOR = 1.20, 1.05
PARTS = ("floor/teacher", "floor/student", "floor/tail")


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
    if "fbt" in loops and not args.no_floor:
        floor = B.FloorParts(loops["fbt"], x, y, rt)
        fns.update({"floor/teacher": floor.teacher, "floor/student": floor.student, "floor/tail": floor.tail})
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
    if floor is not None:
        parts = {k: med[k] * 1e3 for k in PARTS}
        out["floor_parts_ms"] = parts
        out["floor_ms"] = sum(parts.values())
        out["fusion_chain"] = loops["fbt"].module.fused.plan.chain
    if "fbt" in med and "kd" in med:
        out["fbt_over_kd"] = med["fbt"] / med["kd"]
    if floor is not None:
        out["fbt_over_floor"] = med["fbt"] * 1e3 / out["floor_ms"]
    if args.breakdown or "fbt" in loops:
        out["breakdown_ms"] = {m: B.step_breakdown(loops[m], x, y, max(3, args.repeats // 2))
                               for m in ("kd", "fbt") if m in loops}
    missed = out.get("fbt_over_kd", 0) > TARGET_FBT_KD or out.get("fbt_over_floor", 0) > TARGET_FBT_FLOOR
    if args.profile or (missed and not args.no_profile):
        out["profile"] = {m: B.profile_step(fns[m], rt.device, args.profile_top)
                          for m in ("fbt", "kd") if m in fns}
        if floor is not None:
            out["profile"]["floor"] = B.profile_step(lambda: [floor.teacher(), floor.student(), floor.tail()],
                                                     rt.device, args.profile_top)
    return out


def print_table(results: list[dict]) -> None:
    for res in results:
        print(f"\n{res['pair']}  ({res['device']}, median of {res['repeats']}, {res['load_before']})")
        kind = res["rows"][0]["mem_kind"]
        mem_head = "peak MiB" + (" (RSS delta)" if kind == "cpu_rss_delta" else " (max alloc)")
        print(f"  {'method':<10}{'ms/step':>10}{'img/s':>9}{mem_head:>22}{'min..max ms':>18}")
        for r in res["rows"]:
            print(f"  {r['method']:<10}{r['ms']:>10.1f}{r['img_s']:>9.1f}{r['peak_mib']:>22.0f}"
                  f"{r['min_ms']:>9.0f}..{r['max_ms']:<8.0f}")
        if "floor_ms" in res:
            p = res["floor_parts_ms"]
            print(f"  {'fbt floor':<10}{res['floor_ms']:>10.1f}   = teacher fwd {p['floor/teacher']:.1f} + student "
                  f"fwd/bwd/step {p['floor/student']:.1f} + fused tail fwd/bwd {p['floor/tail']:.1f}")
        if "fbt_over_kd" in res:
            ok = "ok" if res["fbt_over_kd"] <= TARGET_FBT_KD else "MISSED"
            print(f"  fbt/kd    = {res['fbt_over_kd']:.3f}  (target <= {TARGET_FBT_KD}: {ok})")
        if "fbt_over_floor" in res:
            ok = "ok" if res["fbt_over_floor"] <= TARGET_FBT_FLOOR else "MISSED"
            print(f"  fbt/floor = {res['fbt_over_floor']:.3f}  (target <= {TARGET_FBT_FLOOR}: {ok})")
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
           "targets": {"fbt_over_kd": TARGET_FBT_KD, "fbt_over_floor": TARGET_FBT_FLOOR}, "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
