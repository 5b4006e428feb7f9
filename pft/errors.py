"""Errors raised by pft for bad user input; their messages are safe to show to users."""


class PftError(ValueError):
    """A user mistake (unknown name, out-of-range value, incompatible files).

    The message names the offending field or value and what is accepted instead.
    """
