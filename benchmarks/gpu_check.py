"""GPU check (one GPU, about 5 minutes on an H100): throughput of every method, then one quickstart epoch.

    bash benchmarks/gpu_check.sh                 # or: python benchmarks/gpu_check.py --out ...
    python benchmarks/gpu_check.py --smoke       # CPU, tiny sizes: checks the script itself

1. The paper's pair, Swin-T -> ResNet18 at 224x224 (batch 128, 100 classes), data generated on the
   GPU: images/s of scratch, kd, ofa and fbt with bf16 autocast and channels_last, eager and under
   torch.compile; achieved TFLOP/s (FLOPs of one step counted by
   torch.utils.flop_counter.FlopCounterMode, divided by the median step time); peak memory
   (torch.cuda.max_memory_allocated). Each method is built as a run builds it (DistillModule +
   trainer.Loop) and a step is `Loop.train_step`.
2. One epoch of presets/quickstart.toml on CUDA through fbt_engine.run.start (the teacher is
   trained in the run for 2 epochs first): checks that it completes, that no loss is NaN and that the
   student is above chance (10 classes: 10 %).
A short table is printed last; --out writes JSON. Without a GPU (and without --smoke) it says so and
exits with code 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as B  # noqa: E402

GPU_PAIR = "swin_tiny_patch4_window7_224->resnet18@224:128:100"
SMOKE_PAIR = "resnet18->vit_tiny_patch16_224,patch_size=8,depth=4@32:8:10"


def bench_throughput(pair: B.Pair, methods: list[str], compile_: bool, steps: int, warmup: int,
                     device: str, amp: str, count_flops: bool) -> list[dict]:
    rows = []
    for m in methods:
        row = {"method": m, "compile": compile_}
        try:
            cfg = B.pair_config(pair, m, [f"train.amp={amp}", "train.channels_last=on",
                                          f"train.compile={'true' if compile_ else 'false'}"], device=device)
            rt = B.runtime_for(cfg)
            loop = B.build_loop(cfg, pair.num_classes, rt)
            g = torch.Generator(device=rt.device).manual_seed(0)
            x = torch.randn(pair.batch_size, 3, pair.img_size, pair.img_size, device=rt.device, generator=g)
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, pair.num_classes, (pair.batch_size,), device=rt.device, generator=g)
            step = lambda: loop.train_step(x, y, B.batch_index(pair))  # noqa: E731
            t0 = time.perf_counter()
            for _ in range(warmup):
                step()
            B.sync(rt.device)
            row["warmup_s"] = round(time.perf_counter() - t0, 1)  # includes compilation when compiled
            times = [B.timed(step, rt.device) for _ in range(steps)]
            med = B.median(times)
            row.update(ms=med * 1e3, img_s=pair.batch_size / med)
            row.update(B.peak_memory(step, rt.device))
            if count_flops:
                from torch.utils.flop_counter import FlopCounterMode
                with FlopCounterMode(display=False) as fc:
                    step()
                row["gflop_per_step"] = fc.get_total_flops() / 1e9
                row["tflop_s"] = fc.get_total_flops() / med / 1e12
            loss = loop._last[0]
            row["loss_finite"] = bool(torch.isfinite(loss).item())
            del loop, step, x, y
        except Exception as exc:  # report and go on: one failing method must not hide the others
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if compile_:
            torch._dynamo.reset()
        rows.append(row)
        print(f"  {m:<8} compile={compile_!s:<5} " + (
            f"{row['img_s']:8.1f} img/s  {row['ms']:8.1f} ms/step  peak {row['peak_mib']:.0f} MiB"
            + (f"  {row['tflop_s']:.1f} TFLOP/s" if "tflop_s" in row else "") if "error" not in row
            else f"ERROR {row['error']}"), flush=True)
    return rows


def quickstart_epoch(device: str, smoke: bool, work: Path) -> dict:
    from fbt_engine import config as C
    from fbt_engine.events import Event, read_events
    from fbt_engine.run import start
    over = [f"train.device={device}", "train.epochs=1", "train.warmup_epochs=0", "teacher.train.epochs=2",
            f"teacher.checkpoint={work / 'teacher.safetensors'}"]
    if smoke:
        over += ["train.max_steps_per_epoch=3", "data.train_subset=192", "data.val_subset=64",
                 "student.kwargs.depth=4"]
    cfg = C.load_preset(B.QUICKSTART, over)
    t0 = time.perf_counter()
    code, run_dir = start(cfg, name="gpu-check-quickstart", runs_dir=str(work / "runs"))
    wall = time.perf_counter() - t0
    evs = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event)]
    fin = next((e for e in reversed(evs) if e.type in ("finished", "failed")), None)
    ev = [e for e in evs if e.type == "eval" and e.get("phase") == "distill"]
    top1 = ev[-1].get("student_top1") if ev else None
    losses = [e.get("loss") for e in evs if e.type == "step"]
    nan = any(not isinstance(v, (int, float)) or v != v for v in losses)
    res = {"exit_code": code, "status": fin.type if fin else None, "student_top1": top1,
           "teacher_top1": ev[-1].get("teacher_top1") if ev else None,
           "fused_top1": ev[-1].get("fused_top1") if ev else None, "nan_loss": nan, "wall_s": round(wall, 1),
           "device": next((e.get("device") for e in evs if e.type == "started"), None)}
    res["ok"] = code == 0 and res["status"] == "finished" and not nan and (smoke or (top1 or 0) > 10.0)
    return res


def print_table(doc: dict) -> None:
    print(f"\n== GPU check: {doc['device_name']} | torch {doc['torch']} | {doc['pair']} | amp {doc['amp']}, "
          "channels_last ==")
    print(f"{'method':<9}{'compile':<9}{'img/s':>10}{'ms/step':>10}{'TFLOP/s':>9}{'GFLOP/step':>12}{'peak MiB':>10}")
    for r in doc["throughput"]:
        if "error" in r:
            print(f"{r['method']:<9}{r['compile']!s:<9}  ERROR {r['error']}")
            continue
        tf = f"{r['tflop_s']:.3g}" if "tflop_s" in r else "-"
        gf = f"{r['gflop_per_step']:.0f}" if "gflop_per_step" in r else "-"
        print(f"{r['method']:<9}{r['compile']!s:<9}{r['img_s']:>10.1f}{r['ms']:>10.1f}{tf:>9}{gf:>12}"
              f"{r['peak_mib']:>10.0f}")
    q = doc.get("quickstart")
    if q:
        print(f"quickstart 1 epoch on {q['device']}: {q['status']} (exit {q['exit_code']}), student top-1 "
              f"{q['student_top1']}, fused {q['fused_top1']}, teacher {q['teacher_top1']}, NaN {q['nan_loss']}, "
              f"{q['wall_s']} s -> {'OK' if q['ok'] else 'FAILED'}")
    print(f"total {doc['total_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU-capable tiny run that exercises every code path")
    ap.add_argument("--pair", help=f"default {GPU_PAIR} (smoke: {SMOKE_PAIR})")
    ap.add_argument("--methods", nargs="+", default=list(B.METHODS), choices=B.METHODS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-methods", nargs="+", choices=B.METHODS,
                    help="methods timed under torch.compile (default: all; --smoke: kd)")
    ap.add_argument("--no-quickstart", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_check: no CUDA GPU is present on this machine, so there is nothing to measure. "
              "Run it on a GPU machine, or use --smoke to test the script on the CPU.", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    t0 = time.perf_counter()
    pair = B.parse_pair(args.pair or (SMOKE_PAIR if args.smoke else GPU_PAIR))
    steps, warmup = (2, 1) if args.smoke else (args.steps, args.warmup)
    amp = "bf16" if cuda else "off"
    doc = {"benchmark": "gpu_check", "smoke": args.smoke, "torch": torch.__version__, "pair": pair.label,
           "amp": amp, "device_name": torch.cuda.get_device_name(0) if cuda else "cpu (smoke)", "throughput": []}
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"throughput: {pair.label} on {doc['device_name']}", flush=True)
    doc["throughput"] += bench_throughput(pair, args.methods, False, steps, warmup, device, amp, count_flops=True)
    if not args.no_compile:
        eager_flops = {r["method"]: r.get("gflop_per_step") for r in doc["throughput"]}
        # --smoke compiles one method only: Inductor on a CPU takes about a minute per model
        compiled = args.compile_methods or (["kd"] if args.smoke else args.methods)
        rows = bench_throughput(pair, compiled, True, steps, warmup, device, amp, count_flops=False)
        for r in rows:  # compiled graphs do the same math: reuse the eager FLOP count
            if "ms" in r and eager_flops.get(r["method"]):
                r["gflop_per_step"] = eager_flops[r["method"]]
                r["tflop_s"] = r["gflop_per_step"] * 1e9 / (r["ms"] / 1e3) / 1e12
        doc["throughput"] += rows
    if not args.no_quickstart:
        with tempfile.TemporaryDirectory(prefix="fbt-gpu-check-") as work:
            print("quickstart: one epoch through fbt_engine.run.start", flush=True)
            doc["quickstart"] = quickstart_epoch(device, args.smoke, Path(work))
    doc["total_s"] = time.perf_counter() - t0
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
    print_table(doc)
    failed = any("error" in r or not r.get("loss_finite", True) for r in doc["throughput"]) or \
        (doc.get("quickstart") is not None and not doc["quickstart"]["ok"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
