"""Baseline losses (OFA-KD's FitNet, CRD, DKD, DIST, CC, RKD): golden values from independent
float64 references written from OFA-KD's formulas with loops, float32 agreement, gradchecks,
detached teacher sides, edge cases and the defaults table."""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fbt_engine.baseline_losses import (CC, CRD, DEFAULTS, CRDMemory, FitNet, FitNetProjector, cc_loss,
                                        crd_contrast_indices, crd_contrast_loss, dist_loss, dkd_loss,
                                        dkd_terms, dkd_warmup_factor, fitnet_loss, rkd_loss, rkd_terms)
from fbt_engine.losses import kd_loss

N, C = 4, 5
LABELS = torch.tensor([0, 3, 1, 4])
SOFT = torch.tensor([[0.7, 0.1, 0.1, 0.05, 0.05],
                     [0.0, 0.2, 0.0, 0.8, 0.0],
                     [0.25, 0.5, 0.25, 0.0, 0.0],
                     [0.1, 0.1, 0.1, 0.1, 0.6]], dtype=torch.float64)


def _t(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q) if pc > 0)


def _smooth_l1(a: list[float], b: list[float]) -> float:
    d = [abs(x - y) for x, y in zip(a, b)]
    return sum(0.5 * v * v if v < 1 else v - 0.5 for v in d) / len(d)


def _f32_close(f32: torch.Tensor, ref: float) -> None:
    assert f32.dtype == torch.float32
    assert f32.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


# --- FitNet ---------------------------------------------------------------------------------

def _ref_conv1x1(w: np.ndarray, x: np.ndarray) -> np.ndarray:  # w (Ct, Cs), x (N, Cs, H, W)
    n, cs, h, wd = x.shape
    out = np.zeros((n, w.shape[0], h, wd))
    for b in range(n):
        for o in range(w.shape[0]):
            for i in range(h):
                for j in range(wd):
                    out[b, o, i, j] = sum(w[o, c] * x[b, c, i, j] for c in range(cs))
    return out


def _ref_mse(a: np.ndarray, b: np.ndarray) -> float:
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b)) / len(flat_a)


def _fitnet(shapes_s: list, shapes_t: list) -> FitNet:
    torch.manual_seed(0)
    return FitNet(shapes_s, shapes_t).double()


def test_fitnet_golden_two_stages() -> None:
    m = _fitnet([(3, 2, 2), (2, 1, 1)], [(4, 2, 2), (5, 1, 1)])
    fs = [_t(1, 2, 3, 2, 2), _t(2, 2, 2, 1, 1)]
    ft = [_t(3, 2, 4, 2, 2), _t(4, 2, 5, 1, 1)]
    ref = sum(_ref_mse(_ref_conv1x1(p.conv.weight.detach()[:, :, 0, 0].numpy(), s.numpy()), t.numpy())
              for p, s, t in zip(m.projectors, fs, ft))
    assert m(fs, ft).item() == pytest.approx(ref, rel=1e-10)
    _f32_close(m.float()([f.float() for f in fs], [f.float() for f in ft]), ref)


def test_fitnet_projector_is_ofakd_conv() -> None:
    torch.manual_seed(0)
    p = FitNetProjector((64, 4, 4), (256, 4, 4))
    assert p.conv.bias is None and p.conv.kernel_size == (1, 1) and p.conv.stride == (1, 1)
    # Kaiming normal, fan_out = C_t * 1 * 1, relu gain: std = sqrt(2 / 256)
    assert p.conv.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)


