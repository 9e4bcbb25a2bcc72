"""Repositories written by `package --triton`, served by a real Triton Inference Server (tritonserver 2.51.0
with the ONNX Runtime backend, started once per session by scripts/triton_server.sh; tests/conftest.py).

Every answer is compared bit for bit (fp32) with what the project's Python runtime (`rwkv_deploy.runtime`,
ONNX Runtime at batch 1) computes from the same package and tokens.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend, stream_logits

pytestmark = pytest.mark.slow  # a real Triton server and exported packages

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

KINDS = ["4", "5.0", "5.1", "5.2", "6", "7", "6-tuned", "7-external"]
VOCAB = 256


@lru_cache(maxsize=None)
def _backend(package: Path) -> OnnxStepBackend:
    return OnnxStepBackend(DeploymentPackage.open(package), threads=1)


def runtime_logits(package: Path, tokens: list[int]) -> np.ndarray:
    """[len(tokens), vocab] logits of the Python runtime, from the package's initial state."""
    return stream_logits(_backend(package), tokens)


def request(client, model: str, token: int, sequence_id: int, start: bool = False, end: bool = False,
            shape: tuple[int, ...] = (1, 1), datatype: str = "INT64") -> np.ndarray:
    """One step over gRPC as a client streams it; logits [vocab]."""
    token_input = grpcclient.InferInput("token", list(shape), datatype)
    token_input.set_data_from_numpy(np.full(shape, token, dtype={"INT64": np.int64, "INT32": np.int32}[datatype]))
    result = client.infer(model, [token_input], outputs=[grpcclient.InferRequestedOutput("logits")],
                          sequence_id=sequence_id, sequence_start=start, sequence_end=end, client_timeout=60)
    return result.as_numpy("logits")[0]


def stream(client, model: str, tokens: list[int], sequence_id: int, end: bool = True) -> np.ndarray:
    return np.stack([request(client, model, t, sequence_id, start=i == 0, end=end and i == len(tokens) - 1)
                     for i, t in enumerate(tokens)])


def tokens_of(seed: int, length: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, VOCAB, length)]


@pytest.fixture(scope="module")
def v7(triton_server, small_packages) -> tuple[str, Path]:
    """The small RWKV-7 package served with the default options: (model name, package)."""
    return triton_server.serve(small_packages["7"], "v7"), small_packages["7"]


# -- every kind of package loads and answers like the Python runtime ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_package_loads_ready_and_answers_like_the_python_runtime(triton_server, small_packages,
                                                                               kind: str) -> None:
    package = small_packages[kind]
    name = triton_server.serve(package, f"kind-{kind}")
    client = triton_server.client()
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name, as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("token", "INT64", ["-1", "1"])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("logits", "FP32", ["-1", "256"])]
    tokens = tokens_of(1, 6)  # from the initial state: v4's att_pp = -1e30 and the tuned state are files
    (sequence_id,) = triton_server.sequence_ids()
    np.testing.assert_array_equal(stream(client, name, tokens, sequence_id), runtime_logits(package, tokens))


# -- concurrency, interleaving, reused ids ------------------------------------------------------------------------


def test_concurrent_sequences_are_each_bit_identical_to_the_python_runtime(triton_server, v7) -> None:
    """10 sequences at once over gRPC (Triton batches their steps together), of different lengths."""
    name, package = v7
    count = 10
    ids = triton_server.sequence_ids(count)
    token_lists = [tokens_of(100 + k, 24 + 3 * k) for k in range(count)]
    got: dict[int, np.ndarray] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(k: int) -> None:
        try:
            client = triton_server.client()
            barrier.wait()
            got[k] = stream(client, name, token_lists[k], ids[k])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    stats_before = triton_server.client().get_inference_statistics(name, as_json=True)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    for k in range(count):
        np.testing.assert_array_equal(got[k], runtime_logits(package, token_lists[k]), err_msg=f"sequence {k}")
    stats_after = triton_server.client().get_inference_statistics(name, as_json=True)
    requests = sum(len(t) for t in token_lists)
    executions = int(stats_after["model_stats"][0].get("execution_count", 0)) - \
        int(stats_before["model_stats"][0].get("execution_count", 0))
    assert executions < requests  # steps of different sequences did run batched together


