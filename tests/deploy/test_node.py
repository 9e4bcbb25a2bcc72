"""deploy/node: onnxruntime-node generation equals the Python runtime (tokens and logits), tokenizers give the
Python tokenizers' ids, state init (fill values and init_file) is honoured, bad input is one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_deploy.tokenization.world import WORLD_VOCAB_FILE, WorldTokenizer, read_world_vocab
from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend
from rwkv_deploy.runtime.sampling import softmax, top_k_mask, top_p_mask
from tests.deploy.jsutil import CLI, NODE_DIR, node_greedy, python_greedy, run_node
from tests.helpers.hostile_node import copy_package, edit_manifest, relist  # noqa: F401 (used by the tests below)

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

LOGIT_TOLERANCE = 1e-4

TRICKY_TEXTS = [
    "Hello, world!",
    "",
    " ",
    "\n",
    "\n\n\n",
    "\r\n\tindented\r\n",
    "def f(x):\n    return x ** 2  # comment\n",
    "日本語のテキストと中文混合，还有한국어.",
    "Ünïcödé ÀÉÎÕÜ ß ø å æ œ ŀ ı İ",
    "emoji 🎉🚀👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣",
    "zero\u200bwidth\u200d joiner \ufeff bom",
    "combining e\u0301 a\u0308 vs é ä",
    "math ∀x∈ℝ: x² ≥ 0 → √x",
    "\x00\x01\x7f control \x1b[31mred\x1b[0m",
    "quotes ' \" ` '' \"\" \\ backslash \\\\n",
    "URL https://example.com/a?b=c&d=e#f and e-mail a.b@c.de",
    "                                                                                                    spaces",
    "----------------------------------------------------------------------------------------------------",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 astral 𠀀𠀁 \U0010ffff",
    "<|endoftext|> is just text here",
]


def long_text() -> str:
    parts = []
    for i in range(400):
        parts.append(f"Paragraph {i}: The quick brown fox jumps over the lazy dog. 快速的棕色狐狸 {i * i} 🦊\n")
        parts.append("    " * (i % 5) + f"value_{i} = compute({i}, '{chr(0x3b1 + i % 20)}')\n")
    return "".join(parts)


# -- generation equals the Python runtime -----------------------------------------------------------------

def assert_same_run(js: dict, ref, label: str) -> float:
    assert js["prompt_ids"] == ref.prompt_ids, f"{label}: prompt tokenized differently"
    assert js["token_ids"] == ref.token_ids, f"{label}: greedy tokens differ from the Python runtime's"
    logits = np.array(js["logits"], dtype=np.float32)
    assert logits.shape == ref.logits.shape, f"{label}: {logits.shape} steps of logits vs Python's {ref.logits.shape}"
    diff = float(np.max(np.abs(logits - ref.logits)))
    assert diff <= LOGIT_TOLERANCE, f"{label}: logits differ from Python's by up to {diff:.3g}"
    print(f"\n{label}: {len(js['token_ids'])} identical greedy tokens, {logits.shape[0]} steps, max |logit diff| {diff:.3g}")
    return diff


def test_bundled_model_64_greedy_tokens_and_logits_equal_the_python_runtime(node, bundled_pkg, tmp_path):
    prompt = "class Stack:\n    def "
    ref = python_greedy(bundled_pkg, prompt, 64)
    js = node_greedy(node, bundled_pkg, prompt, 64, tmp_path / "dump.json")
    assert len(ref.token_ids) == 64
    assert_same_run(js, ref, "bundled fp32")
    assert js["stdout"] == ref.text + "\n"  # streamed text equals the Python runtime's text


def test_v4_fill_init_is_honoured(node, v4_pkg, tmp_path):
    manifest = json.loads((v4_pkg / "manifest.json").read_text())
    assert {e["init"] for e in manifest["state"]} == {0.0, -1e30}
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ref = python_greedy(v4_pkg, prompt, 24)
    assert_same_run(node_greedy(node, v4_pkg, prompt, 24, tmp_path / "dump.json"), ref, "v4 (init -1e30)")
    # v4's first steps hardly depend on att_pp (a normalizer), so check the fresh state itself
    assert_fresh_state_equals_python(node, v4_pkg)


def test_state_tuned_init_file_is_honoured(node, tuned_pkg, tmp_path):
    manifest = json.loads((tuned_pkg / "manifest.json").read_text())
    assert any(e["init_file"] == "initial_state.npz" for e in manifest["state"])
    prompt = [10, 20, 30, 40]
    ref = python_greedy(tuned_pkg, prompt, 24)
    assert_same_run(node_greedy(node, tuned_pkg, prompt, 24, tmp_path / "dump.json"), ref, "v6 state-tuned (init_file)")
    assert_init_matters(tuned_pkg, prompt[0], ref.logits[0])
    assert_fresh_state_equals_python(node, tuned_pkg)


FRESH_STATE_SCRIPT = """
import { loadPackage } from "./deploy/node/src/node.js";
const pkg = await loadPackage(process.argv[1], { threads: 1 });
const state = pkg.backend.freshState(2);
console.log(JSON.stringify(state.tensors.map((t) => ({ dims: t.dims, data: Array.from(t.data) }))));
"""


def assert_fresh_state_equals_python(node, package_dir: Path) -> None:
    """The state Node starts a batch of 2 from equals the Python runtime's, tensor by tensor."""
    out = run_node(node, "--input-type=module", "-e", FRESH_STATE_SCRIPT, package_dir)
    assert out.returncode == 0, out.stderr
    tensors = json.loads(out.stdout)
    expected = DeploymentPackage.open(package_dir).fresh_state(2).values
    assert len(tensors) == len(expected)
    for got, want in zip(tensors, expected):
        assert got["dims"] == list(want.shape)
        np.testing.assert_array_equal(np.array(got["data"], np.float32).reshape(want.shape), want)