def test_fitnet_grid_mismatch_pools_or_interpolates() -> None:
    torch.manual_seed(0)
    p = FitNetProjector((2, 4, 4), (3, 2, 2)).double()
    x = _t(5, 1, 2, 4, 4)
    y = _ref_conv1x1(p.conv.weight.detach()[:, :, 0, 0].numpy(), x.numpy())
    want = np.array([[[y[0, o, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range(2)] for i in range(2)]
                     for o in range(3)])
    assert np.allclose(p(x).detach().numpy()[0], want, atol=1e-12)
    up = FitNetProjector((2, 2, 2), (3, 3, 3)).double()
    assert up(_t(6, 1, 2, 2, 2)).shape == (1, 3, 3, 3)


def test_fitnet_bad_shapes_refused() -> None:
    with pytest.raises(ValueError, match="NCHW"):
        FitNetProjector((196, 384), (512, 7, 7))
    with pytest.raises(ValueError, match="stage shapes"):
        FitNet([(3, 2, 2)], [(4, 2, 2), (4, 1, 1)])
    with pytest.raises(ValueError, match="one teacher feature"):
        fitnet_loss([_t(1, 1, 2, 1, 1)], [])


def test_fitnet_identity_is_zero_and_teacher_detached() -> None:
    m = _fitnet([(3, 2, 2)], [(3, 2, 2)])
    with torch.no_grad():
        m.projectors[0].conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    f = _t(7, 2, 3, 2, 2)
    assert m([f], [f]).item() == 0.0
    ft = _t(8, 2, 3, 2, 2).requires_grad_()
    fs = _t(9, 2, 3, 2, 2).requires_grad_()
    m([fs], [ft]).backward()
    assert ft.grad is None and fs.grad is not None and m.projectors[0].conv.weight.grad is not None


def test_fitnet_gradcheck() -> None:
    m = _fitnet([(2, 2, 2)], [(3, 2, 2)])
    fs, ft = _t(10, 2, 2, 2, 2).requires_grad_(), _t(11, 2, 3, 2, 2)
    w = m.projectors[0].conv.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, wt: fitnet_loss([F.conv2d(x, wt)], [ft]), (fs, w))


# --- CRD --------------------------------------------------------------------------------------

def _ref_nce(x: np.ndarray, num_data: int) -> float:
    m, pn, eps = x.shape[1] - 1, 1.0 / num_data, 1e-7
    total = 0.0
    for n in range(x.shape[0]):
        total += math.log(x[n, 0] / (x[n, 0] + m * pn + eps))
        for k in range(1, x.shape[1]):
            total += math.log(m * pn / (x[n, k] + m * pn + eps))
    return -total / x.shape[0]


def _ref_embed(lin: torch.nn.Linear, feat: torch.Tensor) -> list[np.ndarray]:
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    out = []
    for row in feat.detach().numpy():
        v = np.array([sum(w[o, i] * row[i] for i in range(len(row))) + b[o] for o in range(w.shape[0])])
        out.append(v / math.sqrt(sum(x * x for x in v)))
    return out


def _ref_scores(memory: np.ndarray, idx: np.ndarray, v: list[np.ndarray], temp: float) -> np.ndarray:
    return np.array([[math.exp(float(np.dot(memory[idx[n, k]], v[n])) / temp) for k in range(idx.shape[1])]
                     for n in range(idx.shape[0])])


NUM_DATA, K, DIM = 10, 4, 3
DATA_LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def _crd(seed: int = 0) -> CRD:
    torch.manual_seed(0)
    return CRD(5, 6, NUM_DATA, feat_dim=DIM, k=K, temperature=0.5, momentum=0.5, seed=seed).double()


def test_crd_contrast_loss_golden() -> None:
    x = _t(20, 3, 5).exp()
    assert crd_contrast_loss(x, 100).item() == pytest.approx(_ref_nce(x.numpy(), 100), rel=1e-10)
    assert crd_contrast_loss(x.unsqueeze(2), 100).shape == ()  # OFA-KD's (N, K+1, 1) scores
    _f32_close(crd_contrast_loss(x.float(), 100), _ref_nce(x.numpy(), 100))


def _ref_crd_step(m: CRD, mem_s: np.ndarray, mem_t: np.ndarray, fs: torch.Tensor, ft: torch.Tensor,
                  index: torch.Tensor, idx: np.ndarray, z: tuple[float, float] | None):
    v_s, v_t = _ref_embed(m.embed_s, fs), _ref_embed(m.embed_t, ft)
    out_s = _ref_scores(mem_t, idx, v_s, 0.5)
    out_t = _ref_scores(mem_s, idx, v_t, 0.5)
    if z is None:
        z = (out_s.mean() * NUM_DATA, out_t.mean() * NUM_DATA)
    loss = _ref_nce(out_s / z[0], NUM_DATA) + _ref_nce(out_t / z[1], NUM_DATA)
    new_s, new_t = mem_s.copy(), mem_t.copy()
    for n, i in enumerate(index.tolist()):
        for mem, v in ((new_s, v_s[n]), (new_t, v_t[n])):
            row = 0.5 * mem[i] + 0.5 * v
            mem[i] = row / math.sqrt(sum(x * x for x in row))
    return loss, z, new_s, new_t


