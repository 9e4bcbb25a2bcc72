"""Termination signals (SIGINT, SIGTERM, SIGHUP) as an exception raised where the program was, so that every
`with`/`finally` that removes temporary files runs, and remembered, so that one swallowed on the way (a library
that catches BaseException, a `__del__` or a native callback, where Python prints "Exception ignored" and goes
on) still stops the run before anything is published (`raise_if_interrupted`, called by staging before its
rename).

`deferred()` holds signals back for a short critical section (creating a lock file and a staging folder
together); they are delivered when it ends.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HANDLED_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
                        if s)


class Interrupted(BaseException):
    """A termination signal, raised where the command was so that its cleanup runs (like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_pending: int | None = None
_deferring = 0


def on_signal(signum: int, _frame: object) -> None:
    """The handler: remember the first signal, ignore further ones (the cleanup must finish), raise unless a
    critical section is deferring it."""
    global _pending
    for s in HANDLED_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if _pending is None:
        _pending = signum
    if not _deferring:
        raise Interrupted(signum)


def install() -> dict[int, Callable | int | None]:
    """Install `on_signal` for the handled signals (main thread only); returns the previous handlers."""
    global _pending
    _pending = None
    return {s: signal.signal(s, on_signal) for s in HANDLED_SIGNALS}


def restore(previous: dict[int, Callable | int | None]) -> None:
    """Put back the handlers `install` replaced and forget the signal (a later run in this process starts clean)."""
    global _pending
    for s, handler in previous.items():
        signal.signal(s, handler)
    _pending = None


def pending_signal() -> int | None:
    """The signal that interrupted this run, if one did (even when its exception was swallowed)."""
    return _pending


def raise_if_interrupted() -> None:
    if _pending is not None:
        raise Interrupted(_pending)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold termination signals back inside the block (blocked in this thread; noted but not raised when another
    thread receives one); a signal that arrived meanwhile is raised when the block ends."""
    global _deferring
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if not _deferring:
        raise_if_interrupted()