def assert_init_matters(package_dir: Path, token: int, logits: np.ndarray) -> None:
    """An all-zero start gives clearly different logits, so a runtime that ignored the init could not pass."""
    backend = OnnxStepBackend(DeploymentPackage.open(package_dir), providers=["CPUExecutionProvider"], threads=1)
    fresh = backend.fresh_state(1)
    zero = fresh.replace([np.zeros_like(v) for v in fresh.values])
    zero_logits, _ = backend.step(np.array([token], np.int64), zero)
    assert np.max(np.abs(zero_logits[0] - logits)) > 100 * LOGIT_TOLERANCE


def test_graph_with_external_data(node, external_pkg, tmp_path):
    manifest = json.loads((external_pkg / "manifest.json").read_text())
    data_file = manifest["graphs"]["step"]["external_data"]
    assert data_file and (external_pkg / data_file).stat().st_size > 100_000
    ref = python_greedy(external_pkg, "abc", 32)
    assert_same_run(node_greedy(node, external_pkg, "abc", 32, tmp_path / "dump.json"), ref, "v7 external data")


def test_world_tokenizer_package(node, world_pkg):
    """Text in and out through the package's own World vocab file (tokens only: 65536-wide logits make big dumps)."""
    assert json.loads((world_pkg / "manifest.json").read_text())["tokenizer"]["kind"] == "world"
    prompt = "Hello 世界 🎉 café\n"
    ref = python_greedy(world_pkg, prompt, 24)
    out = run_node(node, CLI, world_pkg, "--prompt", prompt, "--max-tokens", "24", "--greedy", "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert js["promptIds"] == ref.prompt_ids and js["tokenIds"] == ref.token_ids and js["text"] == ref.text
    assert max(ref.token_ids) > 255  # really World ids, not bytes


def test_unknown_graphs_in_the_manifest_are_ignored(node, bundled_pkg, tmp_path):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    graph = json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]["path"]
    shutil.copy(pkg / graph, pkg / "prefill.onnx")  # a graph the JS runtime does not use, listed like any file
    edit_manifest(pkg, lambda m: (m["graphs"].update(prefill={"path": "prefill.onnx", "precision": "fp32", "opset": 18,
                                                              "external_data": None}),
                                  m["files"].update({"prefill.onnx": m["files"][graph]})))
    ref = python_greedy(bundled_pkg, "import ", 16)
    assert_same_run(node_greedy(node, pkg, "import ", 16, tmp_path / "dump.json"), ref, "manifest with a prefill graph")


