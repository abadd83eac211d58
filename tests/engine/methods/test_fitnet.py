"""fitnet: per-stage hints, each student stage through a 1x1 conv regressing the teacher's stage,
against a float64 reference on a CNN pair (OFA-KD's setting), and on a ViT student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fbt_engine.methods._base import Setup, build
from fbt_engine import config as C
from fbt_engine.models import create_model
from method_helpers import batch, make


def test_fitnet_matches_float64_hints_on_a_cnn_pair() -> None:
    cfg = C.from_dict({"method": "fitnet", "teacher": {"model": "resnet26"}, "student": {"model": "resnet18"},
                       "data": {"img_size": 32}, "loss": {"fitnet_stages": [2, 4]}})
    torch.manual_seed(0)
    t, s = (create_model(n, img_size=32, num_classes=5) for n in ("resnet26", "resnet18"))
    m = build(Setup(cfg, s, t, 5)).train()
    x, y, idx = batch()
    _, terms = m(x, y, idx)
    with torch.no_grad():
        s_maps = s.forward_intermediates(x, indices=[2, 4], intermediates_only=True)
        t_maps = t.forward_intermediates(x, indices=[2, 4], intermediates_only=True)
    want = 0.0
    for proj, fs, ft in zip(m.fitnet.projectors, s_maps, t_maps):
        w = proj.conv.weight.detach().double().numpy()[:, :, 0, 0]  # (C_t, C_s)
        hint = np.einsum("ts,nshw->nthw", w, fs.double().numpy())
        assert hint.shape == ft.shape  # ResNet-26 is 4x wider than ResNet-18 at every stage
        want += float(((hint - ft.double().numpy()) ** 2).mean())
    assert terms["fitnet"].item() == pytest.approx(want, rel=1e-4)


def test_fitnet_on_a_vit_student_projects_token_grids() -> None:
    m = make("fitnet", "cnn->vit")
    total, terms = m(*batch())
    assert torch.isfinite(terms["fitnet"]) and len(m.fitnet.projectors) == 4
    total.backward()
    assert all(p.conv.weight.grad is not None for p in m.fitnet.projectors)
