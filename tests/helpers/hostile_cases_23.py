"""Issue 23's Python-side classes as census cases (tests/helpers/hostile.py explains the judging): each builder
makes an internally consistent input under `root` (every file listed with its true sha256, so only the class
under test is wrong) and returns the `rwkv-deploy` arguments."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

from tests.helpers.hostile import Case, Material, copy_package, edit, generate, manifest_of, relist, rename_state

# -- 4: the Triton writer: state names become file names and config.pbtxt text, numbers are written as given ------


def triton_state_name(hostile: str):
    """A package whose first state is named `hostile` everywhere (manifest and graphs, all hashes true): only the
    name is wrong, so only the name check can refuse it."""
    def build(root: Path, m: Material) -> list[str]:
        pkg = copy_package(root, m)
        rename_state(pkg, manifest_of(pkg)["state"][0]["name"], hostile)
        return ["package", str(pkg), "--triton", str(root / "repo")]
    return build


def triton_option(*options: str):
    def build(root: Path, m: Material) -> list[str]:
        return ["package", str(m.package), "--triton", str(root / "repo"), *options]
    return build


# -- 3: tokenizers: a package's tokenizer files are hashed, and now checked before they are built -----------------


def _with_tokenizer(root: Path, m: Material, name: str, data: bytes, kind: str) -> Path:
    pkg = copy_package(root, m)
    (pkg / name).write_bytes(data)

    def point(manifest: dict) -> None:
        old = manifest["tokenizer"].get("files", [])
        for path in old:
            manifest["files"].pop(path, None)
        manifest["tokenizer"].update(kind=kind, files=[name])
    edit(pkg, point)
    relist(pkg, name)
    return pkg


def _hf_json(pattern: str, vocab: int = 300) -> bytes:
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(vocab)}, "unk_token": "w0"}}).encode()


def hf_tokenizer(pattern: str, vocab: int = 200):
    def build(root: Path, m: Material) -> list[str]:
        return generate(_with_tokenizer(root, m, "tokenizer.json", _hf_json(pattern, vocab), "hf"))
    return build


# -- 7: archives whose stored members overlap ---------------------------------------------------------------------


def archive_overlap(root: Path, m: Material) -> list[str]:
    data = bytearray(m.archive.read_bytes())
    with zipfile.ZipFile(m.archive) as zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
    first, victim = members[0], members[1]
    central = data.index(b"PK\x01\x02")
    while data[central:central + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<3H", data, central + 28)
        if data[central + 46:central + 46 + name_len].decode() == victim.filename:
            struct.pack_into("<I", data, central + 42, first.header_offset)
        central += 46 + name_len + extra_len + comment_len
    (root / "bomb.zip").write_bytes(bytes(data))
    return ["verify", str(root / "bomb.zip")]


def generate_archive_overlap(root: Path, m: Material) -> list[str]:
    return generate(archive_overlap(root, m)[1])


# -- 6: staging: a user's folder named like a displaced output is never touched -----------------------------------


def staging_lookalike(root: Path, m: Material) -> list[str]:
    user = root / ".out.zip.old-999999"  # no process has this pid: the old clean-up deleted it
    user.mkdir()
    (user / "thesis.txt").write_text("a user's file\n")
    return ["package", str(m.package), "-o", str(root / "out.zip")]


# -- 5: the GenAI folder, a new writer: the same rules as every other output -------------------------------------


def genai_into_link(root: Path, m: Material) -> list[str]:
    victim = root / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("a user's file\n")
    (root / "out").symlink_to(victim)
    return ["package", str(m.package), "--genai", str(root / "out")]


def genai_over_a_users_folder(root: Path, m: Material) -> list[str]:
    (root / "out").mkdir()
    (root / "out" / "notes.txt").write_text("a user's file\n")
    return ["package", str(m.package), "--genai", str(root / "out")]


def genai_of_a_tampered_package(root: Path, m: Material) -> list[str]:
    pkg = copy_package(root, m)
    graph = pkg / manifest_of(pkg)["graphs"]["step"]["path"]
    graph.write_bytes(graph.read_bytes() + b"\0")  # not relisted: the hash no longer matches
    return ["package", str(pkg), "--genai", str(root / "out")]


# -- the smaller edges ------------------------------------------------------------------------------------------


def generate_with(*options: str):
    def build(root: Path, m: Material) -> list[str]:
        return generate(m.package, *options)
    return build


def _case(name, klass, build, code, message="", **kw) -> Case:
    return Case(name, klass, build, code, message, **kw)


BAD_NAMES = {"dotdot": "../../outside", "absolute": "/tmp/outside", "quote": 'a"; b', "newline": "a\nb",
             "trailing-newline": "layer0\n", "hidden": ".hidden"}

CASES_23: list[Case] = [
    *(_case(f"triton-state-name-{k}", "dangerous", triton_state_name(v), 2, "is not an allowed value")
      for k, v in BAD_NAMES.items()),
    _case("triton-name-trailing-newline", "dangerous", triton_option("--triton-name", "model\n"), 2, "name"),
    _case("triton-name-dotdot", "dangerous", triton_option("--triton-name", "../x"), 2, "name"),
    _case("triton-instances-1e9", "dangerous", triton_option("--triton-instances", "1000000000"), 2, "instances"),
    _case("triton-max-batch-huge", "dangerous", triton_option("--triton-max-batch-size", "1000000000"), 2, "batch"),
    _case("hf-tokenizer-nested-quantifier", "dangerous", hf_tokenizer(r"(\w+\s?)*$"), 2, "outside the safe subset"),
    _case("hf-tokenizer-backreference", "dangerous", hf_tokenizer(r"(a)\1"), 2, "outside the safe subset"),
    _case("hf-tokenizer-repeated-alternation", "dangerous", hf_tokenizer(r"(a|aa)*b"), 2, "outside the safe subset"),
    _case("hf-tokenizer-vocab-over-model", "dangerous", hf_tokenizer(r"\s+", vocab=70000), 2, "tokenizer.json"),
    _case("archive-overlapping-members", "dangerous", archive_overlap, 1, "overlap", on_stdout=True),
    _case("generate-archive-overlapping-members", "dangerous", generate_archive_overlap, 1, "overlap"),
    _case("staging-user-lookalike-folder", "dangerous", staging_lookalike, 0, allowed=("out.zip",)),
    _case("genai-into-a-symlink", "dangerous", genai_into_link, 2, "symbolic link"),
    _case("genai-over-a-users-folder", "dangerous", genai_over_a_users_folder, 2, "not an empty directory"),
    _case("genai-of-a-tampered-package", "dangerous", genai_of_a_tampered_package, 2, "sha256"),
    _case("limit-variable-1e400", "traceback", generate_with(), 2, "RWKV_DEPLOY",
          env={"RWKV_DEPLOY_MAX_STATE_BYTES": "1e400"}),
    _case("threads-2000", "traceback", generate_with("--threads", "2000"), 2, "threads"),
]
