"""Run configurations shared by the CLI, the backend (which validates and stores them as JSON)
and the worker (which executes them). Torch-free plain dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Hparams:
    epochs: int = 3  # passes over the train split
    lr: float = 1e-3  # peak AdamW learning rate
    batch_size: int = 64
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1  # fraction of steps spent in linear warmup before cosine decay
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max global grad norm; 0 disables clipping
    seed: int = 0  # data order, augmentation and dropout
    head_seed: int = 0  # head initialisation: shared by soup ingredients (Wortsman et al. 2022)
    compile: bool = False  # torch.compile the model (CUDA only)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Hparams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


@dataclass
class FinetuneConfig:
    model: str  # catalogue or timm name
    dataset: str  # dataset catalogue name (pft.datasets)
    strategy: str = "full"
    strategy_params: dict[str, Any] = field(default_factory=dict)  # k, order, angles, units
    hparams: Hparams = field(default_factory=Hparams)
    pretrained: bool = True  # False: random weights (recorded in every result)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # timm kwargs (tests)
    shifts: list[str] = field(default_factory=list)  # shift sets evaluated after training

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        d = dict(d)
        d["hparams"] = Hparams.from_dict(d.get("hparams"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
