"""cc: correlation congruence on the models' pre-logits features, both embeddings trained."""

from __future__ import annotations

import numpy as np
import pytest

from method_helpers import batch, make, prelogits


def test_cc_term_on_prelogits() -> None:
    m = make("cc", loss={"cc_scale": 0.5})
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    fs, ft = prelogits(m.student, x).double().numpy(), prelogits(m.teacher, x).double().numpy()
    ws, bs = (p.detach().double().numpy() for p in (m.cc.embed_s.linear.weight, m.cc.embed_s.linear.bias))
    wt, bt = (p.detach().double().numpy() for p in (m.cc.embed_t.linear.weight, m.cc.embed_t.linear.bias))
    delta = np.abs((fs @ ws.T + bs) - (ft @ wt.T + bt))
    want = 0.5 * float(np.mean((delta[:-1] * delta[1:]).sum(1)))
    assert terms["cc"].item() == pytest.approx(want, rel=1e-4)
    total.backward()
    assert m.cc.embed_t.linear.weight.grad is not None  # the teacher-side embedding learns, as in OFA-KD
    assert fs.shape[1] == 192 and ft.shape[1] == 512  # ViT-Ti's and ResNet-18's pre-logits widths
