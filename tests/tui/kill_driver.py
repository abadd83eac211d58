"""A TUI that starts a run and is then SIGKILLed by its test (test_tui_faults.py).

Usage: python kill_driver.py PRESET RUNS_DIR NAME
Runs the real app headless (Pilot), starts the run as the configure screen would, prints
`RUNNING <engine pid>` once the engine has reported a step, and then waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fbt_tui.app import FbtApp
from fbt_tui.messages import StartRun


async def main(preset: str, runs_dir: str, name: str) -> None:
    app = FbtApp(runs_dir=runs_dir, sysmon=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.post_message(StartRun(Path(preset), name))
        while app.session is None or app.session.state.step < 1:
            if app.session is not None and app.session.ended:
                raise SystemExit(f"the run ended early: {app.session.state.error}")
            await pilot.pause(0.05)
        print(f"RUNNING {app.session.proc.pid}", flush=True)
        await asyncio.sleep(3600)  # the test kills us long before this


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
