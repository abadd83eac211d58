"""Live health warnings: every rule of health.RULES fires on a synthetic event sequence that provokes
it (with the right signal, value and threshold) and stays quiet on a healthy one; one tiny real run
shows a warning landing in events.jsonl and log.txt."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace
from pathlib import Path

import pytest

from fbt_engine import config as C
from fbt_engine.events import Emitter, Event, read_events
from fbt_engine.health import GRAD_MIN_HISTORY, MAX_REPEATS, RULES, HealthMonitor
from fbt_engine.protocol import HealthWarning

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
PATHS = ("t->f", "f->s", "t->s")
BATCH = 64


def ev(type_: str, **data) -> Event:
    return Event(type=type_, run="r", t=0.0, data=data)


def started(batch: int = BATCH, warmup: int = 0, world: int = 1) -> Event:
    return ev("started", config={"train": {"batch_size": batch, "warmup_epochs": warmup}}, world_size=world)


def step(epoch: int, n: int, phase: str = "distill", **over) -> Event:
    """A healthy fbt step: losses well below chance, F spread out, temperatures off their bounds."""
    terms = {"ce": 2.0 - 0.1 * epoch, **{f"nce/{p}": 2.0 - 0.1 * epoch for p in PATHS}}
    signals = {"grad_norm": 1.0 + 0.01 * (n % 3), "fused_spread": 0.5, **{f"tau/{p}": 0.07 for p in PATHS}}
    terms.update(over.pop("terms", {}))
    signals.update(over.pop("signals", {}))
    return ev("step", phase=phase, epoch=epoch, step=n, terms=terms, loss=sum(terms.values()), signals=signals,
              **over)


def evaluation(epoch: int, phase: str = "distill", **over) -> Event:
    return ev("eval", phase=phase, epoch=epoch, **{"student_top1": 50.0 + epoch, "fused_top1": 70.0 + epoch,
                                                   "teacher_top1": 80.0, **over})


def healthy(epochs: int = 6, steps: int = 10) -> list[Event]:
    out = [started(), ev("phase", phase="distill", epochs=epochs, steps_per_epoch=steps)]
    for e in range(1, epochs + 1):
        out += [step(e, (e - 1) * steps + i) for i in range(1, steps + 1)]
        out.append(evaluation(e))
    return out


def monitor(cfg: C.HealthConfig | None = None) -> tuple[HealthMonitor, list[HealthWarning]]:
    sent: list[HealthWarning] = []
    return HealthMonitor(cfg or C.HealthConfig(), sent.append), sent


def feed(events: list[Event], cfg: C.HealthConfig | None = None) -> list[HealthWarning]:
    m, sent = monitor(cfg)
    for e in events:
        m(e)
    return sent


def only(sent: list[HealthWarning], rule: str) -> list[HealthWarning]:
    assert {w.rule for w in sent} == {rule}, [w.message for w in sent]
    return sent


def test_a_healthy_run_raises_nothing() -> None:
    assert feed(healthy()) == []


def test_collapse_of_the_fused_features() -> None:
    events = healthy(epochs=1)
    events.insert(5, step(1, 99, signals={"fused_spread": 0.003}))
    (w,) = only(feed(events), "collapse")
    assert (w.signal, w.value, w.threshold, w.step, w.epoch) == ("fused_spread", 0.003, 0.02, 99, 1)
    assert "fused_spread = 0.003" in w.message and "0.02" in w.message and w.hint


def test_infonce_stuck_at_chance_after_warmup_only() -> None:
    chance = math.log(BATCH)
    events = [started(), ev("phase", phase="distill")]
    for e in (1, 2):  # epoch 1 is the warm-up (health.warmup_epochs = 1): at chance there is fine
        events += [step(e, 10 * e + i, terms={"nce/t->f": chance + 0.01}) for i in range(3)]
        events.append(evaluation(e))
    (w,) = only(feed(events), "nce_chance")
    assert w.signal == "nce/t->f" and w.epoch == 2 and w.step is None
    assert w.value == pytest.approx(chance + 0.01) and w.threshold == pytest.approx(0.9 * chance)
    assert f"ln({BATCH})" in w.message


def test_chance_counts_the_negatives_of_every_rank() -> None:
    events = [started(batch=8, world=4), ev("phase", phase="distill"), step(2, 1, terms={"nce/f->s": 3.2}),
              evaluation(2)]
    (w,) = only(feed(events), "nce_chance")
    assert w.threshold == pytest.approx(0.9 * math.log(32))


@pytest.mark.parametrize("tau, rule, threshold", [(0.01, "tau_floor", 0.0105), (1.0, "tau_ceiling", 0.95)])
def test_temperature_on_its_clamp_bound(tau: float, rule: str, threshold: float) -> None:
    events = healthy(epochs=2)
    events.insert(-1, step(2, 50, signals={"tau/f->s": tau}))
    (w,) = only(feed(events), rule)
    assert (w.signal, w.value) == ("tau/f->s", tau) and w.threshold == pytest.approx(threshold)


def test_temperature_at_a_bound_during_warmup_is_not_warned() -> None:
    events = healthy(epochs=1)
    events.insert(-1, step(1, 50, signals={"tau/f->s": 0.01}))
    assert feed(events) == []


def test_fused_far_below_the_teacher() -> None:
    events = healthy(epochs=2)
    events[-1] = evaluation(2, fused_top1=40.0, teacher_top1=80.0)
    (w,) = only(feed(events), "fused_gap")
    assert (w.signal, w.value, w.threshold) == ("fused_top1", 40.0, 50.0)


def test_accuracy_rules_let_a_long_run_settle_first() -> None:
    """On a 100-epoch run, F may trail T for a while: the gap is judged from epoch 11 (health.settle = 0.1)."""
    events = [started(), ev("phase", phase="distill", epochs=100, steps_per_epoch=1)]
    for e in range(1, 13):
        events += [step(e, e), evaluation(e, fused_top1=40.0, teacher_top1=80.0)]
    (w,) = only(feed(events), "fused_gap")
    assert w.epoch == 11


def test_student_below_the_scratch_run_at_the_same_epoch(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    em = Emitter("scratch", scratch / "events.jsonl")
    for epoch, top1 in ((1, 40.0), (2, 60.0), (3, 65.0)):
        em.emit("eval", phase="distill", epoch=epoch, student_top1=top1)
    em.close()
    sent = feed(healthy(epochs=3), C.HealthConfig(baseline=str(scratch)))  # student: 51, 52, 53
    (w,) = only(sent, "below_scratch")  # epoch 1 is the warm-up; epoch 3, still below, is not said again
    assert (w.signal, w.value, w.threshold, w.epoch) == ("student_top1", 52.0, 59.0, 2)
    assert "scratch run has 60.00 at epoch 2" in w.message


def test_below_scratch_is_quiet_without_a_baseline_or_when_it_is_missing(tmp_path: Path) -> None:
    assert feed(healthy(epochs=3), C.HealthConfig(baseline=str(tmp_path / "nowhere"))) == []


def test_a_loss_term_rising_over_several_evaluations() -> None:
    events = [started(), ev("phase", phase="distill")]
    for e in range(1, 6):
        events += [step(e, 10 * e + i, terms={"nce/f->s": 1.0 + 0.2 * e}) for i in range(2)]
        events.append(evaluation(e))
    sent = feed(events)
    (w,) = only(sent, "loss_rising")
    assert (w.signal, w.value, w.threshold, w.epoch) == ("nce/f->s", 3, 3, 4)
    assert "1.2 -> 1.8" in w.message


def test_a_gradient_norm_spike() -> None:
    events = healthy(epochs=1)
    events.insert(2 + GRAD_MIN_HISTORY + 1, step(1, 77, signals={"grad_norm": 50.0}))
    (w,) = only(feed(events), "grad_spike")
    assert (w.signal, w.value, w.step) == ("grad_norm", 50.0, 77)
    assert w.threshold == pytest.approx(10 * 1.01)


def test_no_spike_before_enough_history() -> None:
    events = healthy(epochs=1)
    events.insert(3, step(1, 77, signals={"grad_norm": 50.0}))
    assert feed(events) == []


def test_once_until_it_recovers_and_at_most_max_repeats_per_phase() -> None:
    events = [started(), ev("phase", phase="distill")]
    for i in range(1, 40):  # 3 collapsed steps, 1 healthy step, again and again
        events.append(step(1, i, signals={"fused_spread": 0.5 if i % 4 == 0 else 0.001}))
    sent = only(feed(events), "collapse")
    assert [w.step for w in sent] == [1, 5, 9][:MAX_REPEATS]


def test_rules_are_one_table_with_distinct_names() -> None:
    names = [r.name for r in RULES]
    assert len(names) == len(set(names)) and {r.on for r in RULES} == {"step", "eval"}
    assert {"collapse", "nce_chance", "tau_floor", "tau_ceiling", "fused_gap", "below_scratch", "loss_rising",
            "grad_spike"} == set(names)


def test_health_config_is_validated_and_left_out_of_the_hash() -> None:
    cfg = C.load_preset(TINY, ["health.grad_spike=20", "health.baseline=\"runs/scratch\""])
    assert cfg.health.grad_spike == 20 and C.config_hash(cfg) == C.config_hash(C.load_preset(TINY))
    with pytest.raises(C.ConfigError, match="health.spread_min"):
        C.load_preset(TINY, ["health.spread_min=2"])
    with pytest.raises(C.ConfigError, match="health.warmup"):
        C.load_preset(TINY, ["health.warmup=2"])


def test_a_real_run_writes_its_warnings_to_events_and_log(tmp_path: Path) -> None:
    """The tiny fbt run with a spread threshold no real batch can pass (1.0): the collapse rule trips on
    the real `fused_spread` of the first logged step."""
    from fbt_engine import run as R
    cfg = C.load_preset(TINY, ["train.epochs=1", "train.max_steps_per_epoch=2", "teacher.train.epochs=1",
                               "health.spread_min=1.0"])
    code, run_dir = R.start(cfg, runs_dir=str(tmp_path))
    assert code == 0
    items = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event)]
    steps = [e for e in items if e.type == "step" and e.get("phase") == "distill"]
    assert {"grad_norm", "fused_spread", "tau/t->f", "tau/f->s", "tau/t->s"} <= set(steps[0].get("signals"))
    assert 0 < steps[0].get("signals")["fused_spread"] < 1
    warnings = [e for e in items if e.type == "warning"]
    assert [(w.get("rule"), w.get("signal"), w.get("step")) for w in warnings] == [("collapse", "fused_spread", 1)]
    assert set(warnings[0].data) == {f.name for f in fields(HealthWarning)}  # the declared fields only
    assert warnings[0].get("value") == pytest.approx(steps[0].get("signals")["fused_spread"], abs=1e-5)
    log = (run_dir / "log.txt").read_text(encoding="utf-8")
    assert "warning (distill step 1): fused_spread = " in log and "hint: " in log
