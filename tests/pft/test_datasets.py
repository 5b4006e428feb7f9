"""Dataset catalogue, deterministic splits, preprocessing and the path-containment rule."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pft.dataset_catalog import DATASETS, catalogue, dataset_info, parse_shift
from pft.datasets import load_dataset
from pft.errors import PftError
from pft.preprocess import prepare


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PFT_DATASETS_DIR", raising=False)
    root = tmp_path / "data" / "datasets"
    root.mkdir(parents=True)
    return root


def _png_folder(folder, classes=("cat", "dog"), per_class=5, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def test_catalogue_is_torch_free_data():
    data = catalogue()
    names = [d["name"] for d in data["datasets"]]
    assert {
        "synthetic",
        "digits",
        "fashion_mnist",
        "fashion_mnist_a",
        "fashion_mnist_b",
        "cifar10",
        "cifar100",
    } <= set(names)
    assert {s["name"] for s in data["shifts"]} == {"gaussian_noise", "blur", "contrast", "rotation"}


def test_unknown_dataset_names_close_matches_and_accepted():
    with pytest.raises(PftError, match="close matches: fashion_mnist") as err:
        dataset_info("fashion_mnst")
    assert "accepted: synthetic, digits" in str(err.value)
    with pytest.raises(PftError, match="imagefolder:NAME"):
        load_dataset("imagenet")


@pytest.mark.parametrize("spec,parsed", [("blur", ("blur", 3)), ("rotation:5", ("rotation", 5))])
def test_parse_shift(spec, parsed):
    assert parse_shift(spec) == parsed


@pytest.mark.parametrize("spec", ["blurr", "blur:0", "blur:6", "blur:x"])
def test_parse_shift_rejects(spec):
    with pytest.raises(PftError, match="shift"):
        parse_shift(spec)


def test_splits_are_deterministic_disjoint_and_seeded():
    a, b = load_dataset("digits", split_seed=0), load_dataset("digits", split_seed=0)
    c = load_dataset("digits", split_seed=1)
    assert (len(a.train), len(a.heldout), len(a.test)) == (1000, 200, 597)
    assert torch.equal(a.heldout.images, b.heldout.images)
    assert not torch.equal(a.heldout.images, c.heldout.images)
    assert torch.equal(a.test.images, c.test.images)  # the test split is fixed per dataset
    # held-out images are carved from the train pool: no image is in both
    train = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train for x in a.heldout.images[:50])
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (1, 8, 8)
    assert a.num_classes == DATASETS["digits"].num_classes == 10


def test_synthetic_is_small_and_balanced():
    d = load_dataset("synthetic")
    assert d.num_classes == 4 and d.train.images.shape[1:] == (1, 16, 16)
    assert torch.bincount(d.test.labels).min() > 20


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_fashion_mnist_class_subsets_are_relabelled():
    full, a, b = (load_dataset(n) for n in ("fashion_mnist", "fashion_mnist_a", "fashion_mnist_b"))
    assert len(full.test) == 10_000 and len(a.test) == len(b.test) == 5_000
    assert set(a.test.labels.tolist()) == set(b.test.labels.tolist()) == set(range(5))
    assert b.classes[0] == "sandal" and a.classes[0] == "t-shirt"
    assert len(a.train) + len(a.heldout) == 30_000


def test_prepare_resizes_channels_and_normalises():
    images = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    cfg = {
        "input_size": [3, 16, 16],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "interpolation": "bicubic",
    }
    x = prepare(images, cfg, "cpu")
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.full_like(x, 2.0))
    rgb = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    one = {"input_size": [1, 8, 8], "mean": [0.0], "std": [1.0], "interpolation": "bilinear"}
    assert prepare(rgb, one, "cpu").shape == (2, 1, 8, 8)


def test_augmentation_is_seeded():
    images = load_dataset("synthetic").train.images[:16]
    cfg = {"input_size": [1, 16, 16], "mean": [0.5], "std": [0.5], "interpolation": "bilinear"}

    def run(seed):
        return prepare(images, cfg, "cpu", augment=torch.Generator().manual_seed(seed), hflip=True)

    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))
    assert not torch.equal(run(3), prepare(images, cfg, "cpu"))


def test_imagefolder_loads_inside_root(data_root):
    _png_folder(data_root / "pets")
    d = load_dataset("imagefolder:pets", image_size=16)
    assert d.classes == ("cat", "dog")
    assert d.train.images.shape[1:] == (3, 16, 16)
    assert len(d.train) + len(d.heldout) + len(d.test) == 10


def test_imagefolder_train_test_layout(data_root):
    _png_folder(data_root / "pets" / "train")
    _png_folder(data_root / "pets" / "test", per_class=2)
    d = load_dataset("imagefolder:pets", image_size=8)
    assert len(d.test) == 4 and len(d.train) + len(d.heldout) == 10


@pytest.mark.parametrize("name", ["../outside", "pets/../../outside", "/etc", "sub/../../.."])
def test_imagefolder_refuses_paths_outside_root(data_root, name):
    _png_folder(data_root.parent.parent / "outside")
    with pytest.raises(PftError, match="outside"):
        load_dataset(f"imagefolder:{name}")


def test_imagefolder_refuses_symlinked_folder_outside_root(data_root):
    _png_folder(data_root.parent.parent / "secret")
    (data_root / "link").symlink_to(data_root.parent.parent / "secret")
    with pytest.raises(PftError, match="outside"):
        load_dataset("imagefolder:link")


def test_imagefolder_refuses_symlinked_file_outside_root(data_root):
    _png_folder(data_root / "pets")
    _png_folder(data_root.parent.parent / "secret")
    (data_root / "pets" / "cat" / "x.png").symlink_to(data_root.parent.parent / "secret/cat/0.png")
    with pytest.raises(PftError, match="outside"):
        load_dataset("imagefolder:pets")


def test_imagefolder_missing_and_empty(data_root):
    with pytest.raises(PftError, match="does not exist"):
        load_dataset("imagefolder:nothing")
    (data_root / "one" / "only").mkdir(parents=True)
    with pytest.raises(PftError, match="two class"):
        load_dataset("imagefolder:one")
    with pytest.raises(PftError, match="needs a folder"):
        dataset_info("imagefolder:")


def test_cifar_offline_error_names_the_folder(data_root, monkeypatch):
    # The network is unreachable from tests by design: torchvision's download must fail and
    # the error must say where to put the archive.
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvu, "download_url", offline)
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(PftError, match="cifar-10-python.tar.gz") as err:
        load_dataset("cifar10")
    assert str(data_root / "cifar10") in str(err.value)


def test_every_catalogue_entry_names_its_own_loader_and_shift_function():
    """Datasets and shifts own their behaviour: each entry resolves to a callable, lazily."""
    import inspect

    from pft.dataset_catalog import SHIFTS
    from pft.lazy import load_function

    entries = [*DATASETS.values(), dataset_info("imagefolder:some_folder")]
    for info in entries:
        loader = load_function(info.loader)
        assert list(inspect.signature(loader).parameters) == ["info", "image_size"], info.name
    for shift in SHIFTS.values():
        fn = load_function(shift.apply)
        assert list(inspect.signature(fn).parameters) == ["x", "i", "seed"], shift.name
        x = torch.rand(2, 1, 16, 16)
        assert fn(x, 0, 0).shape == x.shape


@pytest.mark.parametrize("side", [40, 64])  # PIL warns past its limit, raises past twice it
def test_a_decompression_bomb_is_a_user_error_naming_the_file(data_root, monkeypatch, side):
    from PIL import Image

    _png_folder(data_root / "pets")
    bomb = data_root / "pets" / "dog" / "bomb.png"
    Image.new("L", (side, side)).save(bomb)  # a tiny file; the limit is lowered to 1,000 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(PftError, match=r"bomb\.png is too large to decode safely.*shrink it"):
        load_dataset("imagefolder:pets", image_size=8)
