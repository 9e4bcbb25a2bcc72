"""`rwkv-deploy verify`: each way a package can contradict its manifest is reported, naming the file."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.package.archive import create_archive
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.package.names import INDEX_NAME
from rwkv_deploy.package.verify import VerifyError, verify_package
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

runner = CliRunner()
GRAPH = "tiny.onnx"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export (v7, 2 layers: 6 state tensors, byte tokenizer); tests must not modify it."""
    root = tmp_path_factory.mktemp("export")
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=0), root / "tiny.pth")
    export_package(root / "tiny.pth", root / "tiny", ExportOptions())
    return root / "tiny"


@pytest.fixture(scope="module")
def archive(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "tiny.zip"
    create_archive(package, path)
    return path


@pytest.fixture
def pkg(package: Path, tmp_path: Path) -> Path:
    """A copy of the package to tamper with."""
    return Path(shutil.copytree(package, tmp_path / "pkg"))


def edit_manifest(package: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    edit(manifest)
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2))


def relist(package: Path, *names: str) -> None:
    """Record the current hash of `names` in manifest.json, so that only the intended problem remains."""
    def edit(manifest: dict) -> None:
        for name in names:
            manifest["files"][name] = hashlib.sha256((package / name).read_bytes()).hexdigest()
    edit_manifest(package, edit)


