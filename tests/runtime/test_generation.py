"""Generation: streaming equals the result, stop conditions, continuing a state, batching equals alone.

Most tests run a small random RWKV-7 package with the byte tokenizer; the streaming tests use a
scripted backend whose "model" spells out a fixed text, so multi-byte characters split over
tokens are certain to occur.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.tokenization import ByteTokenizer
from rwkv_deploy.runtime.generation import GenerationError, Generator, TextStream
from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
from rwkv_deploy.runtime.package import DeploymentPackage
from rwkv_deploy.runtime.state import RecurrentState
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

PROMPTS = ["a", "Hello there", "RWKV is"]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> DeploymentPackage:
    root = tmp_path_factory.mktemp("generation")
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=11), root / "r7.pth")
    export_package(root / "r7.pth", root / "out", ExportOptions())
    return DeploymentPackage.open(root / "out")


@pytest.fixture(scope="module")
def generator(package) -> Generator:
    return Generator(OnnxStepBackend(package), package.tokenizer)


class CountingBackend:
    """Passes steps through, remembering the batch size of every call."""

    def __init__(self, inner: OnnxStepBackend) -> None:
        self.inner, self.batch_sizes = inner, []
        self.vocab_size = inner.vocab_size

    def fresh_state(self, batch: int = 1) -> RecurrentState:
        return self.inner.fresh_state(batch)

    def step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        self.batch_sizes.append(len(tokens))
        return self.inner.step(tokens, state)


class ScriptedBackend:
    """A `StepBackend` that always predicts the next byte of `script`; its state is the position."""

    vocab_size = 256

    def __init__(self, script: str) -> None:
        self.script = script.encode()

    def fresh_state(self, batch: int = 1) -> RecurrentState:
        return RecurrentState(("position",), (np.zeros((batch, 1), np.float32),))

    def step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        position = state.values[0] + 1
        logits = np.zeros((len(tokens), 256), np.float32)
        for row, p in enumerate(position[:, 0].astype(int)):
            logits[row, self.script[(p - 1) % len(self.script)]] = 10.0  # the prompt is one token
        return logits, state.replace([position])


# -- streaming ---------------------------------------------------------------------------------------
def test_stream_waits_for_whole_utf8_characters():
    stream = TextStream()
    snowman = "☃".encode()  # three bytes
    assert [stream.push(snowman[:1]), stream.push(snowman[1:2]), stream.push(snowman[2:])] == ["", "", "☃"]
    assert stream.push(b"\xc3") == "" and stream.close() == "\ufffd"  # a cut character at the very end


def test_stream_holds_back_what_may_start_a_stop_string_and_never_emits_it():
    stream = TextStream(["END"])
    assert stream.push(b"abcE") == "abc"  # "E" may begin "END"
    assert stream.push(b"x") == "Ex"  # it did not
    assert stream.push(b"EN") == ""
    assert stream.push(b"Dxyz") == "" and stream.stopped
    assert stream.text == "abcEx"


def test_multibyte_text_streams_as_whole_characters():
    script = "Grüße, 世界! ✓ "
    pieces = []
    result = Generator(ScriptedBackend(script), ByteTokenizer()).generate(
        "x", max_tokens=len(script.encode()), temperature=0, on_token=pieces.append)
    assert result.text == script
    assert "".join(pieces) == script
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(pieces) < len(script.encode())  # multi-byte characters came out in one piece


def test_a_stop_string_split_over_tokens_is_cut_from_stream_and_result():
    pieces = []
    result = Generator(ScriptedBackend("one two three four"), ByteTokenizer()).generate(
        "x", max_tokens=50, temperature=0, stop_strings=["thr", "zzz"], on_token=pieces.append)
    assert result.text == "one two " == "".join(pieces)
    assert result.finish_reason == "stop"
    assert bytes(result.token_ids) == b"one two thr"  # the tokens that spelled the stop string were generated


# -- a real model --------------------------------------------------------------------------------------
def test_streamed_pieces_add_up_to_the_result(generator, package):
    pieces = []
    result = generator.generate("The ", max_tokens=40, seed=1, on_token=pieces.append)
    assert "".join(pieces) == result.text == package.tokenizer.decode(result.token_ids)
    assert len(result.token_ids) == 40 and result.finish_reason == "length"
    stats = result.stats
    assert (stats.prompt_tokens, stats.generated_tokens) == (4, 40)
    assert stats.prefill_tokens_per_s > 0 and stats.decode_tokens_per_s > 0


def test_a_stop_string_ends_generation_before_it(generator):
    full = generator.generate("Once", max_tokens=60, temperature=0)
    stop = full.text[10:12]
    pieces = []
    stopped = generator.generate("Once", max_tokens=60, temperature=0, stop_strings=[stop], on_token=pieces.append)
    assert stopped.text == full.text[: full.text.find(stop)] == "".join(pieces)
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)] and len(stopped.token_ids) < 60


def test_a_stop_token_ends_generation_without_being_added(generator):
    full = generator.generate("Once", max_tokens=30, temperature=0)
    stop = full.token_ids[5]
    stopped = generator.generate("Once", max_tokens=30, temperature=0, stop_tokens=[stop])
    assert stopped.token_ids == full.token_ids[: full.token_ids.index(stop)]
    assert stopped.finish_reason == "stop"


def test_the_final_state_has_read_the_prompt_and_every_generated_token(generator, package):
    encode = package.tokenizer.encode
    first = generator.generate("Hi", max_tokens=10, temperature=0)
    continued = generator.generate(" you", max_tokens=10, temperature=0, state=first.state)
    from_scratch = generator.generate(encode("Hi") + first.token_ids + encode(" you"), max_tokens=10, temperature=0)
    assert continued.token_ids == from_scratch.token_ids


def test_same_seed_same_text(generator):
    def run(seed):
        return generator.generate("abc", max_tokens=20, temperature=1.0, top_p=0.9, seed=seed).token_ids
    assert run(3) == run(3)
    assert run(3) != run(4)


# -- batching -------------------------------------------------------------------------------------------
def test_batched_greedy_generation_equals_each_prompt_alone(generator, package):
    alone = [generator.generate(p, max_tokens=24, temperature=0) for p in PROMPTS]
    stop = [alone[1].token_ids[6]]  # the second prompt finishes early, the others run on
    alone = [generator.generate(p, max_tokens=24, temperature=0, stop_tokens=stop) for p in PROMPTS]
    counting = CountingBackend(generator.backend)
    batched = Generator(counting, package.tokenizer).generate_batch(PROMPTS, max_tokens=24, temperature=0,
                                                                     stop_tokens=stop)
    assert len({len(r.token_ids) for r in batched}) > 1  # sequences really finished at different times
    for one, many in zip(alone, batched):
        assert (many.token_ids, many.text, many.finish_reason) == (one.token_ids, one.text, one.finish_reason)
        for a, b in zip(many.state.numpy().values, one.state.numpy().values):
            np.testing.assert_allclose(a, b, atol=1e-5)
    # one backend call per position for all sequences still reading their prompt, then one call
    # per generated token for all sequences still generating
    prompt_lengths = [len(package.tokenizer.encode(p)) for p in PROMPTS]
    generated = [len(r.token_ids) for r in batched]
    prefill_calls = [sum(n > i for n in prompt_lengths) for i in range(max(prompt_lengths))]
    decode_calls = [sum(n > i for n in generated) for i in range(max(generated))]
    assert counting.batch_sizes == prefill_calls + decode_calls


def test_batched_sampling_with_a_seed_equals_each_prompt_alone(generator):
    settings = dict(max_tokens=16, temperature=0.8, top_k=40, frequency_penalty=0.3, seed=9)
    alone = [generator.generate(p, **settings).token_ids for p in PROMPTS]
    batched = [r.token_ids for r in generator.generate_batch(PROMPTS, **settings)]
    assert batched == alone


def test_batched_streaming_tells_which_sequence_each_piece_belongs_to(generator):
    pieces = {0: [], 1: []}
    results = generator.generate_batch(["x", "yz"], max_tokens=12, seed=2,
                                       on_token=lambda i, piece: pieces[i].append(piece))
    assert ["".join(pieces[i]) for i in (0, 1)] == [r.text for r in results]


# -- refusals ---------------------------------------------------------------------------------------------
def test_requests_that_cannot_be_served_are_refused(generator, package):
    without_tokenizer = Generator(generator.backend)
    with pytest.raises(GenerationError, match="empty"):
        generator.generate("", max_tokens=5)
    with pytest.raises(GenerationError, match="no tokenizer"):
        without_tokenizer.generate("text", max_tokens=5)
    with pytest.raises(GenerationError, match="stop strings need a tokenizer"):
        without_tokenizer.generate([1, 2], max_tokens=5, stop_strings=["x"])


def test_zero_max_tokens_only_reads_the_prompt(generator):
    result = generator.generate("abc", max_tokens=0)
    _, state = generator.prefill(list(b"abc"))
    assert result.token_ids == [] and result.text == "" and result.finish_reason == "length"
    for a, b in zip(result.state.numpy().values, state.numpy().values):
        np.testing.assert_array_equal(a, b)


def test_a_backend_with_a_prefill_graph_is_a_prefill_backend_and_one_without_is_not(shared_package):
    from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend, PrefillBackend, can_prefill
    from tests.helpers.small_packages import shared

    with_graph = OnnxStepBackend(DeploymentPackage.open(shared(shared_package, "7")), threads=1)
    without = OnnxStepBackend(DeploymentPackage.open(shared(shared_package, "7", prefill=False)), threads=1)
    assert isinstance(with_graph, PrefillBackend) and can_prefill(with_graph)
    assert not can_prefill(without)  # the same class, but its package has no prefill graph

    class StepsOnly:
        vocab_size = 3

        def fresh_state(self, batch=1): ...

        def step(self, tokens, state): ...

    assert not can_prefill(StepsOnly())
