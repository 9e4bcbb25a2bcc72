"""The scheduler without HTTP, on a real ONNX Runtime backend: a long prompt is prefilled chunk by chunk between
the decode steps of the streams in flight, and `max_tokens: 0` returns the state after the prompt."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend
from rwkv_deploy.runtime.sampling import SamplingParams
from rwkv_deploy.serve.metrics import Metrics
from rwkv_deploy.serve.prefix_cache import PrefixCache
from rwkv_deploy.serve.scheduler import Finished, Job, Scheduler, Token
from tests.serve.conftest import oracle

GREEDY = SamplingParams(temperature=0)
WAIT_S = 60


@pytest.fixture
def scheduler(serve_pkg):
    package = DeploymentPackage.open(serve_pkg)
    running = Scheduler("tiny", OnnxStepBackend(package, threads=1), package.tokenizer, Metrics(),
                        PrefixCache(0, 8), max_batch=4, max_queue=4, prefill_chunk=8)
    running.start()
    yield running
    running.stop()


class Recorder:
    """Events of several jobs in the order the scheduler thread emitted them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.changed = threading.Condition()

    def job(self, name: str, prompt: list[int], max_tokens: int, **extra) -> Job:
        def emit(event: object) -> None:
            with self.changed:
                self.events.append((name, event))
                self.changed.notify_all()

        return Job(prompt, GREEDY, max_tokens, emit, **extra)

    def wait(self, condition) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self.events), WAIT_S), self.events[-5:]


def test_a_long_prompt_does_not_stall_the_streams_in_flight(scheduler):
    recorder = Recorder()
    streaming = recorder.job("a", [65, 66, 67], 10_000)
    scheduler.submit(streaming)
    recorder.wait(lambda events: len(events) >= 3)
    long_prompt = recorder.job("b", list(range(1, 81)), 2)  # 80 tokens: 10 prefill chunks of 8
    submitted = len(recorder.events)
    scheduler.submit(long_prompt)
    recorder.wait(lambda events: any(n == "b" and isinstance(e, Finished) for n, e in events))
    streaming.cancelled = True
    scheduler.wake()
    first_b = next(i for i, (n, e) in enumerate(recorder.events) if n == "b" and isinstance(e, Token))
    during_prefill = sum(1 for n, e in recorder.events[submitted:first_b] if n == "a" and isinstance(e, Token))
    assert during_prefill >= 9  # one decode step of "a" per prefill chunk of "b", not one for the whole prompt


def test_zero_max_tokens_gives_the_state_after_the_prompt(scheduler, serve_pkg):
    recorder = Recorder()
    scheduler.submit(recorder.job("a", list(range(1, 20)), 0, want_state=True))
    recorder.wait(lambda events: events and isinstance(events[-1][1], Finished))
    done = recorder.events[-1][1]
    assert done.finish_reason == "length" and done.token_ids == [] and done.prompt_tokens == 19
    _, want = oracle(serve_pkg, prefill_chunk=8).prefill(list(range(1, 20)))
    for got, expected in zip(done.state.values, want.values):
        np.testing.assert_array_equal(got, expected)


def test_prefilling_requests_take_turns(scheduler):
    recorder = Recorder()
    scheduler.submit(recorder.job("long", list(range(1, 201)), 1))  # 25 chunks
    scheduler.submit(recorder.job("short", [70, 71, 72], 1))  # one chunk
    recorder.wait(lambda events: sum(isinstance(e, Finished) for _, e in events) == 2)
    finished = [name for name, e in recorder.events if isinstance(e, Finished)]
    assert finished == ["short", "long"]
