"""Opening a package: verified files, its tokenizer, and clear refusals of damaged packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_deploy.package.manifest import ManifestError
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.runtime.package import DeploymentPackage, InputError, PackageError
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("package")
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=3), root / "r7.pth")
    export_package(root / "r7.pth", root / "out", ExportOptions())
    return root / "out"


@pytest.fixture
def copy_of_package(package_dir, tmp_path) -> Path:
    """A copy each test may damage."""
    return Path(shutil.copytree(package_dir, tmp_path / "copy"))


def test_open_reads_the_manifest_and_loads_the_tokenizer(package_dir):
    package = DeploymentPackage.open(package_dir)
    assert package.vocab_size == 256
    assert package.graph_path == package_dir / "r7.onnx" and package.graph_path.is_file()
    assert package.graph_sha256 == package.manifest.files["r7.onnx"]
    assert package.tokenizer.kind == "bytes"
    assert package.tokenizer.decode(package.tokenizer.encode("héllo")) == "héllo"


def test_a_tampered_graph_is_refused_naming_the_file(copy_of_package):
    graph = copy_of_package / "r7.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit deep inside the weights
    graph.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"copy/r7\.onnx: sha256 does not match manifest\.json") as caught:
        DeploymentPackage.open(copy_of_package)
    assert caught.value.exit_code == 2
    assert DeploymentPackage.open(copy_of_package, verify=False).graph_path == graph  # the explicit escape hatch


def test_a_missing_graph_is_refused_naming_the_file(copy_of_package):
    (copy_of_package / "r7.onnx").unlink()
    with pytest.raises(PackageError, match=r"copy/r7\.onnx: listed in manifest\.json but missing"):
        DeploymentPackage.open(copy_of_package)


def test_a_directory_without_manifest_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json") as caught:
        DeploymentPackage.open(tmp_path)
    assert caught.value.exit_code == 2


def test_tokenizer_kind_none_means_no_tokenizer(copy_of_package):
    manifest = json.loads((copy_of_package / "manifest.json").read_text())
    manifest["tokenizer"] = {"kind": "none", "files": [], "eos_token_id": None}
    (copy_of_package / "manifest.json").write_text(json.dumps(manifest))
    assert DeploymentPackage.open(copy_of_package).tokenizer is None


@pytest.mark.parametrize("tokens,message", [
    pytest.param(np.array([[1, 2]]), r"1-D array \[batch\], got shape \[1, 2\]", id="2-D"),
    pytest.param(np.array([], dtype=np.int64), r"non-empty", id="empty"),
    pytest.param(np.array([1.0, 2.0]), r"must be integers, got dtype float64", id="float"),
])
def test_token_arrays_the_graph_cannot_take_are_refused(package_dir, tokens, message):
    with pytest.raises(InputError, match=message):
        DeploymentPackage.open(package_dir, verify=False).check_tokens(tokens)


def test_token_ids_come_back_as_contiguous_int64(package_dir):
    tokens = DeploymentPackage.open(package_dir, verify=False).check_tokens(np.array([3, 9, 255], dtype=np.int32))
    assert tokens.dtype == np.int64 and tokens.flags.c_contiguous and tokens.tolist() == [3, 9, 255]


def test_opening_a_package_with_a_tokenizer_does_not_import_torch(package_dir):
    script = (f"import sys\nfrom rwkv_deploy.runtime import DeploymentPackage\n"
              f"DeploymentPackage.open({str(package_dir)!r})\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
