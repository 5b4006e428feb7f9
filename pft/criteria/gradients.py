"""Gradients of every unit over a few batches of the training split, with no weight update.

The gradient criteria (`pft.criteria.gradient_norm`, `pft.criteria.fisher`) share this pass.
Batch b is images ``order[b*B:(b+1)*B]`` of one permutation of the training split (further
permutations when N x B exceeds it), drawn from a generator seeded by ``seed``; images are
preprocessed without augmentation, and the model runs in eval mode (no dropout or drop-path,
BatchNorm on its pre-trained statistics), so the gradients are a pure function of the model,
the data and the seed. The loss of a batch is the mean cross-entropy of its images; gradients
are taken with `torch.autograd.grad` for the unit tensors only (the model's ``.grad`` and
``requires_grad`` flags are left as they were).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pft.criteria.registry import Progress
from pft.datasets import Split
from pft.errors import PftError
from pft.preprocess import data_config_for, prepare
from pft.units import UnitMap

Visit = Callable[[dict[str, torch.Tensor]], None]


def batch_order(n: int, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """The training-split indices of ``batches`` batches: a seeded permutation, repeated with
    fresh permutations of the same generator when it runs out."""
    if n < 1:
        raise PftError("the training split is empty: nothing to take gradients over")
    g = torch.Generator().manual_seed(seed)
    need = batches * batch_size
    perms = [torch.randperm(n, generator=g) for _ in range(-(-need // n))]
    return torch.cat(perms)[:need]


def each_batch_gradient(
    model: nn.Module,
    unit_map: UnitMap,
    split: Split,
    visit: Visit,
    *,
    batches: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> None:
    """Calls ``visit({tensor: gradient})`` for each batch, every unit tensor included."""
    device = torch.device(device)
    model = model.to(device)
    params = dict(model.named_parameters())
    names = [t for u in unit_map.units for t in u.tensors]
    tensors = [params[t] for t in names]
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    data_config = data_config_for(model)
    order = batch_order(len(split), batches, batch_size, seed)
    try:
        model.eval()
        for p in params.values():
            p.requires_grad_(False)
        for p in tensors:
            p.requires_grad_(True)
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = prepare(split.images[idx], data_config, device)
            y = split.labels[idx].to(device)
            loss = F.cross_entropy(model(x).float(), y)
            grads = torch.autograd.grad(loss, tensors)
            visit(dict(zip(names, grads, strict=True)))
            if progress is not None:
                progress(b + 1, batches)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
