"""The Node.js runner against internally consistent hostile packages (every file listed with its true sha256):
names that every JavaScript object inherits, state names outside the schema's grammar, and .npz bombs. Each is
refused in one line naming the file, exit code 2, or (a legal but tricky name) runs exactly as Python does."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.jsutil import node_greedy, python_greedy, run_node
from tests.deploy.test_node import assert_fresh_state_equals_python, assert_refused, assert_same_run
from tests.helpers.hostile import rename_state
from tests.helpers.hostile_node import copy_package, edit_manifest, npy_header, npz_with_member, relist, rename_graph

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)




@pytest.mark.parametrize("name", ["constructor", "__proto__", "valueOf", "toString", "hasOwnProperty"])
def test_a_graph_named_like_an_inherited_property_is_not_taken_as_listed(node, bundled_pkg, tmp_path, name):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    rename_graph(pkg, name, listed=False)
    assert_refused(node, pkg, pkg / "manifest.json", expect="is not listed in files")


def test_a_listed_graph_with_such_a_name_runs(node, bundled_pkg, tmp_path):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    rename_graph(pkg, "constructor", listed=True)
    prompt = [1, 2, 3]
    assert_same_run(node_greedy(node, pkg, prompt, 8, tmp_path / "dump.json"), python_greedy(pkg, prompt, 8),
                    "graph named constructor")


@pytest.mark.parametrize("hostile", ["../x", "a\nb", ".hidden", "a..b", "x" * 129])
def test_state_names_outside_the_schemas_grammar_are_refused(node, bundled_pkg, tmp_path, hostile):
    pkg = copy_package(bundled_pkg, tmp_path / "pkg")
    edit_manifest(pkg, lambda m: m["state"][0].update(name=hostile, input=f"state_in.{hostile}",
                                                        output=f"state_out.{hostile}"))
    assert_refused(node, pkg, pkg / "manifest.json", expect="state[0].name")


def test_a_state_named_like_an_inherited_property_starts_from_its_own_init(node, v4_pkg, tmp_path):
    """v4's att_pp starts at -1e30; named `valueOf`, an inherited-name lookup would find a function and start
    it from 0 instead. Python and Node must give the same fresh state and the same tokens."""
    pkg = copy_package(v4_pkg, tmp_path / "pkg")
    manifest = json.loads((pkg / "manifest.json").read_text())
    pp = next(e["name"] for e in manifest["state"] if e["init"] == -1e30)
    rename_state(pkg, pp, "valueOf")
    assert_fresh_state_equals_python(node, pkg)
    prompt = [3, 1, 4, 1, 5]
    assert_same_run(node_greedy(node, pkg, prompt, 8, tmp_path / "dump.json"), python_greedy(pkg, prompt, 8),
                    "state named valueOf")






@pytest.mark.parametrize("kind, expect", [("honest", "more than the"), ("lying", "inflates past its declared size")])
def test_an_npz_bomb_is_refused_before_it_is_inflated(node, tuned_pkg, tmp_path, kind, expect):
    """256 MB of zeros deflate to about 250 KB. Declared honestly it is over the cap (the largest state array);
    declared as 100 bytes it must be stopped as soon as it inflates past them, not held whole."""
    pkg = copy_package(tuned_pkg, tmp_path / "pkg")
    manifest = json.loads((pkg / "manifest.json").read_text())
    entry = next(e for e in manifest["state"] if e.get("init_file"))
    payload = npy_header((1 << 26,)) + bytes(1 << 28)
    (pkg / entry["init_file"]).write_bytes(npz_with_member(entry["name"], payload,
                                                            100 if kind == "lying" else None))
    relist(pkg, entry["init_file"])
    assert (pkg / entry["init_file"]).stat().st_size < 2 << 20
    line = assert_refused(node, pkg, pkg / entry["init_file"], expect=expect)
    assert hashlib.sha256((pkg / entry["init_file"]).read_bytes()).hexdigest() in json.dumps(
        json.loads((pkg / "manifest.json").read_text())["files"])  # listed with its true hash: only the size lies
    assert "\n" not in line


# -- the command line -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expect", [
    (["--tokens", "0x41,1e2"], "--tokens: expected comma-separated integers"),
    (["--tokens", "1,,"], None),  # empty items are skipped: ids 1
    (["--tokens", "65,66", "--max-tokens", "1e1"], "--max-tokens: invalid value"),
    (["--tokens", "65", "--seed", "0x10"], "--seed: invalid value"),
    (["--tokens", "65", "--temperature", "0x1"], "--temperature: invalid value"),
    (["--tokens", "65", "--threads", "100000"], "--threads: invalid value"),
])
def test_numbers_are_plain_decimals_as_in_python(node, bundled_pkg, args, expect):
    from tests.deploy.jsutil import CLI, run_node

    extra = [] if "--max-tokens" in args else ["--max-tokens", "1"]
    out = run_node(node, CLI, bundled_pkg, *args, *extra, "--quiet")
    if expect is None:
        assert out.returncode == 0, out.stderr
        return
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and expect in out.stderr, out.stderr


def test_an_invalid_utf8_prompt_is_refused_like_python(node, bundled_pkg):
    import subprocess

    from tests.deploy.jsutil import CLI

    done = subprocess.run([node, str(CLI), str(bundled_pkg), "--prompt", b"caf\xe9 au lait", "--max-tokens", "1"],
                          capture_output=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.decode().strip() == "error: --prompt: not valid UTF-8 (the tokenizers take text; give ids " \
                                           "with --tokens)"
    fine = subprocess.run([node, str(CLI), str(bundled_pkg), "--prompt", "café \ufffd ok", "--max-tokens", "1",
                           "--quiet"], capture_output=True, timeout=120)
    assert fine.returncode == 0, fine.stderr  # a real U+FFFD in valid UTF-8 is text like any other


def test_dump_logits_never_writes_through_a_link(node, bundled_pkg, tmp_path):
    from tests.deploy.jsutil import CLI, run_node

    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    link = tmp_path / "dump.json"
    os.symlink(victim, link)
    out = run_node(node, CLI, bundled_pkg, "--tokens", "65,66", "--max-tokens", "2", "--dump-logits", link, "--quiet")
    assert out.returncode == 0, out.stderr
    assert victim.read_text() == "the user's file\n"  # untouched
    assert not link.is_symlink() and json.loads(link.read_text())["prompt_ids"] == [65, 66]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.json", "victim.txt"]  # no temporary left


def test_control_characters_in_an_error_are_escaped(node, tmp_path):
    from tests.deploy.jsutil import CLI, run_node

    hostile = tmp_path / "pkg\x1b[2J"
    hostile.mkdir()
    out = run_node(node, CLI, hostile, "--tokens", "1")
    assert out.returncode == 2 and "\x1b" not in out.stderr and "\\x1b[2J" in out.stderr, out.stderr


SWAP_AFTER_CHECK = """
import {{ writeFileSync }} from "node:fs";
import {{ loadPackage, ort }} from {module};
const create = ort.InferenceSession.create.bind(ort.InferenceSession);
// the moment between the hash check and ONNX Runtime's load: the attacker swaps the file
ort.InferenceSession.create = async (...args) => {{ writeFileSync({victim}, "swapped"); return create(...args); }};
const pkg = await loadPackage({pkg}, {{ threads: 1 }});
const result = await pkg.generator.generate([1, 2, 3], {{ maxTokens: 6, temperature: 0 }});
console.log(JSON.stringify(result.tokenIds));
"""


@pytest.mark.parametrize("fixture, victim", [("bundled_pkg", "graph"), ("external_pkg", "weights")])
def test_a_file_swapped_after_the_hash_check_is_not_used(node, request, tmp_path, fixture, victim):
    """ONNX Runtime loads the bytes that were hashed: it never opens the graph or its weights again by path."""
    pkg = copy_package(request.getfixturevalue(fixture), tmp_path / "pkg")
    step = json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]
    target = pkg / step["path"]
    if victim == "weights":
        target = target.parent / step["external_data"]
    script = tmp_path / "swap.mjs"
    module = (Path(__file__).resolve().parents[2] / "deploy" / "node" / "src" / "node.js").as_uri()
    script.write_text(SWAP_AFTER_CHECK.format(module=json.dumps(module), victim=json.dumps(str(target)),
                                              pkg=json.dumps(str(pkg))))
    reference = python_greedy(request.getfixturevalue(fixture), [1, 2, 3], 6)
    out = run_node(node, script)
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == b"swapped"
    assert json.loads(out.stdout) == reference.token_ids


def world_vocab_of(pkg: Path) -> Path:
    return pkg / json.loads((pkg / "manifest.json").read_text())["tokenizer"]["files"][0]


@pytest.mark.parametrize("hostile, expect", [
    ("long token", "token of 2000 bytes, more than 1024"),
    ("large file", "larger than 16 MiB"),
])
def test_a_world_vocab_beyond_pythons_bounds_is_refused(node, world_pkg, tmp_path, hostile, expect):
    """The World vocab bounds of tokenization/untrusted.py: 16 MiB a file, 1024 bytes a token (listed and hashed)."""
    pkg = copy_package(world_pkg, tmp_path / "pkg")
    vocab = world_vocab_of(pkg)
    text = vocab.read_text()
    if hostile == "long token":
        text += f"65000 b'{'x' * 2000}' 2000\n"
    else:
        text += "\n" * (16 << 20)
    vocab.write_text(text)
    relist(pkg, vocab.relative_to(pkg).as_posix())
    assert_refused(node, pkg, vocab, expect=expect)