def test_crd_golden_two_steps_with_bank_update() -> None:
    m = _crd()
    g = torch.Generator().manual_seed(3)
    mem_s, mem_t, z = m.memory.memory_s.numpy().copy(), m.memory.memory_t.numpy().copy(), None
    for step in range(2):
        index = torch.tensor([1, 4, 8]) + step
        fs, ft = _t(21 + step, 3, 5), _t(23 + step, 3, 6)
        idx = crd_contrast_indices(index, DATA_LABELS[index], DATA_LABELS, K, g)
        ref, z, mem_s, mem_t = _ref_crd_step(m, mem_s, mem_t, fs, ft, index, idx.numpy(), z)
        assert m(fs, ft, index, idx).item() == pytest.approx(ref, rel=1e-10)
        assert np.allclose(m.memory.memory_s.numpy(), mem_s, atol=1e-12)
        assert np.allclose(m.memory.memory_t.numpy(), mem_t, atol=1e-12)
    assert m.memory.z.tolist() == pytest.approx(list(z), rel=1e-12)  # Z fixed on the first step


def test_crd_float32_matches_float64() -> None:
    m64 = _crd()
    m32 = copy.deepcopy(m64).float()
    index = torch.tensor([0, 5, 7])
    idx = crd_contrast_indices(index, DATA_LABELS[index], DATA_LABELS, K, torch.Generator().manual_seed(1))
    fs, ft = _t(25, 3, 5), _t(26, 3, 6)
    _f32_close(m32(fs.float(), ft.float(), index, idx), m64(fs, ft, index, idx).item())


def test_crd_memory_init_and_determinism() -> None:
    a, b, c = (CRDMemory(DIM, NUM_DATA, K, seed=s) for s in (7, 7, 8))
    stdv = 1.0 / math.sqrt(DIM / 3)
    assert a.memory_s.abs().max() <= stdv and a.memory_s.shape == (NUM_DATA, DIM)
    assert torch.equal(a.memory_s, b.memory_s) and torch.equal(a.memory_t, b.memory_t)
    assert not torch.equal(a.memory_s, c.memory_s)
    assert a.z.tolist() == [-1.0, -1.0] and {"memory_s", "memory_t", "z"} <= set(a.state_dict())
    index = torch.tensor([2, 3])
    da, db = a.draw(index), b.draw(index)
    assert torch.equal(da, db) and da.shape == (2, K + 1) and da[:, 0].tolist() == [2, 3]
    assert int(da.min()) >= 0 and int(da.max()) < NUM_DATA
    m1, m2 = _crd(seed=4), _crd(seed=4)  # whole module: same seed, same losses with drawn negatives
    fs, ft = _t(27, 2, 5), _t(28, 2, 6)
    assert m1(fs, ft, index).item() == m2(fs, ft, index).item()


def test_crd_contrast_indices_like_ofakd_dataset() -> None:
    index = torch.tensor([0, 4, 8])
    idx = crd_contrast_indices(index, DATA_LABELS[index], DATA_LABELS, 50, torch.Generator().manual_seed(0))
    assert idx.shape == (3, 51) and idx[:, 0].tolist() == [0, 4, 8]
    for n in range(3):  # negatives come from other classes only
        assert (DATA_LABELS[idx[n, 1:]] != DATA_LABELS[index[n]]).all()
    again = crd_contrast_indices(index, DATA_LABELS[index], DATA_LABELS, 50, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_crd_teacher_feature_detached_teacher_embedding_learns() -> None:
    m = _crd()
    fs, ft = _t(29, 3, 5).requires_grad_(), _t(30, 3, 6).requires_grad_()
    m(fs, ft, torch.tensor([1, 2, 3])).backward()
    assert ft.grad is None and fs.grad is not None
    assert m.embed_t.weight.grad is not None and m.embed_s.weight.grad is not None
    assert not m.memory.memory_s.requires_grad and not m.memory.memory_t.requires_grad


def test_crd_gradcheck() -> None:
    x = _t(31, 3, 5).exp().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: crd_contrast_loss(s, 50), (x,))
    m = _crd()
    index = torch.tensor([1, 2, 3])
    idx = crd_contrast_indices(index, DATA_LABELS[index], DATA_LABELS, K, torch.Generator().manual_seed(2))
    m(_t(32, 3, 5), _t(33, 3, 6), index, idx)  # fixes Z, so later calls are a smooth function of fs
    fs, ft = _t(34, 3, 5).requires_grad_(), _t(35, 3, 6)
    # a fresh copy per call: the bank update must not change the function being checked
    assert torch.autograd.gradcheck(lambda s: copy.deepcopy(m)(s, ft, index, idx), (fs,))


