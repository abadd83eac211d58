"""TUI start-up with the real engine: first frame, catalog with counts (cold and warm), first preview.

    python benchmarks/tui_startup.py [--repeats 3]

Each repeat starts `fbt-tui`'s app headless (Textual's `run_test`, 160x48) in this process with the
real `fbt-engine` (unless $FBT_ENGINE says otherwise) and times, from the start of the app:

* `first_frame_s`: the catalog screen is mounted (what the user first sees);
* `catalog_s`: the catalog table holds resnet18 with its parameter count;
* `preview_s`: after `2` (Preview) with the quickstart pair, the fused model's chain is shown (the
  warm engine service's first answer: includes the service's torch+timm import).

"cold" runs with an empty cache folder (`XDG_CACHE_HOME` in a fresh temp dir), "warm" with the
cache the cold run left. Prints a table, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tui"))

from tui_helpers import catalog_ready, make_app  # noqa: E402

QUICKSTART = ROOT / "presets" / "quickstart.toml"


async def one_start(preset: Path | None) -> dict[str, float]:
    from textual.widgets import Static

    t0 = time.perf_counter()
    app = make_app(preset=preset, runs_dir=tempfile.mkdtemp(prefix="fbt-bench-runs-"))
    out: dict[str, float] = {}
    async with app.run_test(size=(160, 48)) as pilot:
        while not app.screen.query("#models"):  # run_test returns once the app is mounted
            await pilot.pause(0.01)
        out["first_frame_s"] = time.perf_counter() - t0
        while not catalog_ready(app):
            await pilot.pause(0.02)
        out["catalog_s"] = time.perf_counter() - t0
        if preset is not None:
            await pilot.press("2")
            while "fusion chain" not in str(app.screen.query_one("#chain", Static).render()):
                await pilot.pause(0.05)
                if time.perf_counter() - t0 > 300:
                    raise SystemExit("no preview within 300 s")
            out["preview_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-preview", action="store_true", help="catalog only (no engine service answer)")
    args = ap.parse_args(argv)
    preset = None if args.no_preview else QUICKSTART
    rows: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for _ in range(args.repeats):
        cache = tempfile.mkdtemp(prefix="fbt-bench-cache-")
        os.environ["XDG_CACHE_HOME"] = cache  # cold: nothing cached yet; warm: what the cold start left
        for kind in ("cold", "warm"):
            rows[kind].append(asyncio.run(one_start(preset)))
    load = os.getloadavg()
    summary = {kind: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
               for kind, runs in rows.items()}
    print(f"median of {args.repeats}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'start':<6}{'first frame s':>15}{'catalog s':>12}{'preview s':>12}")
    for kind, m in summary.items():
        print(f"{kind:<6}{m['first_frame_s']:>15.3f}{m['catalog_s']:>12.3f}{m.get('preview_s', float('nan')):>12.3f}")
    print(json.dumps({"repeats": args.repeats, "load": load, **{f"{kind}_{k}": v for kind, m in summary.items()
                                                                  for k, v in m.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
