"""crd: negatives of other classes drawn per sample, the memory bank updated, the loss wired to the
models' pre-logits features (CRD's module has a float64 golden test in test_baseline_losses.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from fbt_engine.methods import crd as crd_module
from method_helpers import TRAIN_LABELS, batch, make, prelogits


def test_crd_draws_other_class_negatives_and_updates_the_bank(monkeypatch) -> None:
    m = make("crd")
    assert m.k == len(TRAIN_LABELS) - 1  # OFA-KD's 16384 capped at the dataset's size - 1
    drawn = {}
    original = crd_module.crd_contrast_indices

    def spy(*args, **kwargs):
        drawn["idx"] = original(*args, **kwargs)
        return drawn["idx"]
    monkeypatch.setattr(crd_module, "crd_contrast_indices", spy)
    x, y, idx = batch()
    before = copy.deepcopy(m.crd)
    torch.manual_seed(5)
    _, terms = m(x, y, idx)
    rows = drawn["idx"]
    assert rows.shape == (6, m.k + 1) and torch.equal(rows[:, 0], idx)
    assert bool((TRAIN_LABELS[rows[:, 1:]] != TRAIN_LABELS[idx][:, None]).all())  # other classes only
    want = before(prelogits(m.student, x), prelogits(m.teacher, x), idx, rows)
    assert terms["crd"].item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(m.crd.memory.memory_s, before.memory.memory_s)  # both banks moved alike
    assert not torch.equal(m.crd.memory.memory_s[idx], copy.deepcopy(make("crd").crd).memory.memory_s[idx])


def test_crd_draws_follow_the_global_rng() -> None:
    """Negatives come from torch's global RNG, which checkpoints save: a resumed run draws the same."""
    x, y, idx = batch()
    runs = []
    for _ in range(2):
        m = make("crd")
        torch.manual_seed(9)
        runs.append(m(x, y, idx)[1]["crd"].item())
    assert runs[0] == runs[1]


def test_crd_without_indices_is_a_clear_error() -> None:
    x, y, _ = batch()
    with pytest.raises(ValueError, match="dataset index"):
        make("crd")(x, y)