# --- DKD ------------------------------------------------------------------------------------

def _ref_dkd(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, temp: float) -> tuple[float, float]:
    tckd = nckd = 0.0
    for n in range(s.shape[0]):
        y = int(np.argmax(target[n].numpy())) if target.ndim == 2 else int(target[n])
        q, p = _softmax(list(s[n].numpy()), temp), _softmax(list(t[n].numpy()), temp)
        tckd += _kl([p[y], 1 - p[y]], [q[y], 1 - q[y]])
        rest = [c for c in range(s.shape[1]) if c != y]
        nckd += _kl(_softmax([t[n, c].item() for c in rest], temp), _softmax([s[n, c].item() for c in rest], temp))
    scale = temp * temp / s.shape[0]
    return tckd * scale, nckd * scale


@pytest.mark.parametrize("temp", [1.0, 4.0])
@pytest.mark.parametrize("target", [LABELS, SOFT], ids=["hard", "soft"])
def test_dkd_golden(temp: float, target: torch.Tensor) -> None:
    s, t = _t(40, N, C), _t(41, N, C)
    tckd, nckd = dkd_terms(s, t, target, temp)
    ref_t, ref_n = _ref_dkd(s, t, target, temp)
    assert tckd.item() == pytest.approx(ref_t, rel=1e-10)
    assert nckd.item() == pytest.approx(ref_n, rel=1e-10)
    assert dkd_loss(s, t, target, 1.0, 8.0, temp).item() == pytest.approx(ref_t + 8 * ref_n, rel=1e-10)
    _f32_close(dkd_loss(s.float(), t.float(), target, temperature=temp), ref_t + 2 * ref_n)


def test_dkd_decomposes_kd_for_one_sample() -> None:
    # DKD's identity: KD = TCKD + (1 - p_t[y]) * NCKD, per sample (independent check via kd_loss)
    s, t, y = _t(42, 1, C), _t(43, 1, C), torch.tensor([2])
    for temp in (1.0, 3.0):
        tckd, nckd = dkd_terms(s, t, y, temp)
        p_y = F.softmax(t / temp, dim=1)[0, 2]
        assert (tckd + (1 - p_y) * nckd).item() == pytest.approx(kd_loss(s, t, temp).item(), rel=1e-9)


def test_dkd_identical_is_zero_and_teacher_detached() -> None:
    t = _t(44, N, C)
    assert dkd_loss(t, t, LABELS, temperature=4.0).item() == pytest.approx(0.0, abs=1e-12)
    s, t = _t(45, N, C).requires_grad_(), _t(46, N, C).requires_grad_()
    dkd_loss(s, t, LABELS).backward()
    assert t.grad is None and s.grad is not None


def test_dkd_gradcheck() -> None:
    s, t, y = _t(47, 3, 4).requires_grad_(), _t(48, 3, 4), torch.tensor([1, 0, 3])
    assert torch.autograd.gradcheck(lambda x: dkd_loss(x, t, y, 1.0, 2.0, 2.0), (s,))


def test_dkd_warmup_factor() -> None:
    assert dkd_warmup_factor(0) == dkd_warmup_factor(100) == 1.0  # OFA-KD: no warm-up
    assert dkd_warmup_factor(5, 20) == 0.25 and dkd_warmup_factor(30, 20) == 1.0


# --- DIST -------------------------------------------------------------------------------------

def _ref_pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ca, cb = [x - ma for x in a], [x - mb for x in b]
    num = sum(x * y for x, y in zip(ca, cb))
    return num / (math.sqrt(sum(x * x for x in ca)) * math.sqrt(sum(y * y for y in cb)) + 1e-8)


def _ref_dist(s: torch.Tensor, t: torch.Tensor, beta: float, gamma: float, tau: float) -> float:
    ys = [_softmax(list(r), tau) for r in s.numpy()]
    yt = [_softmax(list(r), tau) for r in t.numpy()]
    n, c = len(ys), len(ys[0])
    inter = 1 - sum(_ref_pearson(ys[i], yt[i]) for i in range(n)) / n
    cols = lambda y, j: [y[i][j] for i in range(n)]  # noqa: E731
    intra = 1 - sum(_ref_pearson(cols(ys, j), cols(yt, j)) for j in range(c)) / c
    return tau * tau * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.5, 2.0)])
