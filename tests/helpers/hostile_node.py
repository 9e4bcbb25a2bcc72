"""Hostile inputs for the Node.js runner (issue 23): internally consistent packages (every file listed with its
true sha256) and command lines, each with the outcome a clean runner gives. scripts/hostile_census.py --node
runs them all; tests/deploy/test_node_hostile.py asserts the same behaviours one by one."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class NodeMaterial:
    package: Path  # RWKV-7, byte tokenizer
    tuned: Path  # RWKV-6 state-tuned: its wkv states start from initial_state.npz


@dataclass(frozen=True)
class NodeCase:
    name: str
    build: Callable[[Path, NodeMaterial], list[str]]  # makes the inputs under root, returns the CLI arguments
    exit_code: int  # 0: must succeed; otherwise the one error line's exit code
    message: str = ""  # text the one error line must contain
    intact: Callable[[Path], bool] | None = None  # True when nothing of the user's under root was harmed


# -- package edits that keep the package consistent -------------------------------------------------------------

def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(pkg: Path, change) -> None:
    manifest = json.loads((pkg / "manifest.json").read_text())
    change(manifest)
    (pkg / "manifest.json").write_text(json.dumps(manifest))


def relist(pkg: Path, *names: str) -> None:
    """List `names` with their true sha256 (a hostile package that `verify` still passes)."""
    edit_manifest(pkg, lambda m: m["files"].update({n: hashlib.sha256((pkg / n).read_bytes()).hexdigest()
                                                    for n in names}))


def rename_graph(pkg: Path, new: str, listed: bool) -> None:
    manifest = json.loads((pkg / "manifest.json").read_text())
    old = manifest["graphs"]["step"]["path"]
    (pkg / old).rename(pkg / new)

    def change(m):
        m["graphs"]["step"]["path"] = new
        digest = m["files"].pop(old)
        if listed:
            m["files"][new] = digest
    edit_manifest(pkg, change)


def npz_with_member(name: str, payload: bytes, declared: int | None = None) -> bytes:
    """A deflated .npz holding one member; `declared` overwrites the member's uncompressed size in its headers
    (a lying zip: a small declared size, a huge inflation)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{name}.npy", payload)
    data = bytearray(buffer.getvalue())
    if declared is not None:
        local = data.index(b"PK\x03\x04")
        struct.pack_into("<I", data, local + 22, declared)
        central = data.index(b"PK\x01\x02")
        struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def npy_header(shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return out.getvalue()


def npz_bomb(pkg: Path, lying: bool) -> Path:
    """256 MB of zeros (about 250 KB deflated) as the first initial state; declared honestly or as 100 bytes."""
    manifest = json.loads((pkg / "manifest.json").read_text())
    entry = next(e for e in manifest["state"] if e.get("init_file"))
    payload = npy_header((1 << 26,)) + bytes(1 << 28)
    (pkg / entry["init_file"]).write_bytes(npz_with_member(entry["name"], payload, 100 if lying else None))
    relist(pkg, entry["init_file"])
    return pkg / entry["init_file"]


# -- the cases ------------------------------------------------------------------------------------------------

def _package(edit: Callable[[Path], object], source: str = "package", args: tuple[str, ...] = ("--tokens", "1,2")):
    def build(root: Path, material: NodeMaterial) -> list[str]:
        pkg = copy_package(getattr(material, source), root / "pkg")
        edit(pkg)
        return [str(pkg), *args, "--max-tokens", "2"]
    return build


def _args(*args: str | bytes):
    def build(root: Path, material: NodeMaterial) -> list[str | bytes]:
        return [str(material.package), *args]
    return build


def _dump_through_link(root: Path, material: NodeMaterial) -> list[str]:
    (root / "victim.txt").write_text("the user's file\n")
    (root / "dump.json").symlink_to(root / "victim.txt")
    return [str(material.package), "--tokens", "1,2", "--max-tokens", "2", "--dump-logits", str(root / "dump.json")]


CASES: list[NodeCase] = [
    *(NodeCase(f"graph-named-{name}-unlisted", _package(lambda p, n=name: rename_graph(p, n, listed=False)), 2,
               "is not listed in files") for name in ("constructor", "__proto__", "valueOf", "toString",
                                                      "hasOwnProperty")),
    NodeCase("graph-named-constructor-listed", _package(lambda p: rename_graph(p, "constructor", listed=True)), 0),
    *(NodeCase(f"state-name-{label}", _package(lambda p, h=hostile: edit_manifest(p, lambda m: m["state"][0].update(
        name=h, input=f"state_in.{h}", output=f"state_out.{h}"))), 2, "state[0].name")
      for label, hostile in (("dotdot-slash", "../x"), ("newline", "a\nb"), ("hidden", ".hidden"),
                             ("dotdot", "a..b"), ("too-long", "x" * 129))),
    NodeCase("files-key-__proto__", _package(lambda p: (p / "__proto__").write_bytes(b"x")), 2, "not listed"),
    NodeCase("npz-bomb-honest", _package(lambda p: npz_bomb(p, lying=False), "tuned"), 2, "more than the"),
    NodeCase("npz-bomb-lying", _package(lambda p: npz_bomb(p, lying=True), "tuned"), 2,
             "inflates past its declared size"),
    NodeCase("tokens-hex-and-exponent", _args("--tokens", "0x41,1e2"), 2, "--tokens"),
    NodeCase("max-tokens-exponent", _args("--tokens", "1", "--max-tokens", "1e1"), 2, "--max-tokens"),
    NodeCase("seed-hex", _args("--tokens", "1", "--seed", "0x10"), 2, "--seed"),
    NodeCase("threads-100000", _args("--tokens", "1", "--threads", "100000"), 2, "--threads"),
    NodeCase("prompt-invalid-utf8", _args("--prompt", b"caf\xe9 au lait", "--max-tokens", "1"), 2, "not valid UTF-8"),
    # replaced, never written through: the link's target keeps the user's text
    NodeCase("dump-logits-through-symlink", _dump_through_link, 0,
             intact=lambda root: (root / "victim.txt").read_text() == "the user's file\n"),
]