def test_interleaved_sequences_keep_their_own_state(triton_server, v7) -> None:
    """Three sequences from one client, one request each in turn, starting at different steps."""
    name, package = v7
    client = triton_server.client()
    ids = triton_server.sequence_ids(3)
    token_lists = [tokens_of(200 + k, 12) for k in range(3)]
    offsets = [0, 2, 5]
    got: list[list[np.ndarray]] = [[], [], []]
    for step in range(12 + max(offsets)):
        for k in range(3):
            i = step - offsets[k]
            if 0 <= i < 12:
                got[k].append(request(client, name, token_lists[k][i], ids[k], start=i == 0, end=i == 11))
    for k in range(3):
        np.testing.assert_array_equal(np.stack(got[k]), runtime_logits(package, token_lists[k]))


def test_a_reused_sequence_id_starts_from_a_fresh_state(triton_server, v7) -> None:
    name, package = v7
    client = triton_server.client()
    (sequence_id,) = triton_server.sequence_ids()
    first, second, third = tokens_of(300, 8), tokens_of(301, 8), tokens_of(302, 8)
    stream(client, name, first, sequence_id)  # ended
    np.testing.assert_array_equal(stream(client, name, second, sequence_id), runtime_logits(package, second))
    stream(client, name, first, sequence_id, end=False)  # still live: START again restarts it
    np.testing.assert_array_equal(stream(client, name, third, sequence_id), runtime_logits(package, third))


# -- a client that dies mid-sequence ------------------------------------------------------------------------------

KILLED_CLIENT = """
import sys
import numpy as np
import tritonclient.grpc as grpcclient
url, model, sequence_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = grpcclient.InferenceServerClient(url)
token = grpcclient.InferInput("token", [1, 1], "INT64")
step = 0
while True:  # streams until it is killed; never sends END
    token.set_data_from_numpy(np.array([[step % 256]], np.int64))
    client.infer(model, [token], sequence_id=sequence_id, sequence_start=step == 0)
    step += 1
    print(step, flush=True)
"""


IDLE_S = 2.0  # the one-slot model's sequence idle timeout


def test_a_killed_clients_sequence_is_reaped_and_its_slot_comes_back_fresh(triton_server, small_packages) -> None:
    """One model instance with room for one live sequence and a 2 s idle timeout: a client killed (SIGKILL)
    mid-sequence leaves its sequence behind; Triton drops it after the idle timeout, the server stays live,
    and the next sequence, which can only run in that one slot, starts from a fresh state. (At 0.5 s the fresh
    sequence itself idled out between two of its requests once, with the whole suite loading 2 cores.)"""
    package = small_packages["7"]
    name = triton_server.serve(package, "one-slot", batching=_batching(max_sequences=1,
                                                                       sequence_idle_us=int(IDLE_S * 1e6)))
    killed, fresh = triton_server.sequence_ids(2)
    client_process = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, triton_server.url, name, str(killed)],
                                      stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(5):  # it is mid-sequence
            assert client_process.stdout.readline(), "the client died before streaming"
    finally:
        client_process.send_signal(signal.SIGKILL)
        client_process.wait()
    client = triton_server.client()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    tokens = tokens_of(400, 10)
    # Start it once the killed sequence has idled out. Started at once, it waited in Triton's backlog for the
    # slot, and a sequence that waited there about as long as the idle timeout was itself dropped after its
    # first answer now and then. That happened in 3 of 4 runs of this file on a quiet machine on 2026-12-06,
    # and on older commits too.
    time.sleep(2 * IDLE_S)
    np.testing.assert_array_equal(stream(client, name, tokens, fresh), runtime_logits(package, tokens))
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        request(client, name, 1, killed)  # its state is gone


