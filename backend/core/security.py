"""The API's bearer token: from ``PFT_API_TOKEN``, or generated once into the data folder."""

from __future__ import annotations

import os
import secrets

from backend.core.config import Settings


def resolve_token(settings: Settings) -> str:
    """The token clients must send; created with mode 0600 on first start in embedded mode.

    Safe when several processes start at once: the file appears atomically with its content,
    and the loser of the race reads the winner's token.
    """
    if settings.api_token:
        return settings.api_token
    path = settings.token_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".api_token.{os.getpid()}.{secrets.token_hex(4)}")
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


def token_matches(expected: str, given: str) -> bool:
    """Constant-time comparison (no timing side channel on the token)."""
    return secrets.compare_digest(expected.encode(), given.encode())
