"""Stopping a run without losing work: a timer for mid-epoch checkpoints, and a signal that
asks the run to save and stop.

Both feed the engine's callbacks (`pft.training.train`): ``checkpoint_due()`` answers
`CheckpointTimer.due`, and a caller's ``should_cancel()`` includes the flag `stop_on_signal`
sets. The worker uses them for SIGTERM (Ctrl-C of the launcher, Celery's warm shutdown) and
``PFT_CHECKPOINT_EVERY_S``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator


class CheckpointTimer:
    """Due every ``every_s`` seconds since the last save (0: never; epoch ends still save)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._saved_at = time.monotonic()

    def due(self) -> bool:
        return self.every_s > 0 and time.monotonic() - self._saved_at >= self.every_s

    def saved(self) -> None:
        self._saved_at = time.monotonic()


@contextlib.contextmanager
def stop_on_signal(
    request_stop: Callable[[], None], signum: int = signal.SIGTERM
) -> Iterator[None]:
    """While the block runs, ``signum`` calls ``request_stop()`` instead of its default action
    (which kills a Celery pool process at once); the previous handler is restored after.

    ``request_stop`` runs inside a signal handler: it should only set a flag (no logging, no
    I/O). Outside the main thread, where handlers cannot be set, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, lambda _signum, _frame: request_stop())
    try:
        yield
    finally:
        signal.signal(signum, previous)
