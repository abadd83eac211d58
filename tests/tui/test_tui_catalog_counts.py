"""Catalog screen: while the engine counts the models its shipped table does not know, its
`counting i/n` progress shows above the status line; the counts fill in and the line goes away."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.widgets import Static

from fbt_tui.widgets.model_table import ModelTable

from tui_helpers import SIZE, make_app, wait_for

pytestmark = pytest.mark.asyncio

# `models --json --no-counts`: names without counts; `models --json`: progress on stderr, then
# (once the test creates the `go` file) the last progress line and the counts.
COUNTING_ENGINE = '''
import json, os, sys, time
go = os.environ["FBT_TEST_GO"]
rows = [{"name": n, "family": "resnet", "kind": "cnn", "params": None, "input_size": [3, 224, 224],
         "pretrained_tags": [], "fusable": True} for n in ("resnet18", "resnet34", "resnet50")]
if "--no-counts" not in sys.argv:
    for i in (1, 2):
        print(f"counting {i}/3", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("counting 3/3", file=sys.stderr, flush=True)
    for r, p in zip(rows, (11689512, 21797672, 25557032)):
        r["params"] = p
print(json.dumps(rows))
'''


async def test_count_progress_shows_then_counts_fill_in(workdir: Path, monkeypatch) -> None:
    engine = workdir / "counting_engine.py"
    engine.write_text(COUNTING_ENGINE, encoding="utf-8")
    monkeypatch.setenv("FBT_ENGINE", f"{sys.executable} {engine}")
    monkeypatch.setenv("FBT_TEST_GO", str(workdir / "go"))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        bar = app.screen.query_one("#catalog-progress", Static)
        table = app.screen.query_one("#models", ModelTable)
        await wait_for(pilot, lambda: "counting 2/3" in str(bar.render()) and bar.display, what="progress")
        assert "not in the shipped table" in str(bar.render())
        assert str(table.get_row("resnet18")[3]) == "?"  # names are listed while counting
        (workdir / "go").touch()
        await wait_for(pilot, lambda: str(table.get_row("resnet18")[3]) == "11.7M", what="counts")
        await wait_for(pilot, lambda: not bar.display, what="progress line hidden")
        assert "3 of 3 models" in str(app.screen.query_one("#catalog-count", Static).render())