def _with_derived_artifacts(pkg: Path) -> None:
    """Add a CPU graph and a TensorRT engine section as `build-cpu` and `build-engine` write them (the files'
    contents do not matter to a runtime that does not use them; they are listed with their sha256)."""
    manifest = json.loads((pkg / "manifest.json").read_text())
    graph = manifest["graphs"]["step"]["path"]
    (pkg / "cpu").mkdir()
    (pkg / "engines").mkdir()
    shutil.copy(pkg / graph, pkg / "cpu" / "step.onnx")
    for name, data in (("cpu/step.onnx.data", b"w" * 64), ("engines/step.plan", b"plan"), ("engines/step.json", b"{}")):
        (pkg / name).write_bytes(data)
    edit_manifest(pkg, lambda m: m.update(
        cpu_graphs={"step": {"path": "cpu/step.onnx", "external_data": "step.onnx.data", "ops": "ai.rwkv_deploy.cpu",
                             "ops_version": 1, "source": graph, "source_sha256": m["files"][graph]}},
        engines={"step": {"plan": "engines/step.plan", "info": "engines/step.json", "library": "tensorrt_rtx",
                          "version": "1.3.0.35", "targets": ["8.6", ">12.0"]}}))
    relist(pkg, "cpu/step.onnx", "cpu/step.onnx.data", "engines/step.plan", "engines/step.json")


def test_a_package_with_a_cpu_graph_and_engines_runs_on_its_portable_graph(node, bundled_pkg, tmp_path):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    _with_derived_artifacts(pkg)
    DeploymentPackage.open(pkg)  # the Python reader takes the same manifest
    ref = python_greedy(bundled_pkg, "import ", 16)
    assert_same_run(node_greedy(node, pkg, "import ", 16, tmp_path / "dump.json"), ref, "manifest with derived graphs")


@pytest.mark.parametrize("change, expect", [
    (lambda m: m["cpu_graphs"]["step"].update(path="../step.onnx"), "cpu_graphs.step.path"),
    (lambda m: m["cpu_graphs"]["step"].update(external_data="../../etc/passwd"), "cpu_graphs.step.external_data"),
    (lambda m: m["cpu_graphs"]["step"].update(extra=1), "has an unknown field"),
    (lambda m: m["files"].pop("cpu/step.onnx.data"), "is not listed in files"),
    (lambda m: m["engines"].update(other=m["engines"]["step"]), "which is not in graphs"),
], ids=["dotdot-cpu-graph", "dotdot-cpu-data", "unknown-field", "unlisted-cpu-data", "engine-of-no-graph"])
def test_derived_artifacts_are_held_to_the_trust_rules(node, bundled_pkg, tmp_path, change, expect):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    _with_derived_artifacts(pkg)
    edit_manifest(pkg, change)
    assert_refused(node, pkg, pkg / "manifest.json", expect=expect)


# -- sampling ---------------------------------------------------------------------------------------------

