"""Delta checkpoints: round trip, rebuild from base + delta, wrong-base errors, atomic writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pft.base_model import build_pretrained
from pft.checkpoint import (
    atomic_write,
    base_from_meta,
    build_model_from_delta,
    delta_metadata,
    load_delta,
    same_base,
    save_delta,
)
from pft.errors import PftError
from pft.model_catalog import BUILTIN_BACKBONE, TEST_MODEL
from pft.model_factory import builtin_weights_path


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))


def meta_for(model=TEST_MODEL, pretrained=False, head_seed=0, overrides=None, num_classes=4):
    return delta_metadata(
        base_model=model,
        model_overrides=overrides or {},
        pretrained=pretrained,
        num_classes=num_classes,
        strategy="linear_probe",
        strategy_params={},
        dataset="synthetic",
        data_config={
            "input_size": [1, 16, 16],
            "mean": [0.5],
            "std": [0.5],
            "interpolation": "bilinear",
        },
        hparams={"head_seed": head_seed, "lr": 0.001},
    )


def test_round_trip_and_rebuild(tmp_path):
    head = {"head.weight": torch.randn(4, 32), "head.bias": torch.randn(4)}
    path = save_delta(tmp_path / "d.safetensors", head, meta_for())
    tensors, meta = load_delta(path)
    assert set(tensors) == set(head) and torch.equal(tensors["head.bias"], head["head.bias"])
    assert meta["format"] == "pft-delta-1" and meta["pretrained"] is False
    assert meta["num_classes"] == 4 and meta["hparams"]["head_seed"] == 0
    model, _ = build_model_from_delta(path)
    base = build_pretrained(TEST_MODEL, 4, pretrained=False)
    assert torch.equal(model.head.weight, head["head.weight"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, base.blocks[0].attn.qkv.weight)
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_random_init_base_is_rebuilt_identically_and_head_follows_head_seed():
    a = build_pretrained(TEST_MODEL, 4, pretrained=False, head_seed=0)
    torch.manual_seed(123)  # global RNG state must not matter
    b = build_pretrained(TEST_MODEL, 4, pretrained=False, head_seed=0)
    c = build_pretrained(TEST_MODEL, 4, pretrained=False, head_seed=1)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(a.blocks[0].mlp.fc1.weight, c.blocks[0].mlp.fc1.weight)


def test_delta_for_another_base_model_is_refused(tmp_path):
    # a head for 32-dim features, but the metadata claims a 64-dim model
    path = save_delta(
        tmp_path / "d.safetensors",
        {"head.weight": torch.zeros(4, 32)},
        meta_for(overrides={"embed_dim": 64}),
    )
    with pytest.raises(PftError, match="another base model"):
        build_model_from_delta(path)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_files_that_are_not_deltas(tmp_path, content):
    path = tmp_path / "x.safetensors"
    if content is None:
        save_file({"w": torch.zeros(2)}, str(path))  # a safetensors file without pft metadata
    else:
        path.write_bytes(content)
    with pytest.raises(PftError, match="not a"):
        load_delta(path)
    with pytest.raises(PftError, match="does not exist"):
        load_delta(tmp_path / "missing.safetensors")


def test_retrained_builtin_backbone_is_detected(tmp_path):
    weights = builtin_weights_path(BUILTIN_BACKBONE)
    weights.parent.mkdir(parents=True)
    body = build_pretrained(BUILTIN_BACKBONE, 5, pretrained=False).state_dict()
    save_file(body, str(weights))
    meta = meta_for(BUILTIN_BACKBONE, pretrained=True, num_classes=10)
    assert len(meta["base_fingerprint"]) == 16
    model = base_from_meta(meta)
    assert torch.equal(model.blocks[3].attn.qkv.weight, body["blocks.3.attn.qkv.weight"])
    save_file({k: v + 1 for k, v in body.items()}, str(weights))
    with pytest.raises(PftError, match="pre-trained again"):
        base_from_meta(meta)


def test_same_base_rules():
    same_base([meta_for(), meta_for()])
    with pytest.raises(PftError, match="base_model"):
        same_base([meta_for(), meta_for(model="pft/vit-tiny-fmnist")])
    with pytest.raises(PftError, match="head_seed"):
        same_base([meta_for(), meta_for(head_seed=1)])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.json", broken)
    assert list(tmp_path.iterdir()) == []
