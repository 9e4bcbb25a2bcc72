"""No gap between checking a package's graph and running it (runtime/pinned_graph.py): a graph or its weights
swapped or rewritten after the package was opened (the prefill graph's session is made only when a prompt first
needs it) is refused with PackageFilesChanged, never run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rwkv_deploy.package.trust import PackageFilesChanged
from rwkv_deploy.runtime import DeploymentPackage, OnnxStepBackend
from tests.helpers.small_packages import export_small

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

TOKENS = np.array([[1, 2, 3, 4, 5, 6]], np.int64)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pinned")
    return {"inline": export_small(root, "7", prefill=True, tokenizer="bytes"),
            "other": export_small(root, "7", seed=1, prefill=True, tokenizer="bytes"),
            "external": export_small(root, "7", prefill=True, tokenizer="bytes", external_data=True)}


def copy(exports: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exports[kind], tmp_path / kind))


def replace_by_rename(target: Path, source: Path) -> None:
    staged = target.with_name(target.name + ".swap")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def test_a_prefill_graph_swapped_after_opening_is_never_run(exports, tmp_path):
    pkg = copy(exports, "inline", tmp_path)
    backend = OnnxStepBackend(DeploymentPackage.open(pkg), threads=1)  # the package is checked here
    prefill = DeploymentPackage.open(pkg).prefill_graph_path
    other = DeploymentPackage.open(exports["other"]).prefill_graph_path  # a valid graph of another model
    replace_by_rename(prefill, other)
    with pytest.raises(PackageFilesChanged, match=f"{prefill.name}: sha256 no longer matches"):
        backend.prefill(TOKENS, backend.fresh_state(1))


def test_a_step_graph_swapped_between_opening_and_loading_is_refused(exports, tmp_path):
    pkg = copy(exports, "inline", tmp_path)
    package = DeploymentPackage.open(pkg)
    replace_by_rename(package.graph_path, DeploymentPackage.open(exports["other"]).graph_path)
    with pytest.raises(PackageFilesChanged, match="sha256 no longer matches"):
        OnnxStepBackend(package, threads=1)


def test_a_graph_replaced_by_a_link_is_refused(exports, tmp_path):
    pkg = copy(exports, "inline", tmp_path)
    package = DeploymentPackage.open(pkg)
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(package.graph_path, outside)
    package.graph_path.unlink()
    os.symlink(outside, package.graph_path)
    with pytest.raises(PackageFilesChanged, match="cannot be opened any more"):
        OnnxStepBackend(package, threads=1)


def test_weights_renamed_over_or_rewritten_in_place_are_refused(exports, tmp_path):
    pkg = copy(exports, "external", tmp_path)
    package = DeploymentPackage.open(pkg)
    graph = package.manifest.graphs["step"]
    assert graph.external_data, "the fixture stores its weights as external data"
    data = package.graph_path.parent / graph.external_data
    original = data.read_bytes()
    scrambled = bytes(b ^ 1 for b in original[:64]) + original[64:]

    staged = data.with_name(data.name + ".swap")
    staged.write_bytes(scrambled)
    os.replace(staged, data)  # a new inode under the old name
    with pytest.raises(PackageFilesChanged, match="sha256 no longer matches"):
        OnnxStepBackend(package, threads=1)

    data.write_bytes(original)
    OnnxStepBackend(DeploymentPackage.open(pkg), threads=1)  # restored: loads
    with open(data, "r+b") as f:  # the same inode, rewritten in place after the package was opened
        f.write(scrambled[:64])
    with pytest.raises(PackageFilesChanged, match="sha256 no longer matches"):
        OnnxStepBackend(package, threads=1)


def test_an_untouched_package_loads_from_the_checked_bytes_and_steps_as_before(exports):
    package = DeploymentPackage.open(exports["external"])
    backend = OnnxStepBackend(package, threads=1)
    logits, _ = backend.prefill(TOKENS, backend.fresh_state(1))
    state, stepped = backend.fresh_state(1), None
    for token in TOKENS[0]:
        stepped, state = backend.step(np.array([token]), state)
    np.testing.assert_allclose(logits, stepped, atol=1e-4)
