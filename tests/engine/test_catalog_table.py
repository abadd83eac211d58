"""The shipped catalog (fbt_engine/catalog_data): complete for the installed timm, exact, small,
deterministic, and read without importing torch or timm."""

import subprocess
import sys
from pathlib import Path

import pytest

from fbt_engine import catalog

STALE = f"the shipped catalog is stale: run `{catalog.REGENERATE}` and commit the file it writes"


@pytest.fixture(scope="module")
def table():
    rows = catalog.read_table(catalog.table_path(catalog.timm_version()))
    assert rows is not None, f"no shipped catalog for timm {catalog.timm_version()}: {STALE}"
    return {e.name: e for e in rows}


def test_shipped_table_matches_timms_model_list(table):
    live = {e.name: e for e in catalog.build_entries()}  # timm's registry and our adapters, no counting
    assert list(table) == list(live), STALE  # the same names in timm's order
    for name, e in live.items():
        t = table[name]
        assert (t.family, t.kind, t.input_size, t.pretrained_tags) == (e.family, e.kind, e.input_size,
                                                                      e.pretrained_tags), f"{name}: {STALE}"
        assert t.fusable or not e.fusable, f"{name} has an adapter now: {STALE}"
        assert t.params and t.params > 0, f"{name} has no parameter count"


@pytest.mark.parametrize("name", ["resnet18", "res2net50d", "densenet121", "swin_pico_patch4_window7_224"])
def test_shipped_counts_and_fusability_are_exact(table, name):
    params, fusable = catalog.count_params(name)  # the meta-device count the generator ran
    assert (table[name].params, table[name].fusable) == (params, fusable), STALE


def test_shipped_table_is_small_and_deterministic(table, tmp_path):
    shipped = catalog.table_path(catalog.timm_version())
    again = tmp_path / shipped.name
    catalog.write_table(reversed(list(table.values())), again, catalog.timm_version())
    assert again.read_bytes() == shipped.read_bytes()
    assert shipped.stat().st_size < 64_000


def test_listing_from_the_table_imports_neither_torch_nor_timm(tmp_path):
    code = ("import sys; from fbt_engine import catalog; rows = catalog.catalog();"
            "assert len(rows) > 1000 and rows[0].params, len(rows);"
            "assert not {'torch', 'timm'} & set(sys.modules), 'imported torch or timm'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={"FBT_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.iterdir())  # nothing cached: nothing needed computing
