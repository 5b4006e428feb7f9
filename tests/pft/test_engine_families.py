"""The engine beyond plain ViTs: the seed controls drop-path, BatchNorm statistics stay the
pre-trained ones, weight decay follows the model's ``no_weight_decay()``."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pft.base_model import build_pretrained
from pft.checkpoint import build_model_from_delta, load_delta
from pft.datasets import load_dataset
from pft.engine import finetune
from pft.evaluation import evaluate_split
from pft.jobs.specs import FinetuneSpec, Hparams
from pft.preprocess import data_config_for
from pft.strategies import FULL_FINETUNING
from pft.training import no_decay_names, train_mode

SWIN = "swin_tiny_patch4_window7_224"
TINY_SWIN = dict(
    img_size=16,
    patch_size=2,
    embed_dim=16,
    depths=[1, 1],
    num_heads=[1, 2],
    window_size=4,
    in_chans=1,
    drop_path_rate=0.5,
)
HYBRID = "vit_small_resnet26d_224"
TINY_HYBRID = dict(img_size=32, in_chans=1, depth=1, embed_dim=32, num_heads=2)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def spec(model, overrides, strategy=FULL_FINETUNING, seed=1):
    return FinetuneSpec(
        model=model,
        dataset="synthetic",
        strategy=strategy,
        hparams=Hparams(epochs=1, lr=3e-3, batch_size=16, seed=seed),
        pretrained=False,
        model_overrides=overrides,
    )


def test_identical_seeded_swin_runs_with_drop_path_give_identical_deltas(tmp_path):
    torch.manual_seed(123)  # the caller's RNG: a run neither depends on it nor changes it
    before = torch.get_rng_state()
    for name in ("a", "b"):
        torch.rand(3)  # disturb the global RNG between runs
        finetune(spec(SWIN, TINY_SWIN), tmp_path / name, train_limit=48)
    a, _ = load_delta(tmp_path / "a")
    b, _ = load_delta(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    finetune(spec(SWIN, TINY_SWIN, seed=2), tmp_path / "c", train_limit=48)
    c, _ = load_delta(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    torch.set_rng_state(before)
    torch.rand(6)
    after_own = torch.get_rng_state()
    torch.set_rng_state(before)
    torch.rand(3), torch.rand(3)
    assert torch.equal(after_own, torch.get_rng_state())


def test_frozen_batchnorm_statistics_stay_and_rebuilt_model_evaluates_the_same(tmp_path):
    base = build_pretrained(HYBRID, 4, pretrained=False, overrides=TINY_HYBRID)
    bn_before = {k: v.clone() for k, v in base.state_dict().items() if "running" in k}
    assert bn_before  # the hybrid's ResNet stem has BatchNorm
    summary = finetune(
        spec(HYBRID, TINY_HYBRID, strategy="attn_only"), tmp_path / "r", train_limit=32
    )
    model, _ = build_model_from_delta(tmp_path / "r")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in bn_before.items())
    data = load_dataset("synthetic", image_size=32)
    test = data.split("test")
    from pft.datasets import Split

    m = evaluate_split(
        model, Split(test.images[:32], test.labels[:32]), data_config_for(model), "cpu"
    )
    assert m["loss"] == summary["test_loss"] and m["acc"] == summary["test_acc"]


def test_train_mode_keeps_batchnorm_in_eval():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5))
    train_mode(net)
    assert net.training and net[2].training and not net[1].training
    before = net[1].running_mean.clone()
    net(torch.randn(4, 1, 5, 5))
    assert torch.equal(before, net[1].running_mean)


def test_weight_decay_follows_no_weight_decay():
    with torch.device("meta"):
        swin = timm.create_model(SWIN, num_classes=3)
    plain = no_decay_names(swin)
    tables = [n for n, _ in swin.named_parameters() if "relative_position_bias_table" in n]
    assert tables and set(tables) <= plain
    assert "layers.0.blocks.0.attn.qkv.weight" not in plain
    assert all(p.ndim > 1 for n, p in swin.named_parameters() if n not in plain)
    with torch.device("meta"):
        v2 = timm.create_model("swinv2_tiny_window8_256", num_classes=3)
    plain = no_decay_names(v2)
    special = [n for n, _ in v2.named_parameters() if "cpb_mlp" in n or "logit_scale" in n]
    assert special and set(special) <= plain