def test_dist_golden(beta: float, gamma: float, tau: float) -> None:
    s, t = _t(50, N, C), _t(51, N, C)
    ref = _ref_dist(s, t, beta, gamma, tau)
    assert dist_loss(s, t, beta, gamma, tau).item() == pytest.approx(ref, rel=1e-10)
    _f32_close(dist_loss(s.float(), t.float(), beta, gamma, tau), ref)


def test_dist_edges() -> None:
    t = _t(52, N, C)
    assert dist_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)  # only the 1e-8 eps remains
    s1, t1 = _t(53, 1, C), _t(54, 1, C)
    # batch of 1: constant columns, intra correlation 0 -> intra = 1 (as OFA-KD computes it)
    assert dist_loss(s1, t1).item() == pytest.approx(_ref_dist(s1, t1, 1, 1, 1), rel=1e-10)
    assert dist_loss(s1, t1, beta=0.0).item() == pytest.approx(1.0)
    s, t = _t(55, 2, C).requires_grad_(), _t(56, 2, C).requires_grad_()
    dist_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_dist_gradcheck() -> None:
    s, t = _t(57, 3, 4).requires_grad_(), _t(58, 3, 4)
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, 1.0, 2.0, 2.0), (s,))


# --- CC -------------------------------------------------------------------------------------

def _ref_cc(es: np.ndarray, et: np.ndarray, scale: float) -> float:
    n, d = es.shape
    total = 0.0
    for i in range(n - 1):
        total += sum(abs(es[i, k] - et[i, k]) * abs(es[i + 1, k] - et[i + 1, k]) for k in range(d))
    return scale * total / (n - 1)


def test_cc_golden() -> None:
    es, et = _t(60, N, 6), _t(61, N, 6)
    assert cc_loss(es, et).item() == pytest.approx(_ref_cc(es.numpy(), et.numpy(), 0.02), rel=1e-10)
    assert cc_loss(es, et, 1.0).item() == pytest.approx(_ref_cc(es.numpy(), et.numpy(), 1.0), rel=1e-10)
    _f32_close(cc_loss(es.float(), et.float()), _ref_cc(es.numpy(), et.numpy(), 0.02))


def test_cc_module_golden_and_gradients() -> None:
    torch.manual_seed(0)
    m = CC(5, 7, feat_dim=3).double()
    fs, ft = _t(62, N, 5).requires_grad_(), _t(63, N, 7).requires_grad_()

    def embed(lin: torch.nn.Linear, x: torch.Tensor) -> np.ndarray:
        w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
        return np.array([[sum(w[o, i] * r[i] for i in range(len(r))) + b[o] for o in range(3)]
                         for r in x.detach().numpy()])

    loss = m(fs, ft)
    assert loss.item() == pytest.approx(_ref_cc(embed(m.embed_s.linear, fs), embed(m.embed_t.linear, ft), 0.02),
                                        rel=1e-10)
    loss.backward()
    assert ft.grad is None and fs.grad is not None and m.embed_t.linear.weight.grad is not None


def test_cc_edges() -> None:
    e = _t(64, 2, 6)
    assert cc_loss(e, e).item() == 0.0
    assert cc_loss(_t(65, 2, 6), e).item() == pytest.approx(_ref_cc(_t(65, 2, 6).numpy(), e.numpy(), 0.02))
    with pytest.raises(ValueError, match="at least 2"):
        cc_loss(_t(66, 1, 6), _t(67, 1, 6))
    es, et = _t(68, 3, 4).requires_grad_(), _t(69, 3, 4).requires_grad_()
    cc_loss(es, et).backward()
    assert et.grad is None and es.grad is not None


def test_cc_gradcheck() -> None:
    es, et = _t(70, 3, 4).requires_grad_(), _t(71, 3, 4)
    assert torch.autograd.gradcheck(lambda x: cc_loss(x, et, 1.0), (es,))


# --- RKD ------------------------------------------------------------------------------------

def _ref_rkd(s: torch.Tensor, t: torch.Tensor, squared: bool = False) -> tuple[float, float]:
    def dists(e: np.ndarray) -> list[float]:
        n = len(e)
        d = [[0.0 if i == j else sum((e[i] - e[j]) ** 2) for j in range(n)] for i in range(n)]
        d = [[v if squared else math.sqrt(v) for v in row] for row in d]
        mean = sum(v for row in d for v in row if v > 0) / sum(1 for row in d for v in row if v > 0)
        return [v / mean for row in d for v in row]

    def angles(e: np.ndarray) -> list[float]:
        def unit(v: np.ndarray) -> np.ndarray:
            norm = math.sqrt(sum(v * v))
            return v / norm if norm > 0 else v * 0.0
        n = len(e)
        return [float(np.dot(unit(e[j] - e[i]), unit(e[k] - e[i])))
                for i in range(n) for j in range(n) for k in range(n)]

    es, et = s.reshape(len(s), -1).numpy(), t.reshape(len(t), -1).numpy()
    return _smooth_l1(dists(es), dists(et)), _smooth_l1(angles(es), angles(et))


