"""Data parallelism under torchrun: what DDP wraps, what is replicated, gathered and reduced.

See docs/distributed.md. In short:

* `wrap` puts DDP around the method module but hands DDP only what trains (the method's `trains`:
  student, fused model, heads, branches). The frozen teacher (its parameters and BatchNorm buffers,
  also where the fused model holds them) and buffers the method keeps equal on every rank itself
  (`Method.rank_synced`, CRD's memory bank) are ignored by DDP: never broadcast, never reduced.
  A parameter shared by the student and the fused model is one tensor and DDP reduces it once.
  `static_graph=True`: parameters that a zero-weight term leaves without a gradient (OFA's branches
  with `loss.ofa_branch = 0`) are found in the first step and skipped from then on.
* `replicate` broadcasts every weight and buffer from rank 0 once, before the optimiser and the
  EMA are built, so every rank holds the same teacher (whatever it was built from) and EMA.
* `gather_batch` gathers per-sample rows from every rank in the order of the global batch (the
  1-process order: rank r holds samples r, r + W, ... of the global batch, data.py), so a loss
  over the batch's relations (RKD, CC, DIST, CRD's memory update) sees the 1-process batch.
* `gather_rng` / `rank_rng`: every rank's random streams in a checkpoint, each rank resuming its own.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _frozen_names(module: nn.Module) -> list[str]:
    """Names (as DDP lists them) of the teacher's parameters and buffers and of the method's rank-synced buffers."""
    teacher = getattr(module, "teacher", None)
    ids = {id(t) for t in (*teacher.parameters(), *teacher.buffers())} if isinstance(teacher, nn.Module) else set()
    synced = tuple(getattr(module, "rank_synced", ()))
    names = []
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        if id(t) in ids or any(name == p or name.startswith(p + ".") for p in synced):
            names.append(name)
    return names


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the trained modules only (see the module docstring)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    DDP._set_params_and_buffers_to_ignore_for_model(module, _frozen_names(module))
    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, static_graph=True)


def reduced_parameters(wrapped: nn.Module) -> list[nn.Parameter]:
    """The parameters DDP reduces (each once), for tests and docs."""
    ignore = set(getattr(wrapped, "parameters_to_ignore", ()))
    return [p for n, p in wrapped.module.named_parameters() if p.requires_grad and n not in ignore]


@torch.no_grad()
def replicate(module: nn.Module) -> None:
    """Rank 0's weights and buffers on every rank, once: what DDP ignores (the teacher, rank-synced
    buffers), and the trained modules before anything copies them (the EMA of the student)."""
    if not _active():
        return
    for t in (*module.parameters(), *module.buffers()):
        dist.broadcast(t.data, 0)


def convert_sync_bn(module: nn.Module) -> None:
    """SyncBatchNorm for the BatchNorms of the trained modules (`trains`); the teacher's stay as they are.

    One SyncBatchNorm per BatchNorm, holding the same parameter and buffer tensors, so a BatchNorm
    the student shares with the fused model stays shared."""
    teacher = getattr(module, "teacher", None)
    frozen = {id(m) for m in teacher.modules()} if isinstance(teacher, nn.Module) else set()
    done: dict[int, nn.Module] = {}

    def convert(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if id(child) in frozen:
                continue
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                if id(child) not in done:
                    sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
                    if child.affine:
                        sync.weight, sync.bias = child.weight, child.bias
                    if child.track_running_stats:
                        sync.running_mean, sync.running_var = child.running_mean, child.running_var
                        sync.num_batches_tracked = child.num_batches_tracked
                    sync.train(child.training)
                    done[id(child)] = sync
                setattr(parent, name, done[id(child)])
            else:
                convert(child)

    for name in getattr(module, "trains", ()) or [n for n, _ in module.named_children()]:
        sub = getattr(module, name, None)
        if isinstance(sub, nn.Module):
            convert(sub)


def gather_batch(x: Tensor) -> Tensor:
    """`x`'s rows from every rank, in the global batch's order (rank r's row j is global row j*W + r).

    Differentiable when `x` needs a gradient: each rank's rows get the gradient of every rank's
    loss, so with every rank computing the same global-batch loss, DDP's averaging gives exactly
    the 1-process gradient. Without torchrun, `x` itself. CPU tensors travel on the default
    device of the backend (NCCL: the current GPU) and come back to the CPU."""
    if not _active():
        return x
    world = dist.get_world_size()
    home = x.device
    via = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else home
    y = x.to(via)
    n = torch.tensor([y.shape[0]], device=via, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    if len(set(counts)) != 1:
        raise RuntimeError(f"ranks hold different batch sizes {counts}: the loader must drop the last short batch")
    if y.requires_grad:
        from torch.distributed.nn.functional import all_gather
        parts = list(all_gather(y))
    else:
        parts = [torch.empty_like(y) for _ in range(world)]
        dist.all_gather(parts, y.contiguous())
    out = torch.stack(parts, dim=1).reshape(-1, *y.shape[1:])
    return out.to(home)


def rank_rows(x: Tensor) -> Tensor:
    """This rank's rows of a global-batch tensor (the inverse of `gather_batch`)."""
    if not _active():
        return x
    return x[dist.get_rank()::dist.get_world_size()]


def broadcast_from_main(x: Tensor) -> Tensor:
    """Rank 0's `x` on every rank (CPU tensors travel as in `gather_batch`)."""
    if not _active():
        return x
    home = x.device
    via = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else home
    y = x.to(via).contiguous()
    dist.broadcast(y, 0)
    return y.to(home)


def all_mean_(x: Tensor) -> Tensor:
    """`x` averaged over the ranks, in place."""
    if _active():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def gather_rng(generator: torch.Generator | None, epoch_gen: Any) -> list[dict[str, Any]] | None:
    """Every rank's RNG state and epoch-start loader-generator state (on every rank; rank 0 saves them)."""
    if not _active():
        return None
    from .checkpoint import rng_state
    mine = {"rng": rng_state(generator), "epoch_gen": epoch_gen}
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def rank_rng(ckpt: dict[str, Any], rank: int, step: int) -> tuple[dict[str, Any] | None, Any]:
    """(RNG state, epoch-start loader state) this rank resumes with.

    A rank the checkpoint had resumes its own streams exactly; a rank it did not have (resuming on
    more ranks than wrote it) gets fresh streams seeded from (step, rank), the same on every resume."""
    ranks = ckpt.get("rank_rng") or [{"rng": ckpt.get("rng"), "epoch_gen": ckpt.get("epoch_gen")}]
    if rank < len(ranks):
        return ranks[rank]["rng"], ranks[rank]["epoch_gen"]
    base = ranks[0]["rng"]
    if base is None:
        return None, None
    seed = (1_000_003 * (step + 1) + 7919 * rank) % 2**32
    kind, keys, pos, has_gauss, gauss = np.random.RandomState(seed).get_state()
    state = {k: v for k, v in base.items() if k != "cuda"}  # CUDA streams stay as seeded at the phase start
    state.update(python=random.Random(seed).getstate(), torch=torch.Generator().manual_seed(seed).get_state(),
                 numpy={"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)})
    if "loader" in base:
        state["loader"] = torch.Generator().manual_seed(seed + 1).get_state()
    return state, None


__all__ = ["wrap", "reduced_parameters", "replicate", "convert_sync_bn", "gather_batch", "rank_rows",
           "broadcast_from_main", "all_mean_", "gather_rng", "rank_rng"]
