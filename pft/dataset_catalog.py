"""The dataset and distribution-shift catalogues as plain data (torch-free).

The backend validates job requests against these names without importing torch. Each entry
names its own loader (or corruption) as ``"module:function"`` (`pft.lazy`), which `pft.datasets`
and `pft.shifts` import only when it is used, so adding a dataset or a shift is one entry here
plus its function; nothing dispatches on names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pft.errors import PftError, unknown_name

IMAGEFOLDER_PREFIX = "imagefolder:"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    num_classes: int | None  # None: known only once the folder is read (imagefolder)
    hflip: bool = False  # horizontal flips are a valid augmentation (not for digits)
    # ``"module:function"`` called as ``function(info, image_size)``, returning the raw splits.
    loader: str = ""  # required for every entry (a default only to keep the field order)
    # The loader's arguments (class range of a subset, torchvision class, folder name, ...).
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ShiftInfo:
    name: str
    description: str
    # ``"module:function"`` called as ``function(x, severity_index, seed)`` on a (B, C, H, W)
    # float batch in [0, 1].
    apply: str


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            "synthetic",
            "Deterministic 16x16 striped patterns, 4 classes (fast tests)",
            4,
            loader="pft.datasets:load_synthetic",
        ),
        DatasetInfo(
            "digits",
            "scikit-learn 8x8 handwritten digits, 10 classes, 1,000 train images (small-data)",
            10,
            loader="pft.datasets:load_digits",
        ),
        DatasetInfo(
            "fashion_mnist",
            "Fashion-MNIST 28x28 clothing, 10 classes",
            10,
            hflip=True,
            loader="pft.datasets:load_fashion_mnist",
        ),
        DatasetInfo(
            "fashion_mnist_a",
            "Fashion-MNIST classes 0-4 (T-shirt, trouser, pullover, dress, coat)",
            5,
            hflip=True,
            loader="pft.datasets:load_fashion_mnist",
            options={"classes": (0, 5)},
        ),
        DatasetInfo(
            "fashion_mnist_b",
            "Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, boot), relabelled 0-4",
            5,
            hflip=True,
            loader="pft.datasets:load_fashion_mnist",
            options={"classes": (5, 10)},
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10 32x32 colour images, 10 classes (torchvision)",
            10,
            hflip=True,
            loader="pft.datasets:load_cifar",
            options={"torchvision": "CIFAR10", "archive": "cifar-10-python.tar.gz"},
        ),
        DatasetInfo(
            "cifar100",
            "CIFAR-100 32x32 colour images, 100 classes (torchvision)",
            100,
            hflip=True,
            loader="pft.datasets:load_cifar",
            options={"torchvision": "CIFAR100", "archive": "cifar-100-python.tar.gz"},
        ),
    ]
}

# Corruptions for out-of-distribution evaluation (in the spirit of Hendrycks & Dietterich 2019),
# each at five fixed severities; a shift is written ``NAME`` (severity 3) or ``NAME:SEVERITY``.
SHIFTS: dict[str, ShiftInfo] = {
    s.name: s
    for s in [
        ShiftInfo("gaussian_noise", "additive Gaussian pixel noise", "pft.shifts:gaussian_noise"),
        ShiftInfo("blur", "Gaussian blur", "pft.shifts:blur"),
        ShiftInfo("contrast", "reduced contrast", "pft.shifts:contrast"),
        ShiftInfo(
            "rotation", "rotation by a fixed angle (alternating sign)", "pft.shifts:rotation"
        ),
    ]
}
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITY = 3


def dataset_info(name: str) -> DatasetInfo:
    """The catalogue entry of a dataset name; ``imagefolder:NAME`` is accepted for any NAME."""
    if not isinstance(name, str) or not name:
        raise PftError("dataset must be a non-empty name")
    if name.startswith(IMAGEFOLDER_PREFIX):
        folder = name[len(IMAGEFOLDER_PREFIX) :]
        if not folder:
            raise PftError("dataset 'imagefolder:NAME' needs a folder NAME under the datasets root")
        return DatasetInfo(
            name,
            f"image folder {folder!r} under the datasets root",
            None,
            hflip=True,
            loader="pft.datasets:load_image_folder",
            options={"folder": folder},
        )
    if name not in DATASETS:
        raise unknown_name("dataset", name, [*DATASETS, IMAGEFOLDER_PREFIX + "NAME"])
    return DATASETS[name]


def parse_shift(spec: str) -> tuple[str, int]:
    """``"blur"`` -> ``("blur", 3)``; ``"blur:5"`` -> ``("blur", 5)``; raises PftError."""
    name, _, sev = str(spec).partition(":")
    if name not in SHIFTS:
        raise unknown_name("shift", name, SHIFTS)
    if not sev:
        return name, DEFAULT_SEVERITY
    if not sev.isdigit() or int(sev) not in SEVERITIES:
        raise PftError(
            f"shift severity must be one of {', '.join(map(str, SEVERITIES))}, "
            f"got {sev!r} in {spec!r}"
        )
    return name, int(sev)


def catalogue() -> dict:
    """Datasets and shifts as plain data for UIs and the API."""
    return {
        "datasets": [
            {"name": d.name, "description": d.description, "num_classes": d.num_classes}
            for d in DATASETS.values()
        ]
        + [
            {
                "name": IMAGEFOLDER_PREFIX + "NAME",
                "description": "a folder of class sub-folders "
                "under the datasets root (PFT_DATASETS_DIR)",
                "num_classes": None,
            }
        ],
        "shifts": [
            {
                "name": s.name,
                "description": s.description,
                "severities": list(SEVERITIES),
                "default_severity": DEFAULT_SEVERITY,
            }
            for s in SHIFTS.values()
        ],
    }
