"""`fbt-engine models` and `fbt-engine fuse` as a user runs them (CliRunner and a subprocess)."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fbt_engine import catalog
from fbt_engine.cli import app

runner = CliRunner()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FBT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_models_json_lists_the_catalog(cache_dir):
    res = runner.invoke(app, ["models", "--json", "--no-counts"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    names = {r["name"]: r for r in rows}
    assert len(rows) > 1000
    r18 = names["resnet18"]
    assert r18["family"] == "resnet" and r18["kind"] == "cnn" and r18["fusable"]
    assert r18["input_size"] == [3, 224, 224] and "a1_in1k" in r18["pretrained_tags"]
    assert names["swin_pico_patch4_window7_224"]["kind"] == "msa"
    assert names["mixer_b16_224"]["kind"] == "mlp"
    assert not names["densenet121"]["fusable"]


def test_models_filters(cache_dir):
    res = runner.invoke(app, ["models", "--json", "--no-counts", "--filter", "resnet1*", "--fusable"])
    names = [r["name"] for r in json.loads(res.stdout)]
    assert "resnet18" in names and all(n.startswith("resnet1") for n in names)
    res = runner.invoke(app, ["models", "--json", "--no-counts", "--kind", "mlp"])
    assert {r["kind"] for r in json.loads(res.stdout)} == {"mlp"}
    res = runner.invoke(app, ["models", "--kind", "transformer"])
    assert res.exit_code == 2 and "'transformer' is not one of 'cnn', 'msa', 'mlp', 'hybrid', 'unknown'" in _unboxed(res.stderr)


def test_models_json_on_an_empty_cache_answers_from_the_shipped_table(cache_dir, monkeypatch):
    """A fresh machine: no cache, nothing counted, timm not even consulted."""
    for fn in ("count_params", "fill_counts", "build_entries"):
        monkeypatch.setattr(catalog, fn, lambda *a, **k: pytest.fail("counted instead of reading the shipped table"))
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert len(rows) > 1000 and all(r["params"] for r in rows.values())
    assert rows["resnet18"]["params"] == 11689512 and rows["res2net50d"]["fusable"]  # class-based fusability
    assert "counting" not in res.stderr and not list(cache_dir.iterdir())


def test_models_unknown_to_the_table_are_counted_lazily_with_progress(cache_dir, monkeypatch, tmp_path):
    """Another timm version: shipped rows serve the names they know; only the rest are counted,
    in a low-priority thread with one torch thread, with progress on stderr, then cached."""
    import os

    import torch
    table = {e.name: e for e in catalog.read_table(catalog.table_path(catalog.timm_version()))}
    old_tables = tmp_path / "tables"
    catalog.write_table([table["resnet18"], table["vit_tiny_patch16_224"]], old_tables / "timm-1.0.0.json.gz", "1.0.0")
    monkeypatch.setattr(catalog, "DATA_DIR", old_tables)
    monkeypatch.setattr(catalog, "timm_version", lambda: "9.9.9")
    names = ["resnet18", "swin_pico_patch4_window7_224", "vit_tiny_patch16_224"]
    monkeypatch.setattr(catalog, "build_entries", lambda: [
        catalog.ModelEntry(name=n, family=table[n].family, kind=table[n].kind) for n in names])
    counted, real_count = [], catalog.count_params

    def spy(name):
        counted.append((name, os.getpriority(os.PRIO_PROCESS, 0), torch.get_num_threads()))
        return real_count(name)
    monkeypatch.setattr(catalog, "count_params", spy)
    priority = os.getpriority(os.PRIO_PROCESS, 0)
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    assert [c[0] for c in counted] == ["swin_pico_patch4_window7_224"]
    if sys.platform == "linux":  # niceness is per thread on Linux: the caller keeps its own
        assert counted[0][1:] == (19, 1) and os.getpriority(os.PRIO_PROCESS, 0) == priority
    assert "1 models are not in the shipped table" in res.stderr and "counting 1/1" in res.stderr
    rows = {r["name"]: r["params"] for r in json.loads(res.stdout)}
    assert rows == {"resnet18": 11689512, "swin_pico_patch4_window7_224": 5506996, "vit_tiny_patch16_224": 5717416}
    assert (cache_dir / "catalog-timm-9.9.9.json").is_file()
    monkeypatch.setattr(catalog, "count_params", lambda name: pytest.fail("cache not used"))
    monkeypatch.setattr(catalog, "build_entries", lambda: pytest.fail("cache not used"))
    again = runner.invoke(app, ["models", "--json"])
    assert {r["name"]: r["params"] for r in json.loads(again.stdout)} == rows and "counting" not in again.stderr


def test_models_name_column_is_never_cut_at_80_columns(cache_dir):
    res = runner.invoke(app, ["models", "--filter", "vit_g"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    shown = {line.split()[0] for line in lines[2:] if line.strip()}
    expected = {e.name for e in catalog.select(catalog.catalog(counts=False), "vit_g")}
    assert "vit_gigantic_patch14_clip_quickgelu_224" in expected and shown == expected
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split()[:3] == ["name", "kind", "params"]  # family, tags left out, said on stderr
    assert "left out at 80 columns" in res.stderr
    wide = runner.invoke(app, ["models", "--filter", "vit_g"], env={"COLUMNS": "160"})
    assert wide.stdout.splitlines()[0].split()[:2] == ["name", "family"] and "left out" not in wide.stderr


def test_fuse_json_has_the_contract_keys():
    res = runner.invoke(app, ["fuse", "swin_pico_patch4_window7_224", "resnet18", "--img-size", "64",
                              "--num-classes", "10", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert {"teacher", "student", "plan", "params", "mult_adds", "summary"} <= set(r)
    p = r["params"]
    for key in ("teacher", "student", "fused_total", "shared_with_teacher", "shared_with_student", "new_learnable"):
        assert isinstance(p[key], int)
    assert p["fused_total"] == p["shared_with_teacher"] + p["shared_with_student"] + p["new_learnable"]
    assert r["plan"]["local"] == "student" and r["plan"]["chain"].startswith("resnet18 stem..stage3 > L2G")
    assert [s["name"] for s in r["student"]["stages"]] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert "FusedModel" in r["summary"]


def test_fuse_human_output_and_options():
    res = runner.invoke(app, ["fuse", "convnext_nano", "vit_tiny_patch16_224", "--img-size", "32",
                              "--student-kwargs", '{"patch_size": 4}', "--split", "2", "--depth", "1"])
    assert res.exit_code == 0, res.output
    assert "convnext_nano stem..stage2 > L2G" in res.stdout and "new learnable" in res.stdout


@pytest.mark.parametrize("args,needle", [
    (["resnet19", "resnet18"], "unknown model 'resnet19'"),
    (["densenet121", "resnet18"], "not supported for fusion"),
    (["vit_tiny_patch16_224", "resnet18", "--img-size", "8"], "cannot take a 8x8 input"),
    (["resnet18", "resnet34", "--student-kwargs", "[1]"], "is not a JSON object"),
])
def test_fuse_errors_are_one_sentence_and_exit_2(args, needle):
    res = runner.invoke(app, ["fuse", *args])
    assert res.exit_code == 2
    assert needle in res.stderr and "hint:" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args,needle", [
    (["--order", "sideways"], "'sideways' is not one of 'auto', 'student-first', 'teacher-first'"),
    (["--mixer", "swn"], "'swn' is not one of 'auto', 'attention', 'swin', 'none'"),
    (["--split", "4"], "less than or equal to 3"),
])
def test_fuse_choices_refuse_a_typo_before_building(args, needle):
    res = runner.invoke(app, ["fuse", "resnet18", "resnet34", *args])
    assert res.exit_code == 2 and needle in _unboxed(res.stderr)


def _unboxed(text: str) -> str:
    """Typer's error box wraps lines: its text as one line."""
    return " ".join(text.replace("│", " ").split())


def test_shell_completion_offers_model_names_without_torch():
    env = {**os.environ, "_FBT_ENGINE_COMPLETE": "complete_bash", "COMP_WORDS": "fbt-engine fuse swin_tiny_p",
           "COMP_CWORD": "2"}
    code = "import sys, fbt_engine.cli as c; sys.argv = ['fbt-engine']\ntry:\n    c.main()\nexcept SystemExit:\n    pass\n" \
           "assert 'torch' not in sys.modules, 'completion imported torch'"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["swin_tiny_patch4_window7_224"]
    env["COMP_WORDS"], env["COMP_CWORD"] = "fbt-engine fuse resnet18 vit_tiny_patch16_224 --mixer ", "5"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["auto", "attention", "swin", "none"]


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "fbt_engine.cli", "fuse", "resnet19", "resnet18"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model") and "Traceback" not in proc.stderr


def test_version_names_the_package_torch_timm_and_protocol() -> None:
    from importlib.metadata import version

    from fbt_engine.cli import app
    from fbt_engine.protocol import PROTOCOL_VERSION
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == (f"fbt-engine {version('fbt-workbench')} (torch {version('torch')}, "
                                     f"timm {version('timm')}, protocol {PROTOCOL_VERSION})")
