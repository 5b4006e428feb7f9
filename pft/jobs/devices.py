"""Where and how a job runs: the device a worker setting names, and torch's thread count.

``PFT_DEVICE`` is "cpu", "cuda", "cuda:N" or "mps" (unset: cuda when available). Plain "cuda"
spreads a worker's pool processes over the GPUs by process index; nothing here initialises CUDA
before it is asked for (a Celery pool forks after the worker imports this). Torch-free at
import: the worker's settings validate ``PFT_DEVICE`` with `check_device_setting`.
"""

from __future__ import annotations

import os
import socket

from pft.errors import PftError


def check_device_setting(value: str | None) -> str | None:
    """``PFT_DEVICE`` normalised (None: unset); ValueError naming the accepted values."""
    v = (value or "").strip()
    if v in {"", "cpu", "cuda", "mps"} or (v.startswith("cuda:") and v[5:].isdigit()):
        return v or None
    raise ValueError(f"PFT_DEVICE={v!r} is not a device; accepted: cpu, cuda, cuda:N, mps")


def resolve_device(setting: str | None, process_index: int = 0) -> str:
    """``PFT_DEVICE`` made concrete; plain ``cuda`` picks GPU ``process_index`` mod the count."""
    import torch

    if (setting or "cuda") == "cuda" and torch.cuda.is_available():
        return f"cuda:{process_index % torch.cuda.device_count()}"
    return setting or "cpu"


def require_device(device: str) -> None:
    """PftError (a user error: the worker's setting) when ``device`` is CUDA on a host without."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PftError(
            f"PFT_DEVICE={device} but CUDA is not available on {socket.gethostname()}; "
            "fix the worker's PFT_DEVICE and retry the job"
        )


def set_torch_threads(setting: int | None) -> int:
    """Sets torch's thread count: ``setting``, else the CPUs this process may run on (a job
    gains little past 32); returns it."""
    import torch

    threads = setting or min(len(os.sched_getaffinity(0)), 32)
    torch.set_num_threads(threads)
    return threads