@pytest.mark.parametrize("squared", [False, True])
def test_rkd_golden(squared: bool) -> None:
    s, t = _t(80, N, 6), _t(81, N, 2, 3)  # teacher features are flattened
    ref_d, ref_a = _ref_rkd(s, t, squared)
    loss_d, loss_a = rkd_terms(s, t, squared=squared)
    assert loss_d.item() == pytest.approx(ref_d, rel=1e-9)
    assert loss_a.item() == pytest.approx(ref_a, rel=1e-9)
    assert rkd_loss(s, t, squared=squared).item() == pytest.approx(25 * ref_d + 50 * ref_a, rel=1e-9)
    _f32_close(rkd_loss(s.float(), t.float(), squared=squared), 25 * ref_d + 50 * ref_a)


def test_rkd_edges() -> None:
    t = _t(82, N, 6)
    assert rkd_loss(t, t).item() == 0.0
    assert rkd_loss(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-12)  # scale-invariant relations
    s2, t2 = _t(83, 2, 6), _t(84, 2, 6)
    d, a = rkd_terms(s2, t2)
    ref_d, ref_a = _ref_rkd(s2, t2)
    assert d.item() == pytest.approx(ref_d, abs=1e-12) and a.item() == pytest.approx(ref_a, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        rkd_loss(_t(85, 1, 6), _t(86, 1, 6))
    s, t = _t(87, 3, 4).requires_grad_(), _t(88, 3, 4).requires_grad_()
    rkd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()


def test_rkd_gradcheck() -> None:
    s, t = _t(89, 4, 3).requires_grad_(), _t(90, 4, 3)
    assert torch.autograd.gradcheck(lambda x: rkd_loss(x, t, 2.0, 3.0), (s,))
    assert torch.autograd.gradcheck(lambda x: rkd_loss(x, t, squared=True), (s,))


# --- defaults ---------------------------------------------------------------------------------

def test_defaults_are_ofakd_argparse_values() -> None:
    assert DEFAULTS["dkd"] == {"gt_loss_weight": 1.0, "loss_weight": 1.0, "alpha": 1.0, "beta": 2.0,
                             "temperature": 1.0, "warmup": 0}
    assert DEFAULTS["crd"]["k"] == 16384 and DEFAULTS["crd"]["temperature"] == 0.07
    assert DEFAULTS["crd"]["momentum"] == 0.5 and DEFAULTS["crd"]["feat_dim"] == 128
    assert DEFAULTS["dist"] == {"gt_loss_weight": 1.0, "loss_weight": 1.0, "beta": 1.0, "gamma": 1.0, "tau": 1.0}
    assert DEFAULTS["cc"]["scale"] == 0.02 and DEFAULTS["cc"]["feat_dim"] == 128
    assert (DEFAULTS["rkd"]["distance_weight"], DEFAULTS["rkd"]["angle_weight"]) == (25.0, 50.0)
    assert DEFAULTS["fitnet"]["stages"] == (1, 2, 3, 4) and DEFAULTS["kd"]["temperature"] == 1.0


@pytest.mark.parametrize("fn,method,names", [
    (dkd_loss, "dkd", {"alpha": "alpha", "beta": "beta", "temperature": "temperature"}),
    (dist_loss, "dist", {"beta": "beta", "gamma": "gamma", "tau": "tau"}),
    (cc_loss, "cc", {"scale": "scale"}),
    (rkd_loss, "rkd", {"distance_weight": "distance_weight", "angle_weight": "angle_weight", "eps": "eps",
                       "squared": "squared"}),
    (CRD.__init__, "crd", {"feat_dim": "feat_dim", "k": "k", "temperature": "temperature", "momentum": "momentum"}),
    (CC.__init__, "cc", {"feat_dim": "feat_dim", "scale": "scale"}),
])
def test_signature_defaults_match_table(fn, method: str, names: dict[str, str]) -> None:
    params = inspect.signature(fn).parameters
    for arg, key in names.items():
        assert params[arg].default == DEFAULTS[method][key], (fn, arg)
