"""Datasets held in memory as uint8 tensors, with deterministic train / held-out / test splits.

Every catalogue dataset (`pft.dataset_catalog`) is small enough to keep in memory as
``(N, C, H, W)`` uint8, so batches are resized, augmented and normalised as tensors on the
training device (`pft.preprocess`) and data loading never bottlenecks a step. The test split is
fixed per dataset; the held-out split is carved from the training images by ``split_seed`` and is
never trained on (greedy soups and model selection use it).
"""

from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from pft.dataset_catalog import DatasetInfo, dataset_info
from pft.errors import PftError
from pft.lazy import load_function
from pft.paths import contained, datasets_dir

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
HELDOUT_FRACTION = 0.1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DatasetSplits:
    name: str
    classes: tuple[str, ...]
    train: Split
    heldout: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        if name not in ("train", "heldout", "test"):
            raise PftError(f"split must be one of train, heldout, test, got {name!r}")
        return getattr(self, name)


@dataclass(frozen=True)
class _Raw:
    classes: tuple[str, ...]
    train: Split  # the pool the held-out split is carved from
    test: Split
    heldout_size: int | None = None  # None: HELDOUT_FRACTION of train


def load_dataset(name: str, *, split_seed: int = 0, image_size: int = 224) -> DatasetSplits:
    """Loads a catalogue dataset; raises PftError naming the accepted names or missing files.

    ``image_size`` only matters for ``imagefolder:`` datasets, whose images are resized to it
    once at load time so that they fit one uint8 tensor.
    """
    info = dataset_info(name)  # validates the name with close matches
    raw = load_function(info.loader)(info, image_size)
    n = len(raw.train)
    k = raw.heldout_size if raw.heldout_size is not None else max(1, int(n * HELDOUT_FRACTION))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    held, train = perm[:k].sort().values, perm[k:].sort().values
    return DatasetSplits(
        name=name,
        classes=raw.classes,
        train=Split(raw.train.images[train], raw.train.labels[train]),
        heldout=Split(raw.train.images[held], raw.train.labels[held]),
        test=raw.test,
    )


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    return Split(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def load_synthetic(info: DatasetInfo, image_size: int) -> _Raw:
    return _synthetic()


@cache
def _synthetic() -> _Raw:
    """Four classes of oriented stripes (horizontal, vertical, two diagonals) with random phase,
    contrast and noise: learnable in seconds, hard enough that accuracy moves while training."""
    g = torch.Generator().manual_seed(1234)
    n, size = 640, 16
    labels = torch.arange(n) % 4
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coords = torch.stack([yy, xx, yy + xx, yy - xx]).float()  # (4, H, W): one per class
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    contrast = 0.25 + 0.5 * torch.rand(n, 1, 1, generator=g)
    waves = torch.sin(coords[labels] * 1.2 + phase) * contrast  # (N, H, W)
    noise = 0.35 * torch.randn(n, size, size, generator=g)
    images = ((waves + noise) * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    images, labels = images[:, None], labels
    classes = ("horizontal", "vertical", "diagonal", "antidiagonal")
    return _Raw(classes, Split(images[:512], labels[:512]), Split(images[512:], labels[512:]), 64)


def load_digits(info: DatasetInfo, image_size: int) -> _Raw:
    return _digits()


@cache
def _digits() -> _Raw:
    """scikit-learn's 1,797 digits: a fixed 597-image test split, 200 held out, 1,000 to train."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    perm = np.random.default_rng(0).permutation(len(images))
    test, pool = perm[:597], perm[597:]
    return _Raw(
        tuple(str(i) for i in range(10)),
        _split(images[pool], d.target[pool]),
        _split(images[test], d.target[test]),
        heldout_size=200,
    )


FASHION_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset).copy()


def load_fashion_mnist(info: DatasetInfo, image_size: int) -> _Raw:
    """All ten classes, or the ``classes`` range of the entry's options, relabelled from 0."""
    raw = _fashion_mnist()
    if "classes" not in info.options:
        return raw
    return _class_subset(raw, range(*info.options["classes"]))


@cache
def _fashion_mnist() -> _Raw:
    """From the Debian package `dataset-fashion-mnist` when present, else torchvision."""
    d = FASHION_MNIST_DEBIAN
    if (d / "train-images-idx3-ubyte.gz").is_file():
        parts = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
            labels = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz", 8)
            parts[split] = _split(images, labels)
        return _Raw(FASHION_CLASSES, parts["train"], parts["test"])
    from torchvision.datasets import FashionMNIST

    root = datasets_dir() / "fashion_mnist"
    try:
        sets = [FashionMNIST(str(root), train=t, download=True) for t in (True, False)]
    except Exception as exc:  # no network, partial files
        raise PftError(
            f"fashion_mnist is not available: install the Debian package dataset-fashion-mnist "
            f"or put the four idx .gz files in {root / 'FashionMNIST' / 'raw'} ({exc})"
        ) from exc
    s = [Split(ds.data[:, None].contiguous(), ds.targets.long()) for ds in sets]
    return _Raw(FASHION_CLASSES, s[0], s[1])


def _class_subset(raw: _Raw, keep: range) -> _Raw:
    """A view on some classes, relabelled 0..len(keep)-1."""

    def subset(s: Split) -> Split:
        mask = (s.labels >= keep.start) & (s.labels < keep.stop)
        return Split(s.images[mask], s.labels[mask] - keep.start)

    return _Raw(tuple(raw.classes[i] for i in keep), subset(raw.train), subset(raw.test))


def load_cifar(info: DatasetInfo, image_size: int) -> _Raw:
    return _cifar(info.name, info.options["torchvision"], info.options["archive"])


@cache
def _cifar(name: str, torchvision_class: str, archive: str) -> _Raw:
    from torchvision import datasets as tvd

    cls = getattr(tvd, torchvision_class)
    root = datasets_dir() / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        sets = [cls(str(root), train=t, download=True) for t in (True, False)]
    except Exception as exc:  # no network, corrupt archive
        raise PftError(
            f"{name} is not available offline and could not be downloaded ({type(exc).__name__});"
            f" put {archive} (the python version from the CIFAR site) in {root}"
        ) from exc
    s = [_split(ds.data.transpose(0, 3, 1, 2), ds.targets) for ds in sets]  # HWC -> CHW
    return _Raw(tuple(sets[0].classes), s[0], s[1])


def load_image_folder(info: DatasetInfo, image_size: int) -> _Raw:
    """``NAME/<class>/*.png`` (test split: a fixed 20%), or ``NAME/train|test/<class>/*``."""
    folder, base = info.options["folder"], datasets_dir()
    root = contained(base, folder)
    if not root.is_dir():
        raise PftError(f"dataset folder {folder!r} does not exist under {base}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _class_names(root / "train")
        return _Raw(
            classes,
            _read_images(base, root / "train", classes, image_size),
            _read_images(base, root / "test", classes, image_size),
        )
    classes = _class_names(root)
    every = _read_images(base, root, classes, image_size)
    perm = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))
    cut = max(1, len(every) // 5)
    test, train = perm[:cut].sort().values, perm[cut:].sort().values
    return _Raw(
        classes,
        Split(every.images[train], every.labels[train]),
        Split(every.images[test], every.labels[test]),
    )


def _class_names(root: Path) -> tuple[str, ...]:
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if len(classes) < 2:
        raise PftError(f"image folder {root.name!r} needs at least two class sub-folders")
    return classes


def _read_images(base: Path, root: Path, classes: tuple[str, ...], size: int) -> Split:
    from PIL import Image

    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            # Files are read only if they resolve inside the dataset root (symlinks too).
            path = contained(base, path.relative_to(base))
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            try:
                with warnings.catch_warnings():
                    # Past Image.MAX_IMAGE_PIXELS PIL only warns and decodes (2x: it raises): a
                    # small file that decodes to gigabytes is refused before it is decoded.
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(path) as im:
                        im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                        images.append(np.asarray(im).transpose(2, 0, 1))
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                raise PftError(
                    f"image {path} is too large to decode safely ({exc}); a decompression bomb? "
                    "remove it or shrink it"
                ) from None
            except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
                raise PftError(
                    f"image {path} cannot be read ({exc}); remove or replace it"
                ) from None
            labels.append(label)
    if not images:
        raise PftError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return _split(np.stack(images), np.array(labels))
