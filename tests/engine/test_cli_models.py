"""`fbt-engine models` and `fbt-engine fuse` as a user runs them (CliRunner and a subprocess)."""

import json
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
    assert res.exit_code == 2 and "unknown kind" in res.stderr


def test_counts_fill_in_and_are_cached(cache_dir, monkeypatch):
    entries = catalog.catalog(counts=False)
    small = [e for e in entries if e.name in ("resnet18", "vit_tiny_patch16_224", "swin_pico_patch4_window7_224")]
    catalog.fill_counts(small)
    assert {e.name: e.params for e in small} == {"resnet18": 11689512, "vit_tiny_patch16_224": 5717416,
                                                 "swin_pico_patch4_window7_224": 5506996}
    catalog.save_cache(entries)
    monkeypatch.setattr(catalog, "build_entries", lambda: pytest.fail("cache not used"))
    again = {e.name: e.params for e in catalog.catalog(counts=False)}
    assert again["resnet18"] == 11689512


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
    (["resnet18", "resnet34", "--order", "sideways"], "--order 'sideways'"),
    (["resnet18", "resnet34", "--student-kwargs", "[1]"], "is not a JSON object"),
])
def test_fuse_errors_are_one_sentence_and_exit_2(args, needle):
    res = runner.invoke(app, ["fuse", *args])
    assert res.exit_code == 2
    assert needle in res.stderr and "hint:" in res.stderr and "Traceback" not in res.stderr


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "fbt_engine.cli", "fuse", "resnet19", "resnet18"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model") and "Traceback" not in proc.stderr
