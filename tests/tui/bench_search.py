"""Catalog search latency: keystroke -> filtered table -> painted, over the real 1,373-model catalog.

    OMP_NUM_THREADS=1 python tests/tui/bench_search.py            # the engine's catalog (fbt-engine models --json)
    OMP_NUM_THREADS=1 python tests/tui/bench_search.py --json F   # a saved `models --json` answer instead

It runs the TUI headless (Textual's Pilot, 160x48) and types each query of QUERIES one key at a
time into the catalog, twice: back to back (each key sent as soon as the previous one's table is
painted: a key then often lands inside the SEARCH_S window and waits for its end) and at a fast
typist's pace (a key every 100 ms). For every key it prints the milliseconds from the key event to
the table holding the filtered rows and to the first repaint of the table after that. The last
line is a JSON summary. Not a test: the numbers depend on the machine (see docs/tui.md).
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# What a person types: a word, its backspaces, a name with digits, a family.
QUERIES = ("resnet", "\b\b\b\b\b\b", "vit_small", "\b\b\b\b\b\b\b\b\b", "swin", "\b\b\b\b", "convnext")


async def measure(size: tuple[int, int], gap_s: float) -> list[tuple[str, int, float, float]]:
    from textual import events

    from fbt_tui.app import FbtApp
    from fbt_tui.widgets.model_table import ModelTable

    app = FbtApp(sysmon=False)
    out: list[tuple[str, int, float, float]] = []
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        while len(screen.models) < 1000:
            await asyncio.sleep(0.05)
        await pilot.pause(0.3)
        table = screen.query_one("#models", ModelTable)
        marks: dict[str, float] = {}
        set_rows, render_line = table.set_rows, table.render_line

        def timed_set_rows(*args, **kwargs):  # type: ignore[no-untyped-def]
            marks.setdefault("rows", time.perf_counter())
            return set_rows(*args, **kwargs)

        def timed_render_line(y: int):  # type: ignore[no-untyped-def]
            if "rows" in marks:
                marks.setdefault("paint", time.perf_counter())
            return render_line(y)

        table.set_rows, table.render_line = timed_set_rows, timed_render_line  # type: ignore[method-assign]
        typed = ""
        for query in QUERIES:
            for char in query:
                typed = typed[:-1] if char == "\b" else typed + char
                marks.clear()
                key = events.Key("backspace", None) if char == "\b" else \
                    events.Key(char if char.isalnum() else {"_": "underscore"}.get(char, char), char)
                key.set_sender(app)
                start = time.perf_counter()
                app._driver.send_message(key)  # as the terminal delivers it
                while "paint" not in marks:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(max(0.0, gap_s - (time.perf_counter() - start)))
                out.append((typed or "(empty)", table.row_count, (marks["rows"] - start) * 1e3,
                            (marks["paint"] - start) * 1e3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="a saved `fbt-engine models --json` answer to serve")
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="fbt-bench-search-"))
    if args.json:
        server = Path("engine.py")
        server.write_text(f"import sys\nsys.stdout.write(open({str(args.json.resolve())!r}).read())\n")
        os.environ["FBT_ENGINE"] = f"{sys.executable} {server.resolve()}"
    summary = {}
    for label, gap_s in (("back_to_back", 0.0), ("every_100ms", 0.1)):
        rows = asyncio.run(measure((160, 48), gap_s))
        print(f"\n{label}\n{'search box':<12} {'rows':>5} {'to rows ms':>11} {'to paint ms':>12}")
        for typed, count, to_rows, to_paint in rows:
            print(f"{typed:<12} {count:>5} {to_rows:>11.1f} {to_paint:>12.1f}")
        paint = sorted(r[3] for r in rows)
        summary[label] = {"keys": len(rows), "catalog_rows": max(r[1] for r in rows),
                          "median_ms": round(statistics.median(paint), 1),
                          "p95_ms": round(paint[int(0.95 * (len(paint) - 1))], 1), "max_ms": round(paint[-1], 1)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
