"""Losses: golden values from independent float64 references, gradchecks, detached target sides,
method objectives (term names, weighting)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fbt_engine.config import LossConfig
from fbt_engine.errors import ConfigError
from fbt_engine.losses import (LOSSES, FBTObjective, InfoNCE, Outputs, build_objective, ce_loss,
                               kd_loss, ofa_loss)

N, C = 4, 5


def _t(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


LABELS = torch.tensor([0, 3, 1, 4])
SOFT = torch.tensor([[0.7, 0.1, 0.1, 0.05, 0.05],
                     [0.0, 0.2, 0.0, 0.8, 0.0],
                     [0.25, 0.5, 0.25, 0.0, 0.0],
                     [0.1, 0.1, 0.1, 0.1, 0.6]], dtype=torch.float64)


# --- independent references: plain Python/numpy loops in float64 -----------------------------

def _softmax_row(z: np.ndarray, t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _ref_ce(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> float:
    z = logits.numpy()
    total = 0.0
    for n in range(z.shape[0]):
        q = _softmax_row(z[n])
        dist = [0.0] * z.shape[1]
        if target.ndim == 1:
            dist[int(target[n])] = 1.0
        else:
            dist = list(target[n].numpy())
        dist = [(1 - smoothing) * d + smoothing / z.shape[1] for d in dist]
        total += -sum(d * math.log(qc) for d, qc in zip(dist, q))
    return total / z.shape[0]


def _ref_kd(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    total = 0.0
    for n in range(s.shape[0]):
        q, p = _softmax_row(s[n].numpy(), temp), _softmax_row(t[n].numpy(), temp)
        total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    return temp * temp * total / s.shape[0]


def _ref_ofa(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, eps: float, temp: float) -> float:
    total = 0.0
    for n in range(s.shape[0]):
        q, p = _softmax_row(s[n].numpy(), temp), _softmax_row(t[n].numpy(), temp)
        y = int(np.argmax(target[n].numpy())) if target.ndim == 2 else int(target[n])
        for c in range(s.shape[1]):
            m = 1.0 if c == y else 0.0
            total -= ((p[c] + m) ** eps - m) * math.log(q[c])
    return total / s.shape[0]


def _ref_nce(module: InfoNCE, fs: torch.Tensor, ft: torch.Tensor) -> float:
    ws, bs = module.proj_student.weight.detach().numpy(), module.proj_student.bias.detach().numpy()
    wt, bt = module.proj_target.weight.detach().numpy(), module.proj_target.bias.detach().numpy()
    tau = min(max(math.exp(module.log_tau.item()), 0.01), 1.0)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / math.sqrt(sum(x * x for x in v))

    q = [unit(ws @ row + bs) for row in fs.numpy()]
    k = [unit(wt @ row + bt) for row in ft.numpy()]
    n = len(q)
    sim = [[float(np.dot(q[i], k[j])) / tau for j in range(n)] for i in range(n)]
    loss_qk = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    loss_kq = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (loss_qk + loss_kq)


def _nce(d_s: int = 6, d_t: int = 7, dim: int = 3, tau: float = 0.07) -> InfoNCE:
    torch.manual_seed(0)
    return InfoNCE(d_s, d_t, dim, tau).double()


# --- golden values --------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_golden_hard_and_soft(smoothing: float) -> None:
    z = _t(1, N, C)
    assert ce_loss(z, LABELS, smoothing).item() == pytest.approx(_ref_ce(z, LABELS, smoothing), rel=1e-10)
    assert ce_loss(z, SOFT, smoothing).item() == pytest.approx(_ref_ce(z, SOFT, smoothing), rel=1e-10)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_golden(temp: float) -> None:
    s, t = _t(2, N, C), _t(3, N, C)
    assert kd_loss(s, t, temp).item() == pytest.approx(_ref_kd(s, t, temp), rel=1e-10)
    assert kd_loss(t, t, temp).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("eps,temp", [(1.0, 1.0), (1.5, 1.0), (2.0, 3.0)])
def test_ofa_golden(eps: float, temp: float) -> None:
    s, t = _t(4, N, C), _t(5, N, C)
    assert ofa_loss(s, t, LABELS, eps, temp).item() == pytest.approx(_ref_ofa(s, t, LABELS, eps, temp), rel=1e-10)
    # soft targets: the label mask is the argmax
    assert ofa_loss(s, t, SOFT, eps, temp).item() == pytest.approx(_ref_ofa(s, t, SOFT, eps, temp), rel=1e-10)


def test_ofa_eps1_is_soft_label_ce() -> None:
    s, t = _t(6, N, C), _t(7, N, C)
    for temp in (1.0, 2.5):
        p = F.softmax(t / temp, dim=1)
        want = ce_loss(s / temp, p)
        assert torch.allclose(ofa_loss(s, t, LABELS, 1.0, temp), want, rtol=1e-12, atol=1e-12)


def test_ofa_sharpens_target_class() -> None:
    # eps > 1 puts more weight on the labelled class than eps = 1 (OFA-KD's motivation)
    s, t = torch.zeros(1, C, dtype=torch.float64), _t(8, 1, C)
    y = torch.tensor([2])
    g1 = torch.autograd.functional.jacobian(lambda z: ofa_loss(z, t, y, 1.0), s)[0, 2]
    g2 = torch.autograd.functional.jacobian(lambda z: ofa_loss(z, t, y, 2.0), s)[0, 2]
    assert g2 < g1  # stronger push up on the target logit


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_infonce_golden(tau: float) -> None:
    m = _nce(tau=tau)
    fs, ft = _t(9, N, 6), _t(10, N, 7)
    assert m(fs, ft).item() == pytest.approx(_ref_nce(m, fs, ft), rel=1e-10)


def test_infonce_tau_clamped() -> None:
    m = _nce(tau=0.07)
    with torch.no_grad():
        m.log_tau.fill_(math.log(1e-4))
    assert m.tau.item() == pytest.approx(0.01)
    with torch.no_grad():
        m.log_tau.fill_(math.log(50.0))
    assert m.tau.item() == pytest.approx(1.0)
    fs, ft = _t(9, N, 6), _t(10, N, 7)
    assert m(fs, ft).item() == pytest.approx(_ref_nce(m, fs, ft), rel=1e-10)


def test_infonce_init() -> None:
    m = InfoNCE(8, 12)
    assert m.proj_student.out_features == m.proj_target.out_features == 256
    assert m.tau.item() == pytest.approx(0.07)


# --- gradcheck --------------------------------------------------------------------------------

def test_gradcheck_ce() -> None:
    z = _t(11, 3, 4).requires_grad_()
    soft = F.softmax(_t(12, 3, 4), dim=1)
    assert torch.autograd.gradcheck(lambda x: ce_loss(x, torch.tensor([0, 2, 3]), 0.1), (z,))
    assert torch.autograd.gradcheck(lambda x: ce_loss(x, soft, 0.1), (z,))


def test_gradcheck_kd() -> None:
    z, t = _t(13, 3, 4).requires_grad_(), _t(14, 3, 4)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 2.0), (z,))


def test_gradcheck_ofa() -> None:
    z, t = _t(15, 3, 4).requires_grad_(), _t(16, 3, 4)
    y = torch.tensor([1, 0, 3])
    assert torch.autograd.gradcheck(lambda x: ofa_loss(x, t, y, 1.5, 2.0), (z,))


def test_gradcheck_infonce() -> None:
    m = _nce(tau=0.3)
    fs, ft = _t(17, 3, 6).requires_grad_(), _t(18, 3, 7)
    assert torch.autograd.gradcheck(lambda x: m(x, ft), (fs,))
    # through the (learnable) temperature and target head as well
    w = m.proj_target.weight

    def f(log_tau: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        q = F.normalize(m.proj_student(fs.detach()), dim=1)
        k = F.normalize(F.linear(ft, wt, m.proj_target.bias), dim=1)
        logits = q @ k.t() / log_tau.exp()
        labels = torch.arange(3)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))

    # the module's own gradient for log_tau and the target head matches the closed form above
    m.zero_grad()
    m(fs.detach(), ft).backward()
    lt = m.log_tau.detach().clone().requires_grad_()
    wt = w.detach().clone().requires_grad_()
    f(lt, wt).backward()
    assert torch.allclose(m.log_tau.grad, lt.grad) and torch.allclose(w.grad, wt.grad)
    assert torch.autograd.gradcheck(f, (lt.detach().requires_grad_(), wt.detach().requires_grad_()))


# --- detached target sides -------------------------------------------------------------------

def _no_grad(x: torch.Tensor) -> bool:
    return x.grad is None or bool((x.grad == 0).all())


def test_teacher_side_gets_no_grad() -> None:
    s, t = _t(19, N, C).requires_grad_(), _t(20, N, C).requires_grad_()
    (kd_loss(s, t, 4.0) + ofa_loss(s, t, LABELS, 1.5, 1.0)).backward()
    assert s.grad is not None and not _no_grad(s) and _no_grad(t)
    m = _nce()
    fs, ft = _t(21, N, 6).requires_grad_(), _t(22, N, 7).requires_grad_()
    m(fs, ft).backward()
    assert not _no_grad(fs) and _no_grad(ft)
    assert m.proj_target.weight.grad is not None  # the head on the target side still learns


# --- method objectives -----------------------------------------------------------------------

DIMS = {"student": 6, "teacher": 7, "fused": 5}


def _outputs(target: torch.Tensor = LABELS, branches: int = 0) -> Outputs:
    def leaf(seed: int, *shape: int) -> torch.Tensor:
        return _t(seed, *shape).float().requires_grad_()
    return Outputs(student_logits=leaf(30, N, C), student_feat=leaf(31, N, 6),
                   teacher_logits=leaf(32, N, C), teacher_feat=leaf(33, N, 7),
                   fused_logits=leaf(34, N, C), fused_feat=leaf(35, N, 5),
                   branch_logits=[leaf(40 + i, N, C) for i in range(branches)], target=target)


def _check_weighted_sum(total: torch.Tensor, terms: dict[str, torch.Tensor], weights: dict[str, float]) -> None:
    want = sum(weights[name.split("/")[0] if name != "ce/fused" else name] * v for name, v in terms.items())
    assert total.item() == pytest.approx(float(want), rel=1e-5)
    assert all(not v.requires_grad for v in terms.values())  # logged values are detached


def test_registry_and_unknown_method() -> None:
    assert set(LOSSES) >= {"scratch", "kd", "ofa", "fbt"}
    with pytest.raises(ConfigError, match="unknown method") as exc:
        build_objective("fbtt", LossConfig(), DIMS, C)
    assert "fbt" in exc.value.hint


def test_scratch_objective() -> None:
    obj = build_objective("scratch", LossConfig(ce=0.5), DIMS, C)
    out = _outputs()
    total, terms = obj(out)
    assert list(terms) == ["ce"] == obj.term_names()
    assert terms["ce"].item() == pytest.approx(ce_loss(out.student_logits, LABELS).item())
    _check_weighted_sum(total, terms, {"ce": 0.5})
    assert list(obj.parameters()) == []


def test_scratch_label_smoothing_hard_only() -> None:
    obj = build_objective("scratch", LossConfig(), DIMS, C, label_smoothing=0.1)
    out = _outputs()
    assert obj(out)[1]["ce"].item() == pytest.approx(ce_loss(out.student_logits, LABELS, 0.1).item())
    out_soft = _outputs(SOFT.float())
    assert obj(out_soft)[1]["ce"].item() == pytest.approx(ce_loss(out_soft.student_logits, SOFT.float()).item())


def test_kd_objective() -> None:
    cfg = LossConfig(ce=0.3, kd=2.0, kd_temperature=3.0)
    obj = build_objective("kd", cfg, DIMS, C)
    out = _outputs()
    total, terms = obj(out)
    assert list(terms) == ["ce", "kd"] == obj.term_names()
    assert terms["kd"].item() == pytest.approx(kd_loss(out.student_logits, out.teacher_logits, 3.0).item())
    _check_weighted_sum(total, terms, {"ce": 0.3, "kd": 2.0})
    total.backward()
    assert _no_grad(out.teacher_logits)
    _, terms0 = build_objective("kd", replace(cfg, kd=0.0), DIMS, C)(_outputs())
    assert list(terms0) == ["ce"]


def test_ofa_objective() -> None:
    # OFA-KD's weighting (distillers/ofa.py L121-139): the final-logit term and the branch terms
    # have separate weights; each branch has its own eps, the final term uses `ofa_eps`.
    cfg = LossConfig(ce=0.5, ofa=1.5, ofa_branch=0.7, ofa_eps=1.5, ofa_stages=[2, 4], ofa_stage_eps=[1.2, 2.0])
    obj = build_objective("ofa", cfg, DIMS, C)
    out = _outputs(branches=2)
    total, terms = obj(out)
    assert list(terms) == ["ce", "ofa", "ofa/stage2", "ofa/stage4"] == obj.term_names()
    t = out.teacher_logits
    want = {"ce": ce_loss(out.student_logits, LABELS), "ofa": ofa_loss(out.student_logits, t, LABELS, 1.5),
            "ofa/stage2": ofa_loss(out.branch_logits[0], t, LABELS, 1.2),
            "ofa/stage4": ofa_loss(out.branch_logits[1], t, LABELS, 2.0)}
    assert {k: v.item() for k, v in terms.items()} == pytest.approx({k: v.item() for k, v in want.items()})
    weighted = 0.5 * want["ce"] + 1.5 * want["ofa"] + 0.7 * (want["ofa/stage2"] + want["ofa/stage4"])
    assert total.item() == pytest.approx(weighted.item(), rel=1e-6)
    assert all(not v.requires_grad for v in terms.values())
    total.backward()
    assert all(not _no_grad(b) for b in out.branch_logits) and _no_grad(out.teacher_logits)
    with pytest.raises(ValueError, match="branch logits"):
        obj(_outputs(branches=1))


def test_ofa_objective_defaults_and_zero_weights() -> None:
    cfg = LossConfig(ofa_stages=[1, 3])  # OFA-KD's defaults: weights 1, one eps for every term
    assert (cfg.ce, cfg.ofa, cfg.ofa_branch, cfg.ofa_temperature, cfg.ofa_stage_eps) == (1.0, 1.0, 1.0, 1.0, [])
    out = _outputs(branches=2)
    total, terms = build_objective("ofa", cfg, DIMS, C)(out)
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    assert terms["ofa/stage3"].item() == pytest.approx(
        ofa_loss(out.branch_logits[1], out.teacher_logits, LABELS, cfg.ofa_eps).item())
    no_branch = build_objective("ofa", replace(cfg, ofa_branch=0.0), DIMS, C)
    assert list(no_branch(out)[1]) == ["ce", "ofa"] == no_branch.term_names()
    no_final = build_objective("ofa", replace(cfg, ofa=0.0), DIMS, C)
    assert list(no_final(out)[1]) == ["ce", "ofa/stage1", "ofa/stage3"] == no_final.term_names()


def test_ofa_stage_eps_validation() -> None:
    from fbt_engine.config import RunConfig, validate
    base = RunConfig(method="ofa")
    base = replace(base, student=replace(base.student, model="resnet18"), teacher=replace(base.teacher, model="resnet18"))
    validate(replace(base, loss=LossConfig(ofa_stage_eps=[1.0, 1.5, 1.5, 2.0])))
    with pytest.raises(ConfigError, match="ofa_stage_eps"):
        validate(replace(base, loss=LossConfig(ofa_stage_eps=[1.0, 1.5])))
    with pytest.raises(ConfigError, match="ofa_stage_eps"):
        validate(replace(base, loss=LossConfig(ofa_stages=[1], ofa_stage_eps=[0.0])))
    with pytest.raises(ConfigError, match="ofa_branch"):
        validate(replace(base, loss=LossConfig(ofa_branch=-1.0)))


FBT_NAMES = ["ce", "ofa/t->f", "nce/t->f", "ofa/f->s", "nce/f->s", "ofa/t->s", "nce/t->s", "ce/fused"]


@pytest.mark.parametrize("target", [LABELS, SOFT.float()], ids=["hard", "soft"])
def test_fbt_objective_terms_and_total(target: torch.Tensor) -> None:
    cfg = LossConfig(ce=0.5, ofa=2.0, nce=0.3, fused_ce=0.7, ofa_eps=1.5, nce_dim=4)
    obj = build_objective("fbt", cfg, DIMS, C)
    assert isinstance(obj, FBTObjective)
    out = _outputs(target)
    total, terms = obj(out)
    assert list(terms) == FBT_NAMES == obj.term_names()
    assert all(torch.isfinite(v) for v in terms.values())
    _check_weighted_sum(total, terms, {"ce": 0.5, "ofa": 2.0, "nce": 0.3, "ce/fused": 0.7})
    want = ofa_loss(out.fused_logits, out.teacher_logits, target, 1.5, 1.0)
    assert terms["ofa/t->f"].item() == pytest.approx(want.item())
    want = obj.heads["f2s"](out.student_feat, out.fused_feat)
    assert terms["nce/f->s"].item() == pytest.approx(want.item())
    # the InfoNCE heads are learnable parameters of the objective, one module per path
    assert len(list(obj.heads)) == 3 and len(list(obj.parameters())) == 3 * 5
    total.backward()
    assert all(p.grad is not None for p in obj.parameters())
    assert _no_grad(out.teacher_logits) and _no_grad(out.teacher_feat)
    assert not _no_grad(out.fused_logits) and not _no_grad(out.fused_feat)  # T->F teaches F


def test_fbt_f_to_s_does_not_train_fused() -> None:
    obj = build_objective("fbt", LossConfig(ce=0.0, paths=["f->s"], nce_dim=4), DIMS, C)
    out = _outputs()
    total, terms = obj(out)
    assert list(terms) == ["ofa/f->s", "nce/f->s"]
    total.backward()
    assert _no_grad(out.fused_logits) and _no_grad(out.fused_feat)
    assert not _no_grad(out.student_logits) and not _no_grad(out.student_feat)


def test_fbt_zero_weights_remove_terms() -> None:
    cfg = LossConfig(nce=0.0, paths=["t->f", "t->s"])
    obj = build_objective("fbt", cfg, {}, C)  # no InfoNCE: no feature widths needed
    out = _outputs()
    out.student_feat = out.teacher_feat = out.fused_feat = None
    total, terms = obj(out)
    assert list(terms) == ["ce", "ofa/t->f", "ofa/t->s"] == obj.term_names()
    assert list(obj.parameters()) == []  # no unused heads (DDP would complain)
    _check_weighted_sum(total, terms, {"ce": 1.0, "ofa": 1.0})
    total, terms = build_objective("fbt", replace(cfg, ce=0.0, ofa=0.0), {}, C)(out)
    assert terms == {} and total.item() == 0.0 and total.requires_grad


def test_fbt_missing_width_is_clear() -> None:
    with pytest.raises(ValueError, match="fused"):
        build_objective("fbt", LossConfig(), {"student": 4, "teacher": 4}, C)


# OFA-KD's projector branches: tests/engine/test_ofa_branches.py


# --- InfoNCE under torch.distributed (2 CPU processes, gloo) ---------------------------------

_DIST_WORKER = r"""
import sys, torch, torch.distributed as dist
from fbt_engine.losses import InfoNCE
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
g = torch.Generator().manual_seed(0)
fs, ft = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 7, generator=g, dtype=torch.float64)
result = {}
for name, rows in (("equal", [range(0, 3), range(3, 6)]), ("unequal", [range(0, 4), range(4, 6)])):
    torch.manual_seed(0)
    m = InfoNCE(6, 7, 3, 0.2).double()
    x = fs[list(rows[rank])].clone().requires_grad_()
    loss = m(x, ft[list(rows[rank])])
    loss.backward()
    result[name] = dict(loss=loss.detach(), x_grad=x.grad, grads={k: p.grad for k, p in m.named_parameters()})
