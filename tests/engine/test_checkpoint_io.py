"""Checkpoint and weight files: atomic writes, readable modes, NaN refused, RNG state weights-only, locks."""

from __future__ import annotations

import errno
import os
import random
import stat

import numpy as np
import pytest
import torch

from fbt_engine import checkpoint as ck
from fbt_engine import faults
from fbt_engine.locks import FileLock, lock_run_folder
from fbt_engine.errors import TrainingError


def test_written_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        ck.atomic_save({"x": torch.ones(2)}, tmp_path / "a.pt")
        ck.save_weights(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    for name in ("a.pt", "m.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_failed_write_leaves_the_previous_file_and_no_tmp(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    ck.atomic_save({"v": torch.tensor([1.0])}, target)
    calls = {"n": 0}
    real_write = os.write

    def full_disk(fd, data):  # the first chunk lands, then the disk is full
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data)[:100])

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(ck.WriteError) as err:
        ck.atomic_save({"v": torch.zeros(10_000)}, target)
    monkeypatch.undo()
    assert "disk is full" in err.value.message and "last.pt" in err.value.message
    assert "intact" in err.value.hint
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(target, weights_only=True)["v"].tolist() == [1.0]


def test_injected_enospc_before_the_rename_cleans_up(tmp_path):
    faults.configure("write:best.pt=enospc")
    try:
        with pytest.raises(ck.WriteError):
            ck.atomic_save({"a": 1}, tmp_path / "best.pt")
    finally:
        faults.configure("")
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_are_never_exported(tmp_path):
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ck.NonFiniteWeights) as err:
        ck.save_weights(model, tmp_path / "student.safetensors", "student")
    assert "weight" in err.value.message
    assert not (tmp_path / "student.safetensors").exists() and list(tmp_path.iterdir()) == []


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    gen = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ck.atomic_save({"rng": ck.rng_state(gen)}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"], gen)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item()) == expected


def test_a_run_folder_has_one_writer(tmp_path):
    first = lock_run_folder(tmp_path)
    with pytest.raises(TrainingError) as err:
        lock_run_folder(tmp_path)
    assert str(os.getpid()) in err.value.message and "kill -INT" in err.value.hint
    first.release()
    lock_run_folder(tmp_path).release()


def test_a_waiting_lock_gives_up_when_a_stop_is_requested(tmp_path):
    holder = FileLock(tmp_path / "t.lock")
    assert holder.try_acquire()
    notes: list[str] = []
    assert not FileLock(tmp_path / "t.lock").wait(notes.append, lambda: True, "training the teacher", poll_s=0.01)
    assert notes and "pid" in notes[0] and "training the teacher" in notes[0]
    holder.release()
    assert FileLock(tmp_path / "t.lock").wait(notes.append, lambda: False, "x", poll_s=0.01)


def test_events_survive_a_full_disk_and_resume_on_a_fresh_line(tmp_path, monkeypatch, capsys):
    from fbt_engine.events import Emitter, Event, read_events
    path = tmp_path / "events.jsonl"
    em = Emitter("r", path)
    em.emit("step", step=1)
    em._file.write('{"v":1,"type":"st')  # a write torn by a full disk ...
    em._file.flush()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(em._file, "write", full)
    em.emit("step", step=2)  # ... fails: the run goes on, the stream would still carry it
    assert "could not be written" in capsys.readouterr().err
    em.emit("step", step=3)  # steps do not retry the file
    em.emit("finished", reason="completed")  # the end does
    em.close()
    events = [e for e in read_events(path) if isinstance(e, Event)]
    assert [e.type for e in events] == ["step", "finished"]
    assert events[-1].get("reason") == "completed"


def test_exported_weights_are_byte_identical_whatever_the_metadata_order(tmp_path) -> None:
    """safetensors writes metadata from a hash map (order varies between processes); the header is
    rewritten with sorted keys, so a resumed run's export has the uninterrupted run's digest."""
    import json
    import struct

    from safetensors.torch import load_file, safe_open, save

    from fbt_engine.checkpoint import canonical_safetensors
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.int64)}
    one = canonical_safetensors(save(tensors, metadata={"z": "1", "format": "pt", "config": "{}"}))
    two = canonical_safetensors(save(tensors, metadata={"config": "{}", "z": "1", "format": "pt"}))
    assert one == two
    (n,) = struct.unpack("<Q", one[:8])
    assert n % 8 == 0 and list(json.loads(one[8:8 + n])["__metadata__"]) == ["config", "format", "z"]
    path = tmp_path / "w.safetensors"
    path.write_bytes(one)
    assert all(torch.equal(load_file(path)[k], v) for k, v in tensors.items())
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"z": "1", "format": "pt", "config": "{}"}
