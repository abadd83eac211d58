"""Regenerate docs/screenshots/*.svg (and .png when cairosvg is installed) at 120x40.

    .venv/bin/python docs/screenshots/make_screenshots.py

Uses $FBT_ENGINE when set, else the fake engine from tests/tui (instant, canned data), and
canned run folders in a temp directory for the run and runs screens.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests" / "tui"))

from tui_helpers import FAKE_ENGINE, catalog_ready, QUICK_PRESET, make_app, wait_for, write_run  # noqa: E402

SIZE = (120, 40)


async def shoot(name: str, app, steps) -> None:  # type: ignore[no-untyped-def]
    async with app.run_test(size=SIZE) as pilot:
        await steps(pilot)
        await pilot.pause(0.5)
        app.save_screenshot(filename=f"{name}.svg", path=str(OUT))
    print(f"saved {name}.svg")


async def catalog(pilot) -> None:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: catalog_ready(pilot.app), timeout=600)
    await pilot.press("slash", *"res", "enter")


async def preview(pilot) -> None:  # type: ignore[no-untyped-def]
    pilot.app.teacher, pilot.app.student = "swin_tiny_patch4_window7_224", "resnet18"
    await pilot.press("f2")
    await wait_for(pilot, lambda: pilot.app.screen.shown_key is not None, timeout=600)


async def configure(pilot) -> None:  # type: ignore[no-untyped-def]
    await pilot.press("f3")
    await pilot.pause()
    pilot.app.screen.query_one("#f-train-epochs").value = "0"
    pilot.app.screen.set_focus(None)


def replay(name: str):  # type: ignore[no-untyped-def]
    async def steps(pilot) -> None:  # type: ignore[no-untyped-def]
        from fbt_tui.messages import OpenRun
        from fbt_tui.runs import summarize

        pilot.app.post_message(OpenRun(summarize(pilot.app.runs_dir / name), "replay"))
        await wait_for(pilot, lambda: pilot.app.current_mode == "run")
    return steps


async def runs(pilot) -> None:  # type: ignore[no-untyped-def]
    await pilot.press("f5")
    await wait_for(pilot, lambda: pilot.app.screen.query_one("#runs").row_count > 0)
    pilot.app.screen.query_one("#runs").focus()
    await pilot.press("space", "down", "space", "down", "space", "o")


async def main() -> None:
    os.environ.setdefault("FBT_ENGINE", f"{sys.executable} {FAKE_ENGINE}")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for name, method, final, acc0 in (("scratch", "scratch", "completed", 30.0), ("kd", "kd", "completed", 35.0),
                                          ("fbt", "fbt", "completed", 45.0), ("ofa-stopped", "ofa", "stopped", 40.0),
                                          ("fbt-failed", "fbt", "failed", 40.0)):
            write_run(Path("runs"), name, method, final, acc0=acc0)
        await shoot("catalog", make_app(), catalog)
        await shoot("preview", make_app(), preview)
        await shoot("configure", make_app(preset=str(QUICK_PRESET)), configure)
        await shoot("run", make_app(), replay("fbt"))
        await shoot("run-failed", make_app(), replay("fbt-failed"))
        await shoot("runs", make_app(), runs)
    to_png()


def to_png() -> None:
    try:
        import cairosvg
    except ImportError:
        print("cairosvg not installed: SVG only")
        return
    for svg in sorted(OUT.glob("*.svg")):
        cairosvg.svg2png(url=str(svg), write_to=str(svg.with_suffix(".png")))
        print(f"saved {svg.with_suffix('.png').name}")


if __name__ == "__main__":
    asyncio.run(main())