def cli_tokens(node, pkg: Path, *args: str) -> list[int]:
    out = run_node(node, CLI, pkg, "--prompt", "class ", "--max-tokens", "48", "--threads", "1", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["tokenIds"]


def test_sampling_is_seeded_and_top_k_1_is_greedy(node, bundled_pkg):
    greedy = cli_tokens(node, bundled_pkg, "--greedy")
    first = cli_tokens(node, bundled_pkg, "--temperature", "1.5", "--top-p", "0.95", "--seed", "7")
    assert cli_tokens(node, bundled_pkg, "--temperature", "1.5", "--top-p", "0.95", "--seed", "7") == first
    assert first != greedy  # hot sampling strays from the argmax path within 48 tokens
    assert cli_tokens(node, bundled_pkg, "--temperature", "1.5", "--top-p", "0.95", "--seed", "8") != first
    assert cli_tokens(node, bundled_pkg, "--temperature", "2", "--top-k", "1", "--seed", "3") == greedy


SAMPLER_SCRIPT = """
import { Rng, sampleToken, samplingParams } from "./deploy/node/src/sampling.js";
const { logits, options, draws } = JSON.parse(process.argv[1]);
const rng = new Rng(12345);
const params = samplingParams(options);
const counts = new Array(logits.length).fill(0);
for (let i = 0; i < draws; i++) counts[sampleToken(Float32Array.from(logits), params, rng)]++;
console.log(JSON.stringify(counts));
"""


@pytest.mark.parametrize("options", [
    {"temperature": 1.0},
    {"temperature": 0.7, "topP": 0.8},
    {"temperature": 1.3, "topK": 4},
    {"temperature": 0.9, "topK": 6, "topP": 0.6},
])
def test_sampler_draws_follow_the_python_sampling_distribution(node, options):
    logits = np.array([2.0, 1.5, 1.5, 0.3, -0.2, 0.9, -1.0, 2.4, 0.0, -3.0], np.float32)
    draws = 40_000
    out = run_node(node, "--input-type=module", "-e", SAMPLER_SCRIPT,
                   json.dumps({"logits": logits.tolist(), "options": options, "draws": draws}))
    assert out.returncode == 0, out.stderr
    freq = np.array(json.loads(out.stdout)) / draws
    # expected distribution, computed with runtime/sampling.py's own steps
    keep = top_k_mask(logits, options.get("topK", 0))
    probs = softmax(np.where(keep, logits / options["temperature"], -np.inf))
    probs = np.where(top_p_mask(probs, options.get("topP", 1.0)), probs, 0.0)
    probs /= probs.sum()
    assert np.all(freq[probs == 0] == 0), "a token outside top-k/top-p was drawn"
    sigma = np.sqrt(probs * (1 - probs) / draws)
    assert np.all(np.abs(freq - probs) <= 5 * sigma + 1e-9), f"frequencies {freq.round(4)} vs {probs.round(4)}"


# -- tokenizers -------------------------------------------------------------------------------------------

def js_tokenize(node, request: dict) -> dict:
    out = run_node(node, NODE_DIR / "tools" / "tokenize.js", stdin=json.dumps(request))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return WorldTokenizer()


def test_world_tokenizer_ids_equal_python_and_round_trip(node, world):
    texts = TRICKY_TEXTS + [long_text()]
    broken = [world.encode_bytes("你".encode()[:2]), [0], [0, 33155, 0], world.encode_bytes(b"\xff\xfe ok \xe2\x82")]
    reply = js_tokenize(node, {"kind": "world", "vocab": str(WORLD_VOCAB_FILE), "texts": texts, "decode": broken})
    for text, ids in zip(texts, reply["ids"]):
        assert ids == world.encode(text), f"ids differ for {text[:40]!r}"
    assert len(reply["ids"][-1]) > 10_000  # the long text really is long
    assert reply["roundtrip"] == texts
    assert reply["decoded"] == [world.decode(ids) for ids in broken]  # U+FFFD and end-of-document like Python


def test_world_vocab_file_is_parsed_like_python(node):
    reply = js_tokenize(node, {"kind": "world", "vocab": str(WORLD_VOCAB_FILE), "dump_vocab": True})
    expected = {0: b"", **read_world_vocab(WORLD_VOCAB_FILE)}
    assert {int(k): bytes.fromhex(v) for k, v in reply["vocab"].items()} == expected


def test_bytes_tokenizer(node):
    texts = TRICKY_TEXTS + [long_text()]
    reply = js_tokenize(node, {"kind": "bytes", "texts": texts, "decode": [[0xE4, 0xBD], [104, 105]]})
    assert reply["ids"] == [list(t.encode()) for t in texts]
    assert reply["roundtrip"] == texts
    assert reply["decoded"] == ["\ufffd", "hi"]


NPZ_SCRIPT = """
import { readFileSync } from "node:fs";
import { readNpz } from "./deploy/node/src/npz.js";
const arrays = await readNpz(new Uint8Array(readFileSync(process.argv[1])));
console.log(JSON.stringify(Object.fromEntries(Object.entries(arrays).map(([k, a]) => [k, {shape: a.shape, data: Array.from(a.data)}]))));
"""


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_reader(node, tmp_path, compressed):
    rng = np.random.default_rng(0)
    arrays = {"layer0.wkv": rng.standard_normal((4, 16, 16)).astype(np.float32),
              "layer1.wkv": rng.standard_normal((2, 3)).astype(np.float64), "scalar": np.float32(-1e30)}
    (np.savez_compressed if compressed else np.savez)(tmp_path / "a.npz", **arrays)
    out = run_node(node, "--input-type=module", "-e", NPZ_SCRIPT, tmp_path / "a.npz")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert set(got) == set(arrays)
    for name, array in arrays.items():
        assert got[name]["shape"] == list(np.shape(array))
        np.testing.assert_array_equal(np.array(got[name]["data"], np.float32), np.ravel(array).astype(np.float32))


# -- bad input: one line naming the file, exit code 2 ---------------------------------------------------







def assert_refused(node, pkg: Path, names: Path | str, *args: str, expect: str = "") -> str:
    out = run_node(node, CLI, pkg, *(args or ("--prompt", "x")), "--max-tokens", "2")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1, out.stderr
    assert str(names) in lines[0] and expect in lines[0], lines[0]
    return lines[0]


def test_missing_directory_and_missing_manifest(node, tmp_path):
    assert_refused(node, tmp_path / "nowhere", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert_refused(node, tmp_path / "empty", tmp_path / "empty" / "manifest.json", expect="no manifest.json")


def test_wrong_format_version(node, bundled_pkg, tmp_path):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    edit_manifest(pkg, lambda m: m.update(format_version=2))
    assert_refused(node, pkg, pkg / "manifest.json", expect="format_version 2 is not supported")
    (pkg / "manifest.json").write_text("{not json")
    assert_refused(node, pkg, pkg / "manifest.json", expect="not valid JSON")


def test_missing_graph_file(node, bundled_pkg, tmp_path):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    graph = json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]["path"]
    (pkg / graph).unlink()
    assert_refused(node, pkg, pkg / graph, expect="missing")


def test_missing_external_data_and_init_file(node, external_pkg, tuned_pkg, tmp_path):
    pkg = copy_package(external_pkg, tmp_path / "ext")
    data_file = json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]["external_data"]
    (pkg / data_file).unlink()
    assert_refused(node, pkg, pkg / data_file, expect="missing")
    pkg = copy_package(tuned_pkg, tmp_path / "tuned")
    (pkg / "initial_state.npz").unlink()
    assert_refused(node, pkg, pkg / "initial_state.npz", "--tokens", "1", expect="missing")
    (pkg / "initial_state.npz").write_bytes(b"not a zip")
    assert_refused(node, pkg, pkg / "initial_state.npz", "--tokens", "1", expect="sha256 does not match")
    relist(pkg, "initial_state.npz")  # a listed file that is no .npz reaches the reader
    assert_refused(node, pkg, pkg / "initial_state.npz", "--tokens", "1", expect="cannot read the initial state")


