"""The exported step graph: ONNX-valid, deterministic, faithful in fp32 and fp16, safe against fp16 overflow."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from rwkv_deploy.export.precision import calibration_tokens, measure_linear_ranges, to_fp16
from rwkv_deploy.export.package_builder import ExportError, ExportOptions, export_package
from rwkv_deploy.models import load_model
from tests.helpers.small_packages import small_checkpoint
from tests.helpers.random_checkpoints import make_checkpoint
from tests.helpers.onnx_compare import run_both

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

VERSIONS = ["4", "5.2", "6", "7"]
STEPS = 64


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """fp32 and fp16 packages of one small random checkpoint per version."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for version in VERSIONS:
        ckpt = small_checkpoint(root / f"v{version}.pth", version)
        for precision in ("fp32", "fp16"):
            out[version, precision] = (ckpt, root / f"v{version}-{precision}")
            export_package(ckpt, out[version, precision][1], ExportOptions(precision=precision))
    return out


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_artifact_matches_the_reference(version, batch, packages):
    ckpt, package = packages[version, "fp32"]
    worst = max(float(np.abs(ref - art).max()) for ref, art in run_both(ckpt, package, batch))
    print(f"v{version} fp32 batch {batch}: max |logit diff| {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("batch", [1, 3])
def test_fp16_artifact_stays_close_to_the_reference(version, batch, packages):
    ckpt, package = packages[version, "fp16"]
    worst, agree, total = 0.0, 0, 0
    for ref, art in run_both(ckpt, package, batch):
        assert np.isfinite(art).all()
        worst = max(worst, float(np.abs(ref - art).max()))
        agree += int((ref.argmax(-1) == art.argmax(-1)).sum())
        total += batch
    print(f"v{version} fp16 batch {batch}: max |logit diff| {worst:.2e}, top-1 agreement {agree / total:.3f}")
    assert worst <= 0.1
    assert agree / total >= 0.95


@pytest.mark.parametrize("version", VERSIONS)
def test_graph_io_follows_the_manifest(version, packages):
    _, package = packages[version, "fp16"]
    manifest = json.loads((package / "manifest.json").read_text())
    graph = onnx.load(package / manifest["graphs"]["step"]["path"]).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    outputs = {o.name: o.type.tensor_type for o in graph.output}
    assert list(inputs) == ["token"] + [e["input"] for e in manifest["state"]]
    assert list(outputs) == ["logits"] + [e["output"] for e in manifest["state"]]
    assert inputs["token"].elem_type == onnx.TensorProto.INT64
    assert outputs["logits"].elem_type == onnx.TensorProto.FLOAT
    for e in manifest["state"]:  # state stays fp32 in every precision, batch is the only dynamic dim
        for t in (inputs[e["input"]], outputs[e["output"]]):
            assert t.elem_type == onnx.TensorProto.FLOAT
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            assert isinstance(dims[0], str) and dims[1:] == e["shape"][1:]


def test_fp16_graph_keeps_matmuls_in_fp16_and_norms_in_fp32(packages):
    _, package = packages["7", "fp16"]
    model = onnx.shape_inference.infer_shapes(onnx.load(package / "v7.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    matmul_inputs = [types.get(n.input[1]) for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert matmul_inputs.count(onnx.TensorProto.FLOAT16) >= 2 * 4  # r, k, v, o, ffn k/v and head per layer
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            assert types.get(node.input[0]) == onnx.TensorProto.FLOAT


def test_export_is_byte_identical(tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pth", "6")
    export_package(ckpt, tmp_path / "a", ExportOptions())
    export_package(ckpt, tmp_path / "b", ExportOptions())
    for name in ("m.onnx", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_external_data_on_request(tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pth", "7")
    manifest = export_package(ckpt, tmp_path / "pkg", ExportOptions(external_data=True))
    assert manifest.graphs["step"].external_data == "m.onnx.data"
    assert "m.onnx.data" in manifest.files
    assert (tmp_path / "pkg" / "m.onnx").stat().st_size < (tmp_path / "pkg" / "m.onnx.data").stat().st_size
    onnx.checker.check_model(str(tmp_path / "pkg" / "m.onnx"), full_check=True)


def test_non_empty_output_is_refused_without_force(tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pth", "7")
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="not empty"):
        export_package(ckpt, out, ExportOptions())
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(ExportError, match="--force replaces only packages"):
        export_package(ckpt, out, ExportOptions(force=True))
    assert (out / "keep.txt").read_text() == "user data"


def test_force_replaces_an_earlier_package(tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pth", "7")
    out = tmp_path / "pkg"
    export_package(ckpt, out, ExportOptions())
    (out / "stale.txt").write_text("from the earlier export")
    with pytest.raises(ExportError, match="not empty"):
        export_package(ckpt, out, ExportOptions())
    export_package(ckpt, out, ExportOptions(force=True))
    assert not (out / "stale.txt").exists() and (out / "manifest.json").exists()


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    ckpt = small_checkpoint(tmp_path / "m.pth", "7")

    def broken_check(path):
        raise RuntimeError("simulated failure while checking the graph")

    monkeypatch.setattr("rwkv_deploy.export.package_builder.check_onnx_file", broken_check)
    out = tmp_path / "exports" / "pkg"
    with pytest.raises(RuntimeError, match="simulated"):
        export_package(ckpt, out, ExportOptions())
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []  # no temporary sibling left either


def test_fp16_does_not_overflow_on_large_activations(tmp_path):
    """FFN activations beyond fp16's range (relu(k)^2 > 65504): the scaled fp16 products stay finite.

    Run in PyTorch, which really computes in fp16 on the CPU (ONNX Runtime's CPU provider may compute
    fp16 MatMul in fp32 and would hide an overflow); the ONNX graph is traced from this same module.
    """
    sd = make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=3)
    for i in range(2):
        sd[f"blocks.{i}.ffn.key.weight"] *= 100.0
    torch.save(sd, tmp_path / "big.pth")
    model = load_model(tmp_path / "big.pth")
    tokens = calibration_tokens(256, batch=2, length=16, seed=5)
    ranges = measure_linear_ranges(model, tokens)
    assert ranges["blocks.0.ffn.value"][0] > 65504  # the hazard is real: this input overflows plain fp16

    fp16 = to_fp16(model)  # calibrated on other tokens than the ones checked here
    with torch.no_grad():
        ref, _ = model(tokens, model.init_state(2))
        out, state = fp16(tokens, fp16.init_state(2))
    assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for s in state)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05


def test_ln_x_eps_option_exports_rwkvcpps_v5_group_norm(tmp_path):
    """`--ln-x-eps 1e-5` (rwkv.cpp's v5 epsilon) reaches the graph and the manifest, and matters."""
    ckpt = small_checkpoint(tmp_path / "v5.pth", "5.2")
    package = tmp_path / "eps"
    manifest = export_package(ckpt, package, ExportOptions(ln_x_eps=1e-5))
    assert manifest.source["ln_x_eps"] == 1e-5
    matched = max(float(np.abs(r - a).max()) for r, a in run_both(ckpt, package, 1, steps=16, ln_x_eps=1e-5))
    against_default = max(float(np.abs(r - a).max()) for r, a in run_both(ckpt, package, 1, steps=16))
    assert matched <= 1e-4 < against_default
    with pytest.raises(ExportError, match="ln-x-eps"):
        export_package(ckpt, tmp_path / "bad", ExportOptions(ln_x_eps=-1.0))
