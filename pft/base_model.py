"""The pre-trained starting point of a run, rebuilt exactly from its description.

A run's starting point is the catalogue model (hub or built-in weights, or random weights made
under the fixed ``BASE_SEED``) plus a new classifier head initialised from ``head_seed`` (every
head: a distilled DeiT's ``head_dist`` too). Soup ingredients share ``head_seed`` (Wortsman et
al. 2022), so they start from the same point, and angles, deltas and soups can rebuild it from
checkpoint metadata alone.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from pft.model_catalog import get_spec
from pft.model_factory import builtin_weights, create_model


def build_pretrained(
    model: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    overrides: dict[str, Any] | None = None,
    head_seed: int = 0,
) -> nn.Module:
    """The model at its pre-trained point with a fresh ``num_classes`` head (on CPU, fp32)."""
    # create_model draws random bodies under pft.model_factory.BASE_SEED, on a private RNG.
    net = create_model(model, num_classes, pretrained=pretrained, overrides=overrides)
    g = torch.Generator().manual_seed(head_seed)
    for head in classifier_heads(net):  # both heads of a distilled DeiT, in order
        with torch.no_grad():
            nn.init.trunc_normal_(head.weight, std=0.02, generator=g)
            if head.bias is not None:
                head.bias.zero_()
    return net.eval()


def classifier_heads(net: nn.Module) -> list[nn.Linear]:
    """The new classifier's linear layers: ``head`` (or ``head.fc``), and ``head_dist`` of a
    distilled DeiT, whose prediction averages both."""
    heads = net.get_classifier()
    heads = heads if isinstance(heads, tuple | list) else (heads,)
    return [h for h in heads if isinstance(h, nn.Linear)]


def base_fingerprint(model: str, overrides: dict[str, Any] | None, pretrained: bool) -> str:
    """Identifies the weights a built-in model was pre-trained to ('' for hub and random ones),
    so a checkpoint is never applied to a backbone that was re-trained since."""
    spec = get_spec(model, overrides)
    if spec.source != "builtin" or not pretrained:
        return ""
    path = builtin_weights(spec.name)
    if not path.is_file():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
