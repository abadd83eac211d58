"""The app's actions in the command palette (ctrl+p): go to a screen, pick a teacher or student,
load or save a preset, start, stop or resume a run, sweep the methods or resume a sweep, compare
runs, open the run folder, help.

Model names come from the catalog the app already holds; presets are the `*.toml` files in
`presets/` and the working folder; resumable runs come from a scan of the runs folder when the
palette opens (in a thread: it reads events files).
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .messages import LoadPreset, OpenRun, PairChosen

MAX_MODEL_HITS = 24  # per role: the palette lists the best matches, not 1,373 names
SCREEN_NAMES = ("catalog", "preview", "configure", "run", "runs")


def preset_files(root: Path = Path(".")) -> list[Path]:
    """Preset files a user is likely to load: presets/*.toml, then *.toml in the working folder."""
    found: list[Path] = []
    for folder in (root / "presets", root):
        try:
            found += sorted(p for p in folder.glob("*.toml") if p.is_file())
        except OSError:
            continue
    return found


class FbtCommands(Provider):
    """Commands for every app action; model picks and preset loads are listed by name."""

    async def startup(self) -> None:
        self.resumable: list[Any] = []
        self.resumable_sweeps: list[Any] = []
        runs_dir = getattr(self.app, "runs_dir", None)
        if runs_dir is not None:
            from .runs import scan_all

            live = getattr(self.app, "live_sweeps", list)
            try:
                rows = await asyncio.to_thread(scan_all, Path(runs_dir), live())
            except OSError:
                rows = []
            self.resumable = [r for r in rows if not r.is_sweep and not r.sweep and r.status == "stopped"]
            self.resumable_sweeps = [r for r in rows if r.is_sweep and r.status in ("stopped", "failed")]

    def _actions(self) -> Iterator[tuple[str, Callable[[], Any], str]]:
        """(title, callback, help) for every fixed command."""
        app: Any = self.app
        for i, mode in enumerate(SCREEN_NAMES, 1):
            yield f"Go to {mode.capitalize()}", partial(app.switch_mode, mode), f"key {i} or F{i}"
        yield "Pick teacher...", partial(self._pick_in_catalog, "teacher"), "search the catalog, then ctrl+t"
        yield "Pick student...", partial(self._pick_in_catalog, "student"), "search the catalog, then ctrl+s"
        yield "Load preset...", partial(app.run_action, "focus_load"), "type a path in Configure, enter loads"
        for path in preset_files():
            yield f"Load preset {path}", partial(app.post_message, LoadPreset(path)), "replaces the working preset"
        yield "Save preset", partial(app.run_action, "save_preset"), "Configure's ctrl+s: asks before overwriting"
        yield "Start run", partial(app.run_action, "start_run"), "Configure's ctrl+r"
        yield "Stop run", partial(app.run_action, "stop_run"), "graceful stop (SIGINT): finishes the step, checkpoints"
        for run in self.resumable:
            yield f"Resume run {run.name}", partial(app.post_message, OpenRun(run, "resume")), f"{run.pair}, stopped"
        yield "Sweep methods...", partial(app.run_action, "sweep_methods"), \
            "fbt-engine compare on the working preset: pick methods, seeds, jobs; runs in the background"
        for sweep in self.resumable_sweeps:
            yield (f"Resume sweep {sweep.name}", partial(app.launch_sweep, sweep.path, ["resume", str(sweep.path)]),
                   f"{sweep.grid}, {sweep.progress}, {sweep.status}")
        yield "Compare runs", partial(app.run_action, "compare_runs"), "overlay the runs selected on Runs (space)"
        yield "Open run folder", partial(app.run_action, "open_run_folder"), "show and copy the watched run's folder"
        yield "Help: every key", partial(app.run_action, "help"), "key ?"

    async def _pick_in_catalog(self, role: str) -> None:
        app: Any = self.app
        await app.switch_mode("catalog")
        app.screen.action_focus_search()
        app.notify(f"type to search, then ctrl+{role[0]} makes the highlighted model the {role}", timeout=4)

    def _model_hits(self, query: str) -> Iterator[Hit]:
        """`teacher NAME` / `student NAME` for the catalog's models that match the query best."""
        names: list[str] = list(getattr(self.app, "model_names", []))
        words = query.lower().split()
        if not names or not words:
            return
        roles = [r for r in ("teacher", "student") if r.startswith(words[0])] or ["teacher", "student"]
        rest = words[1:] if len(roles) == 1 or words[0] in ("teacher", "student") else words
        if not rest or len("".join(rest)) < 2:
            return
        matcher = self.matcher(" ".join(rest))
        scored = sorted(((matcher.match(n), n) for n in names if all(w in n for w in rest)), reverse=True)
        for role in roles:
            for score, name in scored[:MAX_MODEL_HITS]:
                text = f"{role} {name}"
                yield Hit(score, text, partial(self.app.post_message, PairChosen(role, name)), text=text,
                          help=f"make {name} the {role}")

    async def discover(self) -> Hits:
        for title, callback, help_text in self._actions():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self._actions():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, text=title, help=help_text)
        for hit in self._model_hits(query):
            yield hit