def rewrite_archive(source: Path, target: Path, change: Callable[[str, bytes], bytes | None] = lambda n, d: d,
                    add: dict[str, bytes] | None = None, compression: int | None = None) -> Path:
    """Copy an archive member by member (same names, times and alignment padding), changing some on the way;
    `change` returning None drops the member."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                if compression is not None:
                    info.compress_type = compression
                zout.writestr(info, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return target


def flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def test_clean_package_and_archive_pass(package: Path, archive: Path) -> None:
    assert verify_package(package) == []
    assert verify_package(archive) == []


def test_archive_is_verified_in_place(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("verify wrote to disk")
    for name in ("mkdtemp", "mkstemp", "NamedTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, no_disk)
    monkeypatch.setattr(zipfile.ZipFile, "extract", no_disk)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_disk)
    assert verify_package(archive) == []


def test_changed_byte_in_an_archive_member_is_named(archive: Path, tmp_path: Path) -> None:
    bad = rewrite_archive(archive, tmp_path / "bad.zip",
                          lambda name, data: flip_middle_byte(data) if name == GRAPH else data)
    problems = verify_package(bad)
    assert f"{GRAPH}: sha256 does not match manifest.json (file changed or corrupt)" in problems
    assert f"{GRAPH}: sha256 does not match {INDEX_NAME} (file changed or corrupt)" in problems
    assert all(p.startswith(f"{GRAPH}:") for p in problems), problems


def test_changed_byte_in_a_directory_file_is_named(pkg: Path) -> None:
    (pkg / GRAPH).write_bytes(flip_middle_byte((pkg / GRAPH).read_bytes()))
    assert verify_package(pkg) == [f"{GRAPH}: sha256 does not match manifest.json (file changed or corrupt)"]


def test_manifest_state_shape_that_the_graph_does_not_have(pkg: Path) -> None:
    def narrow(manifest: dict) -> None:
        entry = next(s for s in manifest["state"] if s["name"] == "layer0.wkv")
        assert entry["shape"] == ["batch", 4, 16, 16]
        entry["shape"] = ["batch", 4, 16, 8]
    edit_manifest(pkg, narrow)
    assert verify_package(pkg) == [
        f"{GRAPH}: input 'state_in.layer0.wkv' has shape [batch, 4, 16, 16], expected [batch, 4, 16, 8]",
        f"{GRAPH}: output 'state_out.layer0.wkv' has shape [batch, 4, 16, 16], expected [batch, 4, 16, 8]",
    ]


def test_state_without_leading_batch_axis_is_reported(pkg: Path) -> None:
    edit_manifest(pkg, lambda m: m["state"][0].update(shape=[1, 64]))
    problems = verify_package(pkg)
    assert problems == ["manifest.json: state[0].shape must start with 'batch'"]


def test_graph_input_renamed_with_onnx(pkg: Path) -> None:
    model = onnx.load(str(pkg / GRAPH))
    old, new = "state_in.layer1.wkv", "state_in.layer1.renamed"
    for value in model.graph.input:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    onnx.save(model, str(pkg / GRAPH))
    relist(pkg, GRAPH)
    assert verify_package(pkg) == [
        f"{GRAPH}: graph has no input '{old}' (manifest.json expects it)",
        f"{GRAPH}: graph input '{new}' is not declared in manifest.json",
    ]


def test_reordered_graph_inputs_are_reported(pkg: Path) -> None:
    model = onnx.load(str(pkg / GRAPH))
    inputs = list(model.graph.input)
    del model.graph.input[:]
    model.graph.input.extend([inputs[0], inputs[2], inputs[1], *inputs[3:]])
    onnx.save(model, str(pkg / GRAPH))
    relist(pkg, GRAPH)
    assert verify_package(pkg) == [
        f"{GRAPH}: graph inputs are not in manifest.json's order (token/logits, then state)"]


def test_state_dtype_other_than_float32_is_refused_by_the_schema(pkg: Path) -> None:
    edit_manifest(pkg, lambda m: m["state"][1].update(dtype="float16"))
    assert verify_package(pkg) == ["manifest.json: state[1].dtype is 'float16', not one of float32"]


def test_vocab_size_mismatch_shows_in_logits_shape(pkg: Path) -> None:
    edit_manifest(pkg, lambda m: m["model"].update(vocab_size=300))
    assert verify_package(pkg) == [f"{GRAPH}: output 'logits' has shape [batch, 256], expected [batch, 300]"]


def test_opset_mismatch(pkg: Path) -> None:
    edit_manifest(pkg, lambda m: m["graphs"]["step"].update(opset=17))
    assert verify_package(pkg) == [f"{GRAPH}: graph uses opset 18 but manifest.json graphs.step.opset is 17"]


def test_renamed_token_input_in_manifest(pkg: Path) -> None:
    edit_manifest(pkg, lambda m: m.update(token_input="tokens"))
    assert verify_package(pkg) == ["manifest.json: the file token_input/logits_output must be 'token'/'logits' "
                                   "in format 1"]


def test_missing_file(pkg: Path) -> None:
    (pkg / GRAPH).unlink()
    assert verify_package(pkg) == [f"{GRAPH}: listed in manifest.json but missing"]


def test_missing_manifest(pkg: Path) -> None:
    (pkg / "manifest.json").unlink()
    assert verify_package(pkg) == ["manifest.json: missing (not an rwkv-deploy package)"]


def test_unlisted_file_is_reported_but_validation_reports_are_allowed(pkg: Path) -> None:
    (pkg / "validation").mkdir()
    (pkg / "validation" / "report.json").write_text("{}")
    assert verify_package(pkg) == []
    (pkg / "tokenizer").mkdir()
    (pkg / "tokenizer" / "notes.txt").write_text("hidden")
    assert verify_package(pkg) == [
        "tokenizer/notes.txt: not listed in manifest.json files (unexpected file in the package)"]


def test_index_left_in_a_directory_must_still_be_right(pkg: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive) as zf:  # as after a plain `unzip`
        (pkg / INDEX_NAME).write_bytes(zf.read(INDEX_NAME))
    assert verify_package(pkg) == []
    (pkg / "validation").mkdir()
    (pkg / "validation" / "report.md").write_text("# later")
    assert verify_package(pkg) == [f"validation/report.md: not listed in {INDEX_NAME}"]


def test_archive_member_missing_from_both_lists(archive: Path, tmp_path: Path) -> None:
    bad = rewrite_archive(archive, tmp_path / "bad.zip", add={"extra.bin": b"\0" * 10})
    problems = verify_package(bad)
    assert "extra.bin: not listed in manifest.json files (unexpected file in the package)" in problems
    assert f"extra.bin: not listed in {INDEX_NAME}" in problems


def test_archive_without_its_index(archive: Path, tmp_path: Path) -> None:
    bad = rewrite_archive(archive, tmp_path / "bad.zip", lambda name, data: None if name == INDEX_NAME else data)
    problems = verify_package(bad)  # the other members moved, so their alignment is reported too
    assert [p for p in problems if "not a multiple of 64" not in p] == [
        f"{INDEX_NAME}: missing (an archive lists and hashes every member there)"]


def test_index_entry_without_member(archive: Path, tmp_path: Path) -> None:
    def add_ghost(name: str, data: bytes) -> bytes:
        if name != INDEX_NAME:
            return data
        index = json.loads(data)
        index["members"]["ghost.bin"] = {"size": 1, "sha256": "0" * 64}
        return json.dumps(index).encode()
    bad = rewrite_archive(archive, tmp_path / "bad.zip", add_ghost)
    assert "ghost.bin: listed in PACKAGE.json but missing" in verify_package(bad)


def test_compressed_members_are_reported(archive: Path, tmp_path: Path) -> None:
    bad = rewrite_archive(archive, tmp_path / "bad.zip", compression=zipfile.ZIP_DEFLATED)
    problems = verify_package(bad)
    assert f"{GRAPH}: compressed; members must be stored so runtimes can read them in place" in problems
    assert all("compressed" in p for p in problems)  # compressed members are reported, never inflated


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    assert verify_package(tmp_path / "x.zip") == ["x.zip: not a readable zip archive (File is not a zip file)"]


def test_nonexistent_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(VerifyError) as info:
        verify_package(tmp_path / "nope")
    assert info.value.exit_code == 2


def external_data_package(pkg: Path) -> str:
    """Move the graph's weights into `tiny.onnx.data`, as the exporter does beyond 2 GB."""
    data = f"{GRAPH}.data"
    model = onnx.load(str(pkg / GRAPH))
    onnx.save_model(model, str(pkg / GRAPH), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=0)
    relist(pkg, GRAPH, data)
    edit_manifest(pkg, lambda m: m["graphs"]["step"].update(external_data=data))
    return data


