"""The built-in backbone's weights ship with the package, so a fresh lab fine-tunes at once.

The shipped file is what `pft pretrain --ship` wrote (`pft.pretrain.ship`): fp16 weights and a
``model.json`` recording the recipe, the sha256 of the weights and the accuracy measured with
them. Here the file is hashed again and its accuracy re-measured on the first
`SAMPLE_IMAGES` test images of Fashion-MNIST 0-4 (the Debian package `dataset-fashion-mnist`,
which `.ci/run` installs).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from contract.layout import DataLayout
from pft.errors import PftError
from pft.model_catalog import BUILTIN_BACKBONE
from pft.model_factory import builtin_weights, create_model
from pft.pretrain import PRETRAIN_HPARAMS, SAMPLE_IMAGES, measure
from pft.shipped import INFO_FILE, WEIGHTS_FILE, backbone_weights, sha256_of, shipped_folder

MAX_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def shipped() -> tuple:
    folder = shipped_folder(BUILTIN_BACKBONE)
    assert folder is not None, "the package ships no weights for the built-in backbone"
    return folder / WEIGHTS_FILE, json.loads((folder / INFO_FILE).read_text())


def test_the_shipped_file_is_small_fp16_and_matches_its_sha256(shipped) -> None:
    weights, info = shipped
    assert weights.stat().st_size < MAX_BYTES and info["bytes"] == weights.stat().st_size
    assert sha256_of(weights) == info["sha256"]
    with safe_open(str(weights), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert f.metadata()["model"] == BUILTIN_BACKBONE
    assert dtypes == {"F16"}
    # The recipe is recorded and is the one `pft pretrain` runs (its epochs given on the line).
    recipe = {k: v for k, v in info["hparams"].items() if k != "epochs"}
    expected = {k: v for k, v in PRETRAIN_HPARAMS.to_dict().items() if k != "epochs"}
    assert recipe == expected, "the shipped weights were made with another recipe"
    assert f"--epochs {info['hparams']['epochs']}" in info["command"]
    assert info["dataset"] == "fashion_mnist_a" and info["classes"] == 5


def test_the_shipped_weights_score_what_they_record(shipped) -> None:
    weights, info = shipped
    torch.set_num_threads(1)
    measured = measure(weights, info["data_config"])
    # The same images and weights: the same predictions up to one image (another CPU may
    # round a near-tie differently).
    assert abs(measured["sample_acc"] - info["sample_acc"]) <= 1 / SAMPLE_IMAGES + 1e-9
    # fp16 storage costs the fp32 weights of the run (nearly) nothing.
    assert info["test_acc"] >= info["fp32_test_acc"] - 0.005
    assert info["sample_images"] == SAMPLE_IMAGES


def test_a_fresh_data_folder_loads_the_shipped_weights(tmp_path, monkeypatch, shipped) -> None:
    weights, _ = shipped
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    assert builtin_weights(BUILTIN_BACKBONE) == weights
    model = create_model(BUILTIN_BACKBONE, 10, pretrained=True)
    with safe_open(str(weights), framework="pt") as f:
        block = f.get_tensor("blocks.0.attn.qkv.weight")
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert torch.equal(model.blocks[0].attn.qkv.weight, block.float())
    assert model.get_classifier().out_features == 10  # a fresh head, not the pre-training one


def test_the_data_folder_weights_come_first_and_shipping_can_be_turned_off(
    tmp_path, monkeypatch, shipped
) -> None:
    layout = DataLayout.at(tmp_path / "data")
    own = layout.model_weights(BUILTIN_BACKBONE)
    assert backbone_weights(BUILTIN_BACKBONE, layout) == shipped[0]
    assert backbone_weights(BUILTIN_BACKBONE, layout, use_shipped=False) == own
    own.parent.mkdir(parents=True)
    own.write_bytes(shipped[0].read_bytes())
    assert backbone_weights(BUILTIN_BACKBONE, layout) == own  # a user's own `pft pretrain`
    own.unlink()
    monkeypatch.setenv("PFT_DATA_DIR", str(layout.root))
    monkeypatch.setenv("PFT_SHIPPED_WEIGHTS", "0")
    with pytest.raises(PftError, match="not pre-trained yet: run `pft pretrain`"):
        create_model(BUILTIN_BACKBONE, 10, pretrained=True)
