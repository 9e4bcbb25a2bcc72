"""The trust boundary (package/trust.py, package/schema.py): what it refuses even without hashing, and that
reading a crafted package costs bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from rwkv_deploy.package.archive import create_archive
from rwkv_deploy.package.schema import SchemaError, nesting_depth, parse_json
from rwkv_deploy.package.trust import PackageError, open_package_dir
from rwkv_deploy.package.verify import verify_package

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


@pytest.fixture
def pkg(shared_package, tmp_path) -> Path:
    return Path(shutil.copytree(shared_package("7", "fp32", tokenizer="bytes", prefill=True), tmp_path / "pkg"))


def edit(pkg: Path, change) -> None:
    data = json.loads((pkg / "manifest.json").read_text())
    change(data)
    (pkg / "manifest.json").write_text(json.dumps(data))


def test_a_clean_package_opens_with_and_without_hashing(pkg):
    assert open_package_dir(pkg).model.vocab_size == 256
    assert open_package_dir(pkg, hashes=False).model.vocab_size == 256


@pytest.mark.parametrize("damage,message", [
    pytest.param(lambda p: os.symlink(p / "manifest.json", p / "validation"), "validation: is a symbolic link",
                 id="linked-folder"),
    pytest.param(lambda p: (p / "extra.bin").write_bytes(b"x"), "extra.bin: not listed", id="unlisted"),
    pytest.param(lambda p: edit(p, lambda d: d["graphs"]["step"].update(path="../x.onnx")), "'..' path component",
                 id="dotdot"),
    pytest.param(lambda p: os.mkfifo(p / "pipe"), "pipe: is not a regular file", id="fifo"),
])
def test_without_hashing_the_path_rules_still_hold(pkg, damage, message):
    damage(pkg)
    with pytest.raises((PackageError, SchemaError), match=message):
        open_package_dir(pkg, hashes=False)


def test_a_flipped_byte_is_only_seen_with_hashing(pkg):
    graph = pkg / json.loads((pkg / "manifest.json").read_text())["graphs"]["step"]["path"]
    data = bytearray(graph.read_bytes())
    data[100] ^= 1
    graph.write_bytes(bytes(data))
    open_package_dir(pkg, hashes=False)
    with pytest.raises(PackageError, match="sha256 does not match"):
        open_package_dir(pkg)


def test_nesting_is_measured_outside_strings_before_parsing():
    assert nesting_depth(b'{"a": "[[[[{{{{", "b": [[1], {"c": []}]}') == 4
    assert nesting_depth(b'"\\"[[["') == 0
    with pytest.raises(SchemaError, match="nested 40 levels deep"):
        parse_json(b"[" * 40 + b"]" * 40, "x.json")


def test_verifying_an_archive_with_a_deflated_giant_manifest_costs_little_memory(pkg, tmp_path):
    archive = tmp_path / "model.zip"
    create_archive(pkg, archive)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "manifest.json":
                info.compress_type = zipfile.ZIP_DEFLATED
                data += b" " * (256 << 20)  # 256 MiB inflated, ~250 KB in the file
            zout.writestr(info, data)
    tracemalloc.start()
    try:
        problems = verify_package(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "manifest.json: compressed; members must be stored so runtimes can read them in place" in problems
    assert peak < 32 << 20, f"verify allocated {peak / 2**20:.0f} MiB"


def test_folders_nested_thousands_deep_are_one_problem_not_a_recursion_error(tmp_path):
    from rwkv_deploy.package.trust import MAX_FOLDER_DEPTH, scan_directory

    root = tmp_path / "pkg"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    try:  # 1,500 levels made through descriptors: the path itself would pass PATH_MAX
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            next_fd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    finally:
        os.close(fd)
    try:
        names, problems = scan_directory(root)
        assert names == [] and len(problems) == 1
        assert problems[0].endswith(f"folders nested deeper than {MAX_FOLDER_DEPTH} levels (a package needs 2)")
    finally:  # take the tree apart from the top, one level at a time (a recursive removal would itself overflow)
        while (root / "d").exists():
            if (root / "d" / "d").exists():
                os.rename(root / "d" / "d", root / "x")
                os.rmdir(root / "d")
                os.rename(root / "x", root / "d")
            else:
                os.rmdir(root / "d")
