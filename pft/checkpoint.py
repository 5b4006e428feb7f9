"""Delta checkpoints and atomic files.

A delta checkpoint is a safetensors file holding only the tensors a strategy tuned, with string
metadata (``format=pft-delta-1``, base model, strategy, classes, data config, hyper-parameters)
that is enough to rebuild the pre-trained point (`pft.base_model`) and apply the delta on top.
Nothing here unpickles: tensors live in safetensors, everything else in JSON. Every file is
byte-reproducible: the same tensors and metadata give the same bytes, hence the same sha256
(`save_tensors` sorts the header, which safetensors writes in hash-map order).

The tuned tensors are the tuned parameters plus the persistent buffers of every module that owns
one (`delta_tensors`): a tuned BatchNorm's ``running_mean``, ``running_var`` and
``num_batches_tracked`` travel with its weight and bias, so a rebuilt model evaluates exactly as
the trained one. Buffers of frozen modules stay out (they keep their pre-trained values). Deltas
written before buffers were stored (parameters only) still apply: their modules keep the base's
buffers.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pft.base_model import base_fingerprint, build_pretrained
from pft.errors import PftError

FORMAT = "pft-delta-1"
JSON_KEYS = (
    "model_overrides",
    "pretrained",
    "num_classes",
    "strategy_params",
    "data_config",
    "hparams",
)  # metadata values stored as JSON text (safetensors metadata is str -> str)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are shared with other processes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n"))


def save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Atomically writes CPU-contiguous copies of ``tensors`` as safetensors."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(flat, str(tmp), metadata=dict(metadata or {}))
        canonical_header(tmp)

    return atomic_write(path, write)


def canonical_header(path: Path) -> None:
    """Rewrites a safetensors file's JSON header with its keys sorted, in place.

    safetensors serialises ``__metadata__`` from a hash map whose order changes from one
    process, or one call, to the next, so equal tensors and metadata gave files with different
    bytes. Sorted (compact JSON, as safetensors writes it) the header has the same length, and
    the tensor data, addressed by offsets, does not move; a longer header (never seen) is
    written with the data after it.
    """
    with open(path, "r+b") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        raw = text.encode()
        if len(raw) <= size:
            f.seek(8)
            f.write(raw.ljust(size, b" "))  # safetensors pads its header with spaces too
            return
        data = f.read()
        raw = raw.ljust(-(-len(raw) // 8) * 8, b" ")
        f.seek(0)
        f.write(struct.pack("<Q", len(raw)) + raw + data)
        f.truncate()


def delta_metadata(
    *,
    base_model: str,
    model_overrides: dict,
    pretrained: bool,
    num_classes: int,
    strategy: str,
    strategy_params: dict,
    dataset: str,
    data_config: dict,
    hparams: dict,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "base_model": base_model,
        "model_overrides": model_overrides,
        "pretrained": pretrained,
        "base_fingerprint": base_fingerprint(base_model, model_overrides, pretrained),
        "num_classes": num_classes,
        "strategy": strategy,
        "strategy_params": strategy_params,
        "dataset": dataset,
        "data_config": data_config,
        "hparams": hparams,
    }


def tuned_buffers(model: nn.Module, tuned: Iterable[str]) -> dict[str, torch.Tensor]:
    """The persistent buffers (state-dict entries) of every module that directly owns a tuned
    parameter, by state-dict name: a tuned BatchNorm's running statistics, not a frozen one's."""
    owners = {name.rpartition(".")[0] for name in tuned}
    persistent = model.state_dict(keep_vars=True).keys()
    out = {}
    for prefix in sorted(owners):
        for leaf, buf in model.get_submodule(prefix).named_buffers(recurse=False):
            name = f"{prefix}.{leaf}" if prefix else leaf
            if name in persistent:
                out[name] = buf
    return out


def delta_tensors(model: nn.Module, tuned: Iterable[str]) -> dict[str, torch.Tensor]:
    """What a delta checkpoint of ``model`` holds: the ``tuned`` parameters and the buffers of
    the modules that own them (`tuned_buffers`). The one writer of a run's delta calls this."""
    tuned = list(tuned)
    params = dict(model.named_parameters())
    return {t: params[t] for t in tuned} | tuned_buffers(model, tuned)


def save_delta(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    encoded = {
        k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()
    }
    return save_tensors(path, tensors, encoded)


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """safetensors metadata (str -> str) with the structured values of a delta decoded."""
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in raw.items()}


def delta_meta(raw: Mapping[str, str], where: str | Path) -> dict[str, Any]:
    """The decoded metadata of a delta checkpoint; PftError for files that are not deltas."""
    if raw.get("format") != FORMAT:
        raise PftError(
            f"{where} is not a pft delta checkpoint (format {raw.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return decode_metadata(raw)


def delta_path(path: str | Path) -> Path:
    """A delta checkpoint given as its file or its run folder."""
    path = Path(path)
    return path / "delta.safetensors" if path.is_dir() else path


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tuned tensors and the decoded metadata; PftError for files that are not deltas."""
    path = delta_path(path)
    if not path.is_file():
        raise PftError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # not a safetensors file
        raise PftError(f"{path} is not a safetensors checkpoint ({exc})") from exc
    return tensors, delta_meta(raw, path)


def build_model_from_delta(
    path: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned model: the pre-trained point from the metadata with the delta applied."""
    tensors, meta = load_delta(path)
    model = base_from_meta(meta)
    apply_delta(model, tensors, meta)
    return model.to(device).eval(), meta


def base_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """The pre-trained point a checkpoint was fine-tuned from; errors if it has changed."""
    fingerprint = base_fingerprint(meta["base_model"], meta["model_overrides"], meta["pretrained"])
    if meta.get("base_fingerprint", "") != fingerprint:
        raise PftError(
            f"the checkpoint was fine-tuned from a different copy of {meta['base_model']!r} than "
            "the one in the data folder (it was pre-trained again since); fine-tune it again"
        )
    return build_pretrained(
        meta["base_model"],
        int(meta["num_classes"]),
        pretrained=bool(meta["pretrained"]),
        overrides=meta["model_overrides"],
        head_seed=int(meta["hparams"].get("head_seed", 0)),
    )


def apply_delta(model: nn.Module, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Copies delta tensors (parameters and persistent buffers) into ``model``; PftError if one
    does not fit. A parameters-only delta (written before buffers were stored) leaves every
    buffer at the base's value."""
    params = dict(model.state_dict(keep_vars=True))  # parameters and persistent buffers
    for name, value in tensors.items():
        target = params.get(name)
        if target is None or tuple(target.shape) != tuple(value.shape):
            got = None if target is None else tuple(target.shape)
            raise PftError(
                f"checkpoint tensor {name!r} {tuple(value.shape)} does not fit model "
                f"{meta.get('base_model')!r} (model has {got}): the checkpoint is for another "
                "base model"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))


def same_base(metas: list[Mapping[str, Any]]) -> None:
    """Raises PftError unless all checkpoints start from the same pre-trained point."""
    keys = ("base_model", "model_overrides", "pretrained", "base_fingerprint", "num_classes")
    first = metas[0]
    for i, meta in enumerate(metas[1:], start=2):
        for key in keys:
            if meta.get(key) != first.get(key):
                raise PftError(
                    f"checkpoint {i} has {key}={meta.get(key)!r} but checkpoint 1 has "
                    f"{first.get(key)!r}: soups need ingredients of one base model"
                )
        if meta["hparams"].get("head_seed") != first["hparams"].get("head_seed"):
            raise PftError(
                f"checkpoint {i} has a different head_seed than checkpoint 1: soup "
                "ingredients must share their head initialisation"
            )
