"""Contrastive representation distillation (OFA-KD's `distillers/crd.py`).

Each batch carries its samples' dataset indices (`needs_index`); the negatives are drawn per
sample among the training samples of other classes, as OFA-KD's `*InstanceSample` datasets draw
them, here from torch's global RNG in the training process (so a resumed run draws the same ones).
The memory bank (one embedding per training sample and side) is a buffer of this module and is
saved in checkpoints. Under torchrun rank 0 draws the negatives of the global batch and every rank
updates its bank with the global batch, so the banks stay equal (docs/distributed.md). Deviation: `crd_k` is capped at the training set's size - 1 (CRD never has
more distinct negatives than samples; OFA-KD's 16384 assumes CIFAR/ImageNet).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..baseline_losses import CRD as CRDLoss
from ..baseline_losses import crd_contrast_indices
from ..config import LossConfig
from ..ddp import broadcast_from_main, gather_batch, rank_rows
from . import register
from ._base import Method, Setup, Thunk, logits_and_prelogits, prelogits_width


@register
class CRD(Method):
    summary = "contrastive representation distillation with a memory bank of every training sample"
    needs_index = True
    trains = ("student", "crd")  # the two embeddings; the memory bank is a buffer
    rank_synced = ("crd.memory",)  # every rank updates it with the global batch (CRDMemory): DDP skips it
    meta_step = False  # the bank's normaliser Z is set from the first batch's values (no meta tensors)

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        if setup.train_labels is None:
            raise ValueError("CRD needs the training set's labels (Setup.train_labels)")
        c = self.loss_cfg
        # on the CPU, where the negatives are drawn (the loader's indices arrive there too: no device sync)
        self._labels = setup.train_labels.to("cpu", torch.long).clone()
        n = len(setup.train_labels)
        self.k = max(1, min(c.crd_k, n - 1))
        self.crd = CRDLoss(prelogits_width(self.student), prelogits_width(self.teacher), n, c.crd_feat_dim,
                           self.k, c.crd_temperature, c.crd_momentum, seed=setup.cfg.seed)

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce, "crd": c.crd}

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        if index is None:
            raise ValueError("CRD needs each sample's dataset index: the loader must yield (x, y, index)")
        with torch.no_grad():
            _, t_feat = logits_and_prelogits(self.teacher, x)
        logits, feat = logits_and_prelogits(self.student, x)
        index = index.to("cpu")
        labels = self._labels[index]  # the samples' true classes (under mixup the targets are mixed)

        def crd() -> Tensor:
            # negatives for the global batch, drawn on rank 0 (as one process draws them) and sent to all
            idx = rank_rows(broadcast_from_main(crd_contrast_indices(
                gather_batch(index), gather_batch(labels), self._labels, self.k)))
            return self.crd(feat, t_feat, index.to(feat.device, non_blocking=True),
                            idx.to(feat.device, non_blocking=True))
        return {"ce": lambda: self.ce(logits, target), "crd": crd}
