"""The dataset and distribution-shift catalogues as plain data (torch-free).

The backend validates job requests against these names without importing torch; the loaders
themselves live in `pft.datasets` and the corruptions in `pft.shifts`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pft.errors import PftError

IMAGEFOLDER_PREFIX = "imagefolder:"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    num_classes: int | None  # None: known only once the folder is read (imagefolder)
    hflip: bool = False  # horizontal flips are a valid augmentation (not for digits)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("synthetic", "Deterministic 16x16 striped patterns, 4 classes (fast tests)", 4),
        DatasetInfo(
            "digits",
            "scikit-learn 8x8 handwritten digits, 10 classes, 1,000 train images (small-data)",
            10,
        ),
        DatasetInfo("fashion_mnist", "Fashion-MNIST 28x28 clothing, 10 classes", 10, hflip=True),
        DatasetInfo(
            "fashion_mnist_a",
            "Fashion-MNIST classes 0-4 (T-shirt, trouser, pullover, dress, coat)",
            5,
            hflip=True,
        ),
        DatasetInfo(
            "fashion_mnist_b",
            "Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, boot), relabelled 0-4",
            5,
            hflip=True,
        ),
        DatasetInfo(
            "cifar10", "CIFAR-10 32x32 colour images, 10 classes (torchvision)", 10, hflip=True
        ),
        DatasetInfo(
            "cifar100", "CIFAR-100 32x32 colour images, 100 classes (torchvision)", 100, hflip=True
        ),
    ]
}

# Corruptions for out-of-distribution evaluation (in the spirit of Hendrycks & Dietterich 2019),
# each at five fixed severities; a shift is written ``NAME`` (severity 3) or ``NAME:SEVERITY``.
SHIFTS: dict[str, str] = {
    "gaussian_noise": "additive Gaussian pixel noise",
    "blur": "Gaussian blur",
    "contrast": "reduced contrast",
    "rotation": "rotation by a fixed angle (alternating sign)",
}
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITY = 3


def _unknown(kind: str, name: str, accepted: list[str]) -> PftError:
    close = difflib.get_close_matches(name, accepted, n=3)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return PftError(f"unknown {kind} {name!r}{hint}; accepted: {', '.join(accepted)}")


def dataset_info(name: str) -> DatasetInfo:
    """The catalogue entry of a dataset name; ``imagefolder:NAME`` is accepted for any NAME."""
    if not isinstance(name, str) or not name:
        raise PftError("dataset must be a non-empty name")
    if name.startswith(IMAGEFOLDER_PREFIX):
        folder = name[len(IMAGEFOLDER_PREFIX) :]
        if not folder:
            raise PftError("dataset 'imagefolder:NAME' needs a folder NAME under the datasets root")
        return DatasetInfo(name, f"image folder {folder!r} under the datasets root", None, True)
    if name not in DATASETS:
        raise _unknown("dataset", name, [*DATASETS, IMAGEFOLDER_PREFIX + "NAME"])
    return DATASETS[name]


def parse_shift(spec: str) -> tuple[str, int]:
    """``"blur"`` -> ``("blur", 3)``; ``"blur:5"`` -> ``("blur", 5)``; raises PftError."""
    name, _, sev = str(spec).partition(":")
    if name not in SHIFTS:
        raise _unknown("shift", name, list(SHIFTS))
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
                "name": n,
                "description": d,
                "severities": list(SEVERITIES),
                "default_severity": DEFAULT_SEVERITY,
            }
            for n, d in SHIFTS.items()
        ],
    }