def test_external_data_declared_and_present(pkg: Path) -> None:
    external_data_package(pkg)
    assert verify_package(pkg) == []


def test_declared_external_data_missing(pkg: Path) -> None:
    data = external_data_package(pkg)
    (pkg / data).unlink()
    assert verify_package(pkg) == [f"{data}: listed in manifest.json but missing",
                                   f"{data}: external data of {GRAPH} but missing"]


def test_undeclared_external_data(pkg: Path) -> None:
    data = external_data_package(pkg)
    edit_manifest(pkg, lambda m: m["graphs"]["step"].update(external_data=None))
    assert verify_package(pkg) == [f"{GRAPH}: weights are stored in external file '{data}' that manifest.json "
                                   "graphs.step.external_data does not declare (None)"]


def test_initial_state_file_must_match_the_state_shape(pkg: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"layer0.wkv": np.zeros((4, 16, 8), np.float32)})
    (pkg / "initial_state.npz").write_bytes(buffer.getvalue())
    relist(pkg, "initial_state.npz")
    edit_manifest(pkg, lambda m: m["state"][1].update(init_file="initial_state.npz"))
    assert verify_package(pkg) == [
        "initial_state.npz: array 'layer0.wkv' is float32 [4, 16, 8], expected float32 [4, 16, 16]"]


def test_cli_verify_exit_codes(package: Path, archive: Path, pkg: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["verify", str(archive)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == f"OK: {archive}\n"
    assert runner.invoke(app, ["verify", str(package)]).exit_code == 0
    (pkg / GRAPH).unlink()
    (pkg / "stray.txt").write_text("x")
    failed = runner.invoke(app, ["verify", str(pkg)])
    assert failed.exit_code == 1
    assert failed.stdout.splitlines() == [
        f"{GRAPH}: listed in manifest.json but missing",
        "stray.txt: not listed in manifest.json files (unexpected file in the package)",
        f"FAILED: {pkg} (2 problems)",
    ]
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such package directory or archive" in missing.stderr
