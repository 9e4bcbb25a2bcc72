"""install_engines writes plans and their records into a package and lists them through the one manifest
writer: what it writes reads back through the strict reader, and engines of another TensorRT are dropped.
The plans are opaque bytes here: installing does not look inside them (building needs a GPU)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.targets.tensorrt.engine_files import BuiltPlan, install_engines

pytestmark = pytest.mark.slow  # exports a package at run time


def test_installed_engines_are_listed_hashed_and_replaced_per_tensorrt(shared_package, tmp_path):
    package = shutil.copytree(shared_package("7", prefill=True), tmp_path / "pkg")
    before = read_manifest(package)
    graphs = sorted(before.graphs)
    assert len(graphs) == 2
    onnx = {g: before.graphs[g].path for g in graphs}
    plans = [BuiltPlan(graph=g, plan=g.encode() * 10, build_config={"onnx": onnx[g]},
                       library={"flavour": "tensorrt", "name": "tensorrt", "version": "10.0"}, targets=("8.6",),
                       targets_source="test", gpu=None, build_seconds=0.0, io=(), io_source="network")
             for g in graphs]
    install_engines(package, before, plans)
    after = read_manifest(package)
    assert sorted(after.engines) == graphs
    for g in graphs:
        entry = after.engines[g]
        assert (entry.library, entry.version) == ("tensorrt", "10.0")
        assert after.files[entry.plan] == hashlib.sha256(g.encode() * 10).hexdigest()
        assert after.files[entry.info] == hashlib.sha256((package / entry.info).read_bytes()).hexdigest()
    assert {k: v for k, v in after.files.items() if not k.startswith("engines/")} == before.files

    # one graph rebuilt with another TensorRT: the other graph's engine (of the old one) is dropped, files too
    rebuilt, dropped = graphs
    newer = BuiltPlan(graph=rebuilt, plan=b"new", build_config={"onnx": onnx[rebuilt]},
                      library={"flavour": "tensorrt", "name": "tensorrt", "version": "10.1"}, targets=("8.6",),
                      targets_source="test", gpu=None, build_seconds=0.0, io=(), io_source="network")
    install_engines(package, after, [newer])
    last = read_manifest(package)
    assert list(last.engines) == [rebuilt] and last.engines[rebuilt].version == "10.1"
    gone = after.engines[dropped]
    assert gone.plan not in last.files and not (package / gone.plan).exists()
    assert not (package / gone.info).exists()