def test_hf_tokenizer_is_a_clear_error_but_token_ids_still_work(node, bundled_pkg, tmp_path):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    (pkg / "tokenizer.json").write_text("{}")
    edit_manifest(pkg, lambda m: m.update(tokenizer={"kind": "hf", "files": ["tokenizer.json"], "eos_token_id": None}))
    relist(pkg, "tokenizer.json")
    assert_refused(node, pkg, pkg / "manifest.json", "--prompt", "hello", expect='tokenizer kind "hf"')
    out = run_node(node, CLI, pkg, "--tokens", "100,101,102", "--max-tokens", "4", "--greedy", "--quiet")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 4


# -- the trust rules of manifest.md, as the Python runtime applies them -----------------------------------

@pytest.mark.parametrize("damage,culprit,expect", [
    pytest.param(lambda p, g: (shutil.move(p / g, p.parent / "real.onnx"), os.symlink(p.parent / "real.onnx", p / g)),
                 "GRAPH", "is a symbolic link", id="linked-graph"),
    pytest.param(lambda p, g: ((p / "validation").mkdir(), os.symlink("/etc/hostname", p / "validation" / "r.md")),
                 "validation/r.md", "is a symbolic link", id="link-in-validation"),
    pytest.param(lambda p, g: (p / "notes.py").write_text("x"), "notes.py", "not listed in manifest.json files",
                 id="unlisted-file"),
    pytest.param(lambda p, g: (shutil.copy(p / g, p.parent / "outside.onnx"),
                               edit_manifest(p, lambda m: m["graphs"]["step"].update(path="../outside.onnx"))),
                 "manifest.json", "'..' path component", id="dotdot-graph"),
    pytest.param(lambda p, g: edit_manifest(p, lambda m: m["graphs"]["step"].update(path="/etc/hostname")),
                 "manifest.json", "absolute path", id="absolute-graph"),
    pytest.param(lambda p, g: edit_manifest(p, lambda m: m.update(files={})), "manifest.json",
                 "is not listed in files", id="files-empty"),
    pytest.param(lambda p, g: edit_manifest(p, lambda m: m["state"][0].update(init="abc")), "manifest.json",
                 "state[0].init must be a finite number", id="init-string"),
    pytest.param(lambda p, g: edit_manifest(p, lambda m: m["model"].update(vocab_size="256")), "manifest.json",
                 "model.vocab_size must be an integer", id="vocab-string"),
    pytest.param(lambda p, g: edit_manifest(p, lambda m: m.update(format_version=True)), "manifest.json",
                 "format_version true is not supported", id="format-true"),
    pytest.param(lambda p, g: edit_manifest(p, lambda m: m["tokenizer"].update(kind="world")), "manifest.json",
                 "emits ids up to 65535", id="world-on-256"),
    pytest.param(lambda p, g: edit_manifest(p, lambda m: m["state"][0].update(shape=["batch", 1 << 20, 1 << 20])),
                 "manifest.json", "GiB of state per sequence", id="huge-state"),
    pytest.param(lambda p, g: (p / "manifest.json").write_text('{"a":' * 5000 + "1" + "}" * 5000), "manifest.json",
                 "nested 5000 levels", id="deep-nesting"),
    pytest.param(lambda p, g: (p / "manifest.json").write_text(" " * (5 << 20)), "manifest.json", "larger than 4 MiB",
                 id="5MiB-manifest"),
])
def test_the_node_runtime_applies_the_trust_rules(node, bundled_pkg, tmp_path, damage, culprit, expect):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    graph = json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]["path"]
    damage(pkg, graph)
    assert_refused(node, pkg, pkg / (graph if culprit == "GRAPH" else culprit), expect=expect)


