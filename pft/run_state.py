"""Resumable run state: what a killed or cancelled fine-tuning run needs to continue exactly.

``state/tensors-<step>.safetensors`` holds the tuned tensors, the AdamW moments and the torch
RNG state; ``state/state.json`` holds the counters, metric history, angle trajectory and the
optimizer's non-tensor state, and names its tensors file. The JSON is written last (atomic
rename), so it always points at a complete tensors file. No pickles.

`check_resume_state` validates what a killed attempt left before a retry resumes from it, and
`completed_epochs` says how far it got; callers never read the layout themselves.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from pft.checkpoint import save_tensors, write_json
from pft.errors import PftError


@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # completed steps of the current epoch (a cancelled run)
    global_step: int = 0
    loss_sum: float = 0.0  # running train loss of the current epoch
    seen: int = 0
    train_seconds: float = 0.0
    train_images: int = 0
    history: list[dict] = field(default_factory=list)  # per-epoch metrics
    trajectory: list[dict] = field(default_factory=list)  # per-epoch {"epoch", "units"}


def save_state(
    folder: Path,
    st: RunState,
    config: dict,
    model: nn.Module,
    tuned: list[str],
    opt: torch.optim.Optimizer,
) -> None:
    params = dict(model.named_parameters())
    tensors = {f"param.{n}": params[n] for n in tuned}
    opt_sd = opt.state_dict()
    plain: dict[str, dict[str, Any]] = {}
    for idx, slots in opt_sd["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                plain.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    name = f"tensors-{st.global_step}.safetensors"
    save_tensors(folder / name, tensors)
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
        for g in opt_sd["param_groups"]
    ]
    write_json(
        folder / "state.json",
        {
            "config": config,
            "tensors": name,
            "run": asdict(st),
            "optimizer": {"param_groups": groups, "plain": plain},
        },
    )
    for old in folder.glob("tensors-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _same_config(saved: dict, config: dict) -> bool:
    """``saved`` is ``config``, hyperparameters added since (`pft.jobs.specs.Hparams`) filled
    with their defaults: a checkpoint written before a new setting existed still resumes."""
    if saved == config:
        return True
    from pft.jobs.specs import Hparams

    def filled(c: dict) -> dict:
        if not isinstance(c, dict) or not isinstance(c.get("hparams"), dict):
            return c
        try:
            return {**c, "hparams": Hparams(**c["hparams"]).to_dict()}
        except TypeError:  # a field that no longer exists: not the same run
            return c

    return filled(saved) == filled(config)


def load_state(
    folder: Path, config: dict, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device
) -> RunState | None:
    """Restores model, optimizer and RNG from ``folder``; None when there is nothing to resume."""
    path = folder / "state.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if not _same_config(saved["config"], config):
        raise PftError(
            f"{folder.parent} holds an unfinished run with a different configuration; "
            "choose another output folder or delete it"
        )
    tensors = load_file(str(folder / saved["tensors"]))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                params[key[len("param.") :]].copy_(value)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, slot = key.split(".", 2)
            state.setdefault(int(idx), {})[slot] = value
    for idx, slots in saved["optimizer"]["plain"].items():
        state.setdefault(int(idx), {}).update(slots)
    opt.load_state_dict({"state": state, "param_groups": saved["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return RunState(**saved["run"])


def clear_state(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


STATE_DIR = "state"  # the resumable state's folder inside a run folder


def check_safetensors(path: Path) -> None:
    """Raises ValueError unless ``path`` is a complete safetensors file (header + data size).

    Reads only the header, so it is cheap even for multi-GB files; catches truncated and
    garbage files (bit flips inside tensor data are caught by a recorded sha256 instead).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise ValueError("header length is beyond the end of the file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"unreadable header ({exc})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"{size} bytes, expected {8 + n + end} (truncated or padded)")


def check_resume_state(run_dir: Path) -> None:
    """Validates the resumable state a previous attempt left in ``run_dir/state``.

    A corrupt one is moved to ``state.corrupt`` (so that a retry starts from scratch) and a
    PftError says so.
    """
    state = Path(run_dir) / STATE_DIR
    meta = state / "state.json"
    if not meta.is_file():
        return
    try:
        saved = json.loads(meta.read_text())
        tensors = state / str(saved["tensors"])
        if not tensors.is_file():
            raise ValueError(f"{tensors.name} is missing")
        check_safetensors(tensors)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        aside = Path(run_dir) / f"{STATE_DIR}.corrupt"
        shutil.rmtree(aside, ignore_errors=True)
        state.rename(aside)
        raise PftError(
            f"corrupt checkpoint in {state}: {reason}; it was moved to {aside.name}/, "
            "retry the job to start it from scratch"
        ) from None


def completed_epochs(run_dir: Path) -> int:
    """Epochs a resumable state in ``run_dir`` has completed; 0 when there is none."""
    try:
        saved = json.loads((Path(run_dir) / STATE_DIR / "state.json").read_text())
        return int(saved["run"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