# -- bad requests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, status, message", [
    ({"start": False}, "INVALID_ARGUMENT", "must specify the START flag on the first request"),
    ({"token": 256}, "INTERNAL", "indices element out of data bounds, idx=256"),
    ({"token": -1}, "INTERNAL", "indices element out of data bounds, idx=-257"),  # not the last token's row
    ({"token": -256}, "INTERNAL", "indices element out of data bounds, idx=-512"),
    ({"shape": (1, 2)}, "INVALID_ARGUMENT", "unexpected shape for input 'token'"),
    ({"shape": (1,)}, "INVALID_ARGUMENT", "unexpected shape for input 'token'"),
    ({"shape": (2, 1)}, "INVALID_ARGUMENT", "must specify batch-size 1 due to requirements of sequence batcher"),
    ({"datatype": "INT32"}, "INVALID_ARGUMENT", "data-type is 'INT32', but model 'v7' expects 'INT64'"),
    ({"sequence_id": 0}, "INVALID_ARGUMENT", "must specify a non-zero or non-empty correlation ID"),
])
def test_a_bad_request_gets_tritons_error_and_the_server_keeps_serving(triton_server, v7, bad: dict, status: str,
                                                                       message: str) -> None:
    name, package = v7
    client = triton_server.client()
    good, bad_id = triton_server.sequence_ids(2)
    tokens = tokens_of(500, 8)
    got = [request(client, name, t, good, start=i == 0) for i, t in enumerate(tokens[:4])]
    args = {"token": 7, "sequence_id": bad_id, "start": True} | bad
    with pytest.raises(InferenceServerException) as refused:
        request(client, name, args.pop("token"), args.pop("sequence_id"), **args)
    assert refused.value.status() == f"StatusCode.{status}"
    assert message in refused.value.message()
    assert client.is_server_live() and client.is_model_ready(name)
    if args.get("start") and status == "INTERNAL":
        # refused by ONNX Runtime, after Triton had opened the sequence: it is live, from its initial state
        np.testing.assert_array_equal(request(client, name, 7, bad_id, end=True), runtime_logits(package, [7])[0])
    elif bad.get("sequence_id") != 0:  # refused before the sequence was opened
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            request(client, name, 7, bad_id, end=True)
    got += [request(client, name, t, good, end=i == 3) for i, t in enumerate(tokens[4:])]
    np.testing.assert_array_equal(np.stack(got), runtime_logits(package, tokens))  # the other sequence: untouched


def test_a_refused_token_mid_sequence_leaves_that_sequences_state_as_it_was(triton_server, v7) -> None:
    name, package = v7
    client = triton_server.client()
    (sequence_id,) = triton_server.sequence_ids()
    tokens = tokens_of(600, 8)
    got = [request(client, name, t, sequence_id, start=i == 0) for i, t in enumerate(tokens[:4])]
    with pytest.raises(InferenceServerException, match="out of data bounds"):
        request(client, name, 999, sequence_id)
    got += [request(client, name, t, sequence_id, end=i == 3) for i, t in enumerate(tokens[4:])]
    np.testing.assert_array_equal(np.stack(got), runtime_logits(package, tokens))


def test_a_bad_token_fails_the_requests_batched_with_it_and_their_state_stays(triton_server, small_packages) -> None:
    """Triton runs a batch as one ONNX Runtime call, so a token out of range fails every request of its batch,
    other sequences' too. Their states do not advance, so the same request can be sent again; but a failed
    request that carried END has ended its sequence all the same. The model below always batches two
    sequences together (preferred batch 2, a long queue delay), so this is deterministic."""
    package = small_packages["7"]
    name = triton_server.serve(package, "pairs", batching=_batching(max_batch_size=2, preferred_batch_sizes=(2,),
                                                                      max_queue_delay_us=30_000_000))
    a, b = triton_server.sequence_ids(2)
    tokens_a, tokens_b = tokens_of(700, 4), tokens_of(701, 4)

    def pair(token_a: int, token_b: int, start: bool = False, end: bool = False) -> list:
        out: list = [None, None]

        def one(slot: int, token: int, sequence_id: int) -> None:
            try:
                out[slot] = request(triton_server.client(), name, token, sequence_id, start=start, end=end)
            except InferenceServerException as exc:
                out[slot] = exc

        threads = [threading.Thread(target=one, args=(0, token_a, a)), threading.Thread(target=one, args=(1, token_b, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    got_a = [pair(tokens_a[0], tokens_b[0], start=True)[0]]
    failed = pair(tokens_a[1], VOCAB)  # b sends a token out of range
    assert all(isinstance(r, InferenceServerException) and "out of data bounds" in r.message() for r in failed)
    got_a += [pair(tokens_a[i], tokens_b[i])[0] for i in (1, 2)]  # a sends its token again
    np.testing.assert_array_equal(np.stack(got_a), runtime_logits(package, tokens_a[:3]))
    ended = pair(tokens_a[3], VOCAB, end=True)
    assert all(isinstance(r, InferenceServerException) for r in ended)
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        request(triton_server.client(), name, tokens_a[3], a)  # the failed END ended it


def _batching(**options):
    from rwkv_deploy.targets.triton import BatchingOptions

    return BatchingOptions(**options)