torch.save(result, out)
dist.destroy_process_group()
"""


def test_infonce_distributed_matches_global_batch(tmp_path) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_DIST_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"),
                               str(tmp_path / f"r{r}.pt")], env=env, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for r, p in enumerate(procs):
        _, err = p.communicate(timeout=60)
        # gloo sometimes aborts in its own teardown, after the worker saved its result (seen under
        # heavy load: "terminate called without an active exception", -6); anything else fails
        teardown_abort = p.returncode == -6 and "without an active exception" in err and (tmp_path / f"r{r}.pt").is_file()
        assert p.returncode == 0 or teardown_abort, err[-2000:]
    res = [torch.load(tmp_path / f"r{r}.pt") for r in range(2)]

    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 7, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    m = InfoNCE(6, 7, 3, 0.2).double()
    x = fs.clone().requires_grad_()
    full = m(x, ft)
    full.backward()
    # unequal shards: each rank's loss averages its own rows against all columns of both ranks
    uneq = [r["unequal"]["loss"] for r in res]
    assert ((4 * uneq[0] + 2 * uneq[1]) / 6).item() == pytest.approx(full.item(), rel=1e-10)
    # equal shards: the mean over ranks (what DDP averages) is the global loss, with exact gradients
    eq = [r["equal"] for r in res]
    assert ((eq[0]["loss"] + eq[1]["loss"]) / 2).item() == pytest.approx(full.item(), rel=1e-10)
    for name, p in m.named_parameters():
        assert torch.allclose((eq[0]["grads"][name] + eq[1]["grads"][name]) / 2, p.grad, atol=1e-10), name
    assert torch.allclose(torch.cat([eq[0]["x_grad"], eq[1]["x_grad"]]) / 2, x.grad, atol=1e-10)


def test_half_precision_logits_are_upcast() -> None:
    s, t = _t(50, N, C).bfloat16(), _t(51, N, C).bfloat16()
    for loss in (ce_loss(s, LABELS), kd_loss(s, t, 4.0), ofa_loss(s, t, LABELS, 1.5)):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert ofa_loss(s, t, LABELS, 1.5).item() == pytest.approx(
        _ref_ofa(s.double(), t.double(), LABELS, 1.5, 1.0), rel=1e-5)


def test_objectives_need_only_their_outputs() -> None:
    out = Outputs(student_logits=torch.randn(N, C), target=LABELS)  # scratch: no teacher at all
    total, terms = build_objective("scratch", LossConfig(), {}, C)(out)
    assert list(terms) == ["ce"]
    with pytest.raises(ValueError, match="teacher_logits"):
        build_objective("kd", LossConfig(), {}, C)(out)
