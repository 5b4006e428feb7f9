"""Errors raised by pft for bad user input; their messages are safe to show to users."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PftError(ValueError):
    """A user mistake (unknown name, out-of-range value, incompatible files).

    The message names the offending field or value and what is accepted instead; ``field`` is
    that parameter's name when there is one, so an API can point at it (a 422's ``loc``).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def unknown_name(
    kind: str, name: object, accepted: Iterable[str], *, field: str | None = None
) -> PftError:
    """The error for a name no registry holds: close matches first, then every accepted name."""
    accepted = list(accepted)
    close = difflib.get_close_matches(str(name), accepted, n=3)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return PftError(f"unknown {kind} {name!r}{hint}; accepted: {', '.join(accepted)}", field=field)
