"""Turn user-facing errors into one line on stderr and an exit code, never a traceback; end cleanly on signals.

- RwkvDeployError: its message, its exit code (2 unusable input, 1 a failed check).
- OSError (read-only folder, no permission, disk full) and MemoryError: one line naming the file, exit 1.
- SIGINT, SIGTERM and SIGHUP: raised as exceptions inside the command, so every `with`/`finally` that removes
  temporary files runs (staging folders of export, package, validate; the extracted copy of `generate
  ARCHIVE`), then one line and exit 128 + the signal number. Further signals during that cleanup are ignored;
  a signal whose exception a library swallowed still fails the command (rwkv_deploy.interrupts).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Callable, TypeVar

import typer

from rwkv_deploy import interrupts
from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.interrupts import Interrupted

F = TypeVar("F", bound=Callable)

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
        installed = interrupts.install() if _main_thread() else {}
        code, line = 0, None
        try:
            result = fn(*args, **kwargs)
            interrupts.raise_if_interrupted()  # its exception was swallowed on the way: still a failed run
            return result
        except RwkvDeployError as exc:
            code, line = exc.exit_code, str(exc)
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            code, line = 128 + signum, _interrupted_line(signum)
        except BrokenPipeError:  # the reader of our output went away (`... | head`): not an error of ours
            _quiet_stdout()
            code = 0
        except OSError as exc:
            code, line = 1, _os_error_line(exc)
        except MemoryError:
            code, line = 1, "out of memory (the input needs more memory than this machine has)"
        finally:
            signum = interrupts.pending_signal()  # whatever the signal's exception turned into on the way (an
            if signum is not None:                # ImportError inside a native module's initialisation, ...)
                code, line = 128 + signum, _interrupted_line(signum)
            interrupts.restore(installed)
            if line is not None:
                print(f"error: {printable(' '.join(line.splitlines()))}", file=sys.stderr)
                raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def printable(line: str) -> str:
    """The line with control characters (terminal escape sequences from a file name in a package, a NUL, a
    carriage return that would overwrite what came before) shown as escapes instead of sent to the terminal."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in line)


def _interrupted_line(signum: int) -> str:
    return f"interrupted by {_signal_name(signum)}; temporary files were removed"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread() and os.getpid() > 0
