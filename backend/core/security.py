"""The API's two bearer tokens: the users' (``PFT_API_TOKEN``) and the workers'
(``PFT_WORKER_TOKEN``), each taken from its variable or generated once into its file of the
data folder (`contract.layout.DataLayout`), mode 0600.

Two credentials so that a GPU host holds only what the worker routes need, and a leaked user
token cannot forge a worker's reports (nor a worker token submit or cancel jobs).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from backend.core.config import ApiSettings
from contract.settings import read_secret


def ensure_secret(value: SecretStr | None, path: Path) -> str:
    """The credential from ``value``, else from ``path``, created there (0600) when absent.

    Safe when several processes start at once: the file appears atomically with its content,
    and the loser of the race reads the winner's token.
    """
    found = read_secret(value, path)
    if found is not None:
        return found
    if path.exists():
        raise RuntimeError(f"{path} is empty; delete it to generate a new token")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)  # atomic and exclusive: a concurrent starter's token wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    token = path.read_text().strip()
    if not token:
        raise RuntimeError(f"{path} is empty; delete it to generate a new token")
    return token


def api_token(settings: ApiSettings) -> str:
    """The token users (CLI, dashboard, scripts) send on every route but the worker routes."""
    return ensure_secret(settings.api_token, settings.layout.api_token)


def worker_token(settings: ApiSettings) -> str:
    """The token workers send on the worker routes (and nowhere else)."""
    return ensure_secret(settings.worker_token, settings.layout.worker_token)


def token_matches(expected: str, given: str) -> bool:
    """Constant-time comparison (no timing side channel on the token)."""
    return secrets.compare_digest(expected.encode(), given.encode())
