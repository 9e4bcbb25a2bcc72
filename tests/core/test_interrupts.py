"""A termination signal stops a run even when its exception is swallowed on the way, and a critical section holds
signals back until it ends (rwkv_deploy.interrupts, used by staging and the CLI)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from rwkv_deploy import interrupts
from rwkv_deploy.interrupts import Interrupted
from rwkv_deploy.staging import staged_directory


@pytest.fixture
def handlers():
    previous = interrupts.install()
    yield
    interrupts.restore(previous)


def _swallowed_sigterm() -> None:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises here ...
    except BaseException:  # noqa: BLE001 - ... and a careless library swallows it
        pass


def test_a_swallowed_signal_still_stops_publication_and_removes_the_staging_folder(tmp_path, handlers):
    with pytest.raises(Interrupted) as raised:
        with staged_directory(tmp_path / "out") as staging:
            (staging / "half.onnx").write_bytes(b"x")
            _swallowed_sigterm()
            (staging / "rest.onnx").write_bytes(b"y")  # the run went on as if nothing happened
    assert raised.value.signum == signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def _sigterm_from_a_thread_that_accepts_it() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a new thread inherits the blocked mask
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_another_thread_receives_inside_a_deferred_section_is_raised_when_it_ends(handlers):
    reached_the_end = False
    with pytest.raises(Interrupted):
        with interrupts.deferred():
            sender = threading.Thread(target=_sigterm_from_a_thread_that_accepts_it)
            sender.start()  # blocked in this thread, so the kernel hands it to the sender's thread
            sender.join()
            time.sleep(0.05)  # the Python handler runs in this thread meanwhile, and only notes it
            reached_the_end = True
    assert reached_the_end


def test_restore_forgets_the_signal_so_a_later_run_in_the_process_is_not_interrupted(tmp_path):
    previous = interrupts.install()
    _swallowed_sigterm()
    assert interrupts.pending_signal() == signal.SIGTERM
    interrupts.restore(previous)
    with staged_directory(tmp_path / "out") as staging:
        (staging / "a").write_bytes(b"a")
    assert (tmp_path / "out" / "a").is_file()
