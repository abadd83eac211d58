"""Preview latency of the warm engine service (issue 10): what a person waits for in the pair preview.

    python benchmarks/preview_latency.py                  # the paper pairs at 224 px
    python benchmarks/preview_latency.py --quick          # one small pair at 64 px (the smoke test)

It starts `fbt-engine serve` through the TUI's own client (fbt_tui.service.EngineService), sends
the first preview at once (first_s: spawn -> first answer, torch and timm imports included), then
walks a scripted sequence per pair: depth, split, order and input-size changes, one request at a
time, each timed from send to answer. The first preview of each later pair is a pair switch
(both models built), reported apart (pair_switch_s) and in p95_all_s. `import_s` is the bare
`import torch, timm` of a fresh interpreter, measured first, alone: the target for first_s is
import_s + 3 s, and for p95_s 1 s. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fbt_tui.service import EngineService

PAIRS = (("swin_tiny_patch4_window7_224", "resnet18"), ("convnext_tiny", "deit_tiny_patch16_224"),
         ("resnet50", "swin_nano_patch4_window7_224"))
BASE = {"img_size": 224, "order": "auto", "split": 3, "depth": 3}
# (what changes, fields after the change): every field not named keeps its last value.
SCRIPT = (("depth 4", {"depth": 4}), ("depth 2", {"depth": 2}), ("split 2", {"split": 2}), ("split 1", {"split": 1}),
          ("teacher-first", {"order": "teacher-first"}), ("split 3", {"split": 3}), ("depth 5", {"depth": 5}),
          ("student-first", {"order": "student-first"}), ("auto", {"order": "auto"}), ("size 192", {"img_size": 192}),
          ("size 256", {"img_size": 256}), ("size 224", {"img_size": 224}), ("depth 3", {"depth": 3}),
          ("split 2 again", {"split": 2}), ("split 3 again", {"split": 3}))
QUICK_PAIRS = (("resnet18", "vit_tiny_patch16_224"),)
QUICK_BASE = {"img_size": 64, "order": "auto", "split": 3, "depth": 2}
QUICK_SCRIPT = (("depth 3", {"depth": 3}), ("split 2", {"split": 2}), ("teacher-first", {"order": "teacher-first"}),
                ("size 96", {"img_size": 96}))


def import_seconds() -> float:
    """A fresh interpreter's `import torch, timm` (the floor of any engine process's start)."""
    code = "import time; t = time.perf_counter(); import torch, timm; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    return ranked[max(0, min(len(ranked) - 1, round(q / 100 * len(ranked) + 0.5) - 1))]


async def timed(service: EngineService, teacher: str, student: str, fields: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = await service.fuse(teacher, student, **fields)
    return time.perf_counter() - t0, result


async def drive(pairs: tuple, base: dict, script: tuple, engine: list[str]) -> dict:
    service = EngineService(command=engine, cwd=ROOT)
    t_spawn = time.perf_counter()
    await service.start()
    rows, switches = [], []
    try:
        first_s, _ = await timed(service, *pairs[0], dict(base))
        first_s = time.perf_counter() - t_spawn  # from the spawn, imports included
        print(f"first preview {pairs[0][0]} -> {pairs[0][1]}: {first_s:.2f} s (spawn to answer)", file=sys.stderr)
        for i, (teacher, student) in enumerate(pairs):
            fields = dict(base)
            if i:
                s, _ = await timed(service, teacher, student, fields)
                switches.append(s)
                print(f"pair switch {teacher} -> {student}: {s:.3f} s", file=sys.stderr)
            for label, change in script:
                fields.update(change)
                s, result = await timed(service, teacher, student, fields)
                assert result["depth"] == fields["depth"] and result["img_size"] == fields["img_size"]
                rows.append({"pair": f"{teacher}->{student}", "change": label, "s": round(s, 4)})
                print(f"  {label:14s} {s:.3f} s", file=sys.stderr)
        ready = service.ready.warm_s if service.ready else None
    finally:
        await service.close()
    times = [r["s"] for r in rows]
    return {"first_s": round(first_s, 3), "ready_s": ready, "n": len(times),
            "p50_s": round(statistics.median(times), 4), "p95_s": round(percentile(times, 95), 4),
            "max_s": round(max(times), 4), "pair_switch_s": [round(s, 3) for s in switches],
            "p95_all_s": round(percentile(times + switches, 95), 4), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small pair at 64 px (seconds, for the smoke test)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    engine = [sys.executable, "-m", "fbt_engine.cli"]
    load_before = os.getloadavg()
    imp = import_seconds()
    print(f"import torch, timm: {imp:.2f} s (load average {load_before[0]:.2f})", file=sys.stderr)
    pairs, base, script = (QUICK_PAIRS, QUICK_BASE, QUICK_SCRIPT) if args.quick else (PAIRS, BASE, SCRIPT)
    res = asyncio.run(drive(pairs, base, script, engine))
    res = {"import_s": round(imp, 3), **res, "first_target_s": round(imp + 3, 3),
           "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
           "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    print(f"first {res['first_s']} s (target < {res['first_target_s']}), p50 {res['p50_s']} s, p95 {res['p95_s']} s "
          f"(target < 1), pair switches {res['pair_switch_s']}, p95 with switches {res['p95_all_s']} s", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    rows = res.pop("rows")
    print(json.dumps({**res, "steps": len(rows)}))


if __name__ == "__main__":
    main()
