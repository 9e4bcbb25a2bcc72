"""The CPU step graph of real fp16 and quantized packages run by our runtime: the portable graph's logits within
fp16 rounding (fp16) or fp32 rounding (int8, int4: the same int8 activations), the same greedy tokens; and
`bench --cpu-ops` measures it beside the portable graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rwkv_deploy.runtime import cpu_ops
from tests.helpers.small_packages import shared

pytestmark = [pytest.mark.slow,  # exports fp16 packages
              pytest.mark.skipif(cpu_ops.library_path() is None, reason="CPU operators not built in this install")]
pytest.importorskip("onnx")

TOKENS = np.array([72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 10] * 2, dtype=np.int64)


@pytest.mark.parametrize("version", ["5.2", "6", "7"])
def test_stepping_the_cpu_graph_gives_the_portable_graphs_logits(shared_package, tmp_path, version):
    from rwkv_deploy.runtime import DeploymentPackage, stream_logits
    from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
    from rwkv_deploy.targets.cpu.graph_file import write_cpu_graph

    package_dir = shared(shared_package, version, "fp16")
    graph = write_cpu_graph(package_dir, tmp_path / "step.cpu.onnx")
    assert graph.products > 0 and graph.data.is_file()
    package = DeploymentPackage.open(package_dir)
    portable = stream_logits(OnnxStepBackend(package, threads=1), TOKENS)
    ours = stream_logits(OnnxStepBackend(package, threads=2, cpu_graph_file=graph.path), TOKENS)
    assert np.abs(ours - portable).max() <= 2e-3 * np.abs(portable).max()  # fp16 rounding of products, at most
    assert (ours.argmax(-1) == portable.argmax(-1)).all()


def _mean_kl(logits: np.ndarray, reference: np.ndarray) -> float:
    """Mean KL(reference || logits) over the stream's tokens, from logits."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("version, precision", [("4", "int8"), ("5.2", "int4"), ("6", "int8"), ("7", "int4")])
def test_a_quantized_cpu_graph_is_as_faithful_as_the_portable_graph(shared_package, tmp_path, version, precision):
    """Each product equals MatMulNBits' within fp32 rounding (tests/runtime/test_cpu_ops.py), but int8 activation
    quantization is discontinuous: a last-bit difference can round an activation of a later product the other way,
    and the two graphs then take different, equally good, rounding paths. So the whole step is held to the
    portable graph's distance from the fp32 export of the same checkpoint, not to its exact logits."""
    from rwkv_deploy.runtime import DeploymentPackage, stream_logits
    from rwkv_deploy.runtime.onnx_backend import OnnxStepBackend
    from rwkv_deploy.targets.cpu.graph_file import write_cpu_graph

    package_dir = shared(shared_package, version, precision)
    graph = write_cpu_graph(package_dir, tmp_path / "step.cpu.onnx")
    assert graph.products > 0
    package = DeploymentPackage.open(package_dir)
    fp32 = stream_logits(OnnxStepBackend(DeploymentPackage.open(shared(shared_package, version, "fp32")), threads=1),
                         TOKENS)
    portable = stream_logits(OnnxStepBackend(package, threads=1), TOKENS)
    ours = stream_logits(OnnxStepBackend(package, threads=2, cpu_graph_file=graph.path), TOKENS)
    kl_portable, kl_ours = _mean_kl(portable, fp32), _mean_kl(ours, fp32)
    assert kl_ours <= 1.5 * kl_portable + 1e-6, (kl_ours, kl_portable)
    assert (ours.argmax(-1) == portable.argmax(-1)).mean() >= 0.9


def test_bench_measures_the_cpu_graph_beside_the_portable_one(shared_package, tmp_path):
    from rwkv_deploy.cli.main import app

    package_dir = shared(shared_package, "7", "fp16")
    result = CliRunner().invoke(app, [
        "bench", str(package_dir), str(shared(shared_package, "7", "fp32")), str(shared(shared_package, "7", "int8")),
        "--cpu-ops", "--spin-wait", "--baselines", "",
        "--batches", "1,16", "--prefill", "8", "--contexts", "", "--threads", "1,2", "--rounds", "1",
        "--min-seconds", "0.2", "--fidelity-tokens", "0", "--json", "-q", "--work-dir", str(tmp_path / "work"),
        "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.stdout)
    cpu = [r for r in report["rows"] if r["engine"] == "rwkv-deploy-cpu"]
    assert {(r["precision"], r["mode"], r["batch"], r["threads"]) for r in cpu} == {
        (p, "decode", b, t) for p in ("fp16", "fp32", "int8") for b in (1, 16) for t in (1, 2)} | {
        (p, "prefill", 1, t) for p in ("fp16", "int8") for t in (1, 2)}  # fp32 keeps the package's prefill graph
    spinning = [r for r in report["rows"] if r["engine"] == "rwkv-deploy-cpu-spin"]
    assert {(r["precision"], r["batch"], r["threads"]) for r in spinning} == {
        (p, 1, 2) for p in ("fp16", "fp32", "int8")}
    assert all(r["tokens_per_s"] > 0 for r in cpu)
    names = {(r["name"], r["precision"]) for r in report["ratios"]}
    assert {("cpu_decode_b1_vs_portable", "fp16"), ("cpu_decode_b16_vs_portable", "int8"),
            ("cpu_prefill8_vs_portable", "int8")} <= names
    assert any(n.startswith("rwkv-deploy-cpu: packages' step graphs") for n in report["notes"])