def test_a_flipped_byte_is_refused_unless_hashing_is_skipped(node, bundled_pkg, tmp_path):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    graph = json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]["path"]
    data = bytearray((pkg / graph).read_bytes())
    data[-10] ^= 1
    (pkg / graph).write_bytes(bytes(data))
    assert_refused(node, pkg, pkg / graph, expect="sha256 does not match")
    out = run_node(node, CLI, pkg, "--prompt", "x", "--max-tokens", "1", "--no-verify", "--quiet")
    assert out.returncode in (0, 2), out.stderr  # ran (or ORT refused the damaged protobuf): never a traceback
    assert "at " not in out.stderr


def test_bad_arguments(node, bundled_pkg):
    assert_refused(node, bundled_pkg, "--temperature: invalid value \"Infinity\"", "--prompt", "x", "--temperature",
                   "Infinity")
    assert_refused(node, bundled_pkg, "presence_penalty must be a finite number", "--prompt", "x",
                   "--presence-penalty", "1000")
    assert_refused(node, bundled_pkg, "top_p must be in (0, 1]", "--prompt", "x", "--top-p", "1.5")
    assert_refused(node, bundled_pkg, "give either --prompt TEXT or --tokens IDS", "--max-tokens", "3")
    assert_refused(node, bundled_pkg, "outside the vocabulary", "--tokens", "300")


def test_onnxruntime_node_uses_its_bundled_cpu_binaries_only(node):
    """deploy/node/.npmrc makes the install script skip the CUDA download; only the npm package's files exist."""
    assert "onnxruntime-node-install=skip" in (NODE_DIR / ".npmrc").read_text().splitlines()
    # Rerun onnxruntime-node's install script the way `npm ci` does, with its downloads sent to a dead proxy:
    # it succeeds only because it downloads nothing (without the .npmrc it tries api.nuget.org and fails).
    npm = shutil.which("npm")
    assert npm, "npm is not installed"
    dead_proxy = "http://127.0.0.1:9"
    out = subprocess.run([npm, "rebuild", "onnxruntime-node", "--foreground-scripts", "--offline"], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GLOBAL_AGENT_HTTP_PROXY": dead_proxy, "GLOBAL_AGENT_HTTPS_PROXY": dead_proxy,
                              "HTTPS_PROXY": dead_proxy, "HTTP_PROXY": dead_proxy})
    assert out.returncode == 0, out.stdout + out.stderr
    binaries = sorted(p.name for p in (NODE_DIR / "node_modules" / "onnxruntime-node" / "bin").rglob("*") if p.is_file())
    assert "onnxruntime_binding.node" in binaries
    assert not [b for b in binaries if "cuda" in b or "tensorrt" in b], binaries
