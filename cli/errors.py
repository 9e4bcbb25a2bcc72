"""Turn user-facing errors into one line on stderr and an exit code, never a traceback; end cleanly on signals.

- RwkvDeployError: its message, its exit code (2 unusable input, 1 a failed check).
- OSError (read-only folder, no permission, disk full) and MemoryError: one line naming the file, exit 1.
- SIGINT, SIGTERM and SIGHUP: raised as exceptions inside the command, so every `with`/`finally` that removes
  temporary files runs (staging folders of export, package, validate; the extracted copy of `generate
  ARCHIVE`), then one line and exit 128 + the signal number. Further signals during that cleanup are ignored.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Callable, TypeVar

import typer

from rwkv_deploy.errors import RwkvDeployError

F = TypeVar("F", bound=Callable)

HANDLED_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Interrupted(BaseException):
    """A termination signal, raised where the command was so that its cleanup runs (like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: object) -> None:
    for s in (*HANDLED_SIGNALS, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)  # let the cleanup finish
    raise Interrupted(signum)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _os_error_line(exc: OSError) -> str:
    if exc.filename is None:
        return f"{exc.strerror or exc} (writing the output; check free space and permissions)"
    return f"{exc.filename}: {exc.strerror or exc}"


def one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        installed = {}
        if _main_thread():
            installed = {s: signal.signal(s, _on_signal) for s in (*HANDLED_SIGNALS, signal.SIGINT)}
        code, line = 0, None
        try:
            return fn(*args, **kwargs)
        except RwkvDeployError as exc:
            code, line = exc.exit_code, str(exc)
        except ImportError as exc:
            signum = _interrupting_signal(exc)  # a signal inside a native module's initialisation
            if signum is None:
                raise
            code, line = 128 + signum, f"interrupted by {_signal_name(signum)}; temporary files were removed"
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            code, line = 128 + signum, f"interrupted by {_signal_name(signum)}; temporary files were removed"
        except OSError as exc:
            code, line = 1, _os_error_line(exc)
        except MemoryError:
            code, line = 1, "out of memory (the input needs more memory than this machine has)"
        finally:
            for s, handler in installed.items():
                signal.signal(s, handler)
            if line is not None:
                print(f"error: {' '.join(line.splitlines())}", file=sys.stderr)
                raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _interrupting_signal(exc: BaseException) -> int | None:
    """The signal behind `exc` when it was raised while handling one (its context chain holds it)."""
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, Interrupted):
            return seen.signum
        if isinstance(seen, KeyboardInterrupt):
            return int(signal.SIGINT)
        seen = seen.__cause__ or seen.__context__
    return None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread() and os.getpid() > 0
