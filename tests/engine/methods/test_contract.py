"""What every registered method promises (methods/_base.py), checked for each on two pair kinds:
the weighted total, detached logs, the frozen teacher, exactly the declared modules training,
per-term weights, evaluation logits and a checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from fbt_engine import config as C
from fbt_engine import methods
from fbt_engine.errors import ConfigError
from method_helpers import PAIRS, batch, make

ALL = methods.names()
DISTILLERS = [m for m in ALL if methods.get(m).needs_teacher]


def test_registry_lists_every_module_in_order() -> None:
    assert ALL[0] == "scratch" and ALL[-1] == "fbt"
    assert set(ALL) == {"scratch", "kd", "fitnet", "crd", "dkd", "dist", "cc", "rkd", "ofa", "fbt"}
    assert C.METHODS == ALL  # the config validates against the same registry
    for name, cls in methods.all_methods().items():
        assert cls.name == name and cls.summary and "student" in cls.trains
    with pytest.raises(ConfigError, match="unknown method") as err:
        methods.get("fitnett")
    assert "fitnet" in err.value.hint


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("name", ALL)
def test_total_is_the_weighted_sum_and_only_declared_modules_train(name: str, pair: str) -> None:
    m = make(name, pair)
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    weights = m.weights()
    assert list(terms) == m.term_names() == [n for n, w in weights.items() if w > 0]
    assert all(not v.requires_grad and torch.isfinite(v) for v in terms.values())
    assert total.item() == pytest.approx(sum(weights[k] * v.item() for k, v in terms.items()), rel=1e-5)
    total.backward()
    if m.teacher is not None:
        assert not m.teacher.training  # frozen: eval mode though the method is in train mode
        assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert any(p.grad is not None for p in m.student.parameters())
    trained = {n.split(".")[0] for n, p in m.named_parameters() if p.grad is not None}
    assert trained <= set(m.trains) and "student" in trained
    assert trained == {t for t in m.trains if any(p.requires_grad for p in getattr(m, t).parameters())}


@pytest.mark.parametrize("name", DISTILLERS)
def test_per_term_weights_override_and_remove_terms(name: str) -> None:
    base = make(name)
    first_kd_term = [n for n in base.term_names() if n != "ce"][0]
    m = make(name, loss={"weights": {first_kd_term: 0.0, "ce": 0.5}})
    _, terms = m(*batch())
    assert first_kd_term not in terms and m.weights()["ce"] == 0.5
    with pytest.raises(ConfigError, match="does not have") as err:
        make(name, loss={"weights": {"no-such-term": 1.0}})
    assert "ce" in err.value.hint  # lists the method's terms


@pytest.mark.parametrize("name", ALL)
def test_eval_logits_and_checkpoint_round_trip(name: str) -> None:
    m = make(name)
    x, y, idx = batch()
    m(x, y, idx)[0].backward()  # one forward (CRD's memory bank changes)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.01)
    m.eval()
    out = m.eval_logits(x, with_teacher=True)
    assert out["model"].shape == (6, 5)
    assert ("teacher" in out) == (m.teacher is not None) and ("fused" in out) == (name == "fbt")
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("teacher.")}  # what a checkpoint holds
    fresh = make(name, seed=123).eval()
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.startswith("teacher.") for k in missing)
    with torch.no_grad():
        fresh.teacher is None or fresh.teacher.load_state_dict(m.teacher.state_dict())
        again = fresh.eval_logits(x, with_teacher=True)
    for key in out:
        assert torch.allclose(out[key], again[key], atol=1e-5), key


@pytest.mark.parametrize("name", DISTILLERS)
def test_soft_targets_work(name: str) -> None:
    total, terms = make(name)(*batch(soft=True))
    assert torch.isfinite(total) and set(terms) == set(make(name).term_names())


def test_params_table() -> None:
    scratch, ofa = make("scratch").params(), make("ofa").params()
    assert scratch["extra"] == 0 and scratch["trainable"] == scratch["student"] and "teacher" not in scratch
    assert ofa["extra"] > 0 and ofa["trainable"] == ofa["student"] + ofa["extra"]
    fbt = make("fbt").params()
    assert {"fused_total", "shared_with_teacher", "shared_with_student", "new_learnable", "extra"} <= set(fbt)


def test_preflight_names_a_per_term_weight_the_method_lacks() -> None:
    """Checked before any model is built or run folder made: the file, the bad name, the real terms."""
    from fbt_engine import preflight
    cfg = C.from_dict({"method": "fbt", "teacher": {"model": "resnet18", "train": {"epochs": 1}},
                       "student": {"model": "resnet18"}, "loss": {"feature": "mse", "weights": {"nce/t->f": 0}}})
    with pytest.raises(ConfigError) as err:
        preflight.check(cfg, source="x.toml")
    assert "x.toml" in err.value.message and "'nce/t->f'" in err.value.message
    assert "mse/t->f" in err.value.hint
