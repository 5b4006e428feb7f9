"""Messages for a failed run that a user can act on (the job's ``error`` field): what went
wrong and what to do, for bad input, out of memory, a full or unwritable store, a missing
file, or anything else."""

from __future__ import annotations

import errno
import os
from typing import Any

from pft.errors import PftError

MAX_ERROR_CHARS = 2000

_STORAGE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


def describe_failure(exc: BaseException, spec: Any = None, device: str | None = None) -> str:
    """A one-paragraph message for ``exc`` raised while running ``spec`` on ``device``."""
    if isinstance(exc, PftError):
        text = str(exc)
    elif _is_oom(exc):
        hparams = getattr(spec, "hparams", None)
        bs = getattr(hparams, "batch_size", None)
        hint = f" (now {bs})" if bs else ""
        text = (
            f"out of memory on {device or 'the device'}: lower hparams.batch_size{hint} or use "
            f"a smaller model ({type(exc).__name__}: {_first_line(exc)})"
        )
    elif isinstance(exc, FileNotFoundError):
        text = f"file not found: {exc.filename or _first_line(exc)}"
    elif problem := storage_problem(exc):
        text = (
            f"the artifact store cannot be written ({problem}): free space or fix its "
            f"permissions, then retry; the job resumes from its last epoch checkpoint "
            f"({type(exc).__name__}: {_first_line(exc)})"
        )
    else:
        text = f"internal error ({type(exc).__name__}): {_first_line(exc)}; see the worker log"
    return text[:MAX_ERROR_CHARS]


def storage_problem(exc: BaseException) -> str | None:
    """Why a write failed, for full or unwritable stores (safetensors reports os errors as text)."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return _STORAGE_ERRNOS[exc.errno]
    text = str(exc)
    for code, reason in _STORAGE_ERRNOS.items():
        if f"os error {code})" in text or os.strerror(code) in text:
            return reason
    return None


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch  # only here: the message for any other failure needs no torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    # CPU: torch's allocator says "DefaultCPUAllocator: can't allocate memory"
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "allocate memory" in text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
