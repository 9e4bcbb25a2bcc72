"""`rwkv-deploy validate` end to end: a correct export passes with exit 0 and a full report; a broken one
(perturbed weight, corrupted state output, unscaled fp16 MatMul, weights overflowed to inf) fails with exit
1 and names the failing metric; a package or checkpoint that cannot be compared is refused with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.package.manifest import MANIFEST_NAME, sha256_file
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.validate import ValidateOptions, validate_package, write_report
from tests.helpers.random_checkpoints import make_checkpoint
from tests.validate.test_fidelity import export_once

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

runner = CliRunner()
STEPS = 64


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> SimpleNamespace:
    """One RWKV-7 checkpoint exported at fp32 and fp16 (vocab 256: byte tokenizer, so both streams run)."""
    (fp32, checkpoint), (fp16, _) = (export_once(tmp_path_factory, "7", p) for p in ("fp32", "fp16"))
    return SimpleNamespace(checkpoint=checkpoint, fp32=fp32, fp16=fp16)


def run_validate(package: Path, checkpoint: Path, *extra: str):
    return runner.invoke(app, ["validate", str(package), "--checkpoint", str(checkpoint), "--steps", str(STEPS),
                               "--batch", "2", "--threads", "1", "--quiet", *extra])


def broken_copy(package: Path, dest: Path, edit: Callable[[onnx.ModelProto], None], fix_hash: bool = True) -> Path:
    """A copy of `package` whose graph `edit` changed; with `fix_hash` the manifest is updated to match, as a
    faulty exporter would write it, so only validation can tell the package is wrong."""
    shutil.copytree(package, dest)
    graph = dest / read_manifest(dest).graphs["step"].path
    model = onnx.load(graph)
    edit(model)
    onnx.save(model, graph)
    if fix_hash:
        manifest = json.loads((dest / MANIFEST_NAME).read_text())
        manifest["files"][graph.name] = sha256_file(graph)
        (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return dest


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def replace_initializer(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    initializer(model, name).CopyFrom(numpy_helper.from_array(values, name))


def perturb_embedding(model: onnx.ModelProto) -> None:
    """Noise of 1e-2 on the embedding: a small, plausible bug (wrong rounding, stale weights)."""
    emb = numpy_helper.to_array(initializer(model, "model.emb.weight"))
    noise = np.random.default_rng(0).normal(0, 1e-2, emb.shape)
    replace_initializer(model, "model.emb.weight", (emb + noise).astype(emb.dtype))


def offset_state_output(output: str, delta: float) -> Callable[[onnx.ModelProto], None]:
    """An edit that adds `delta` to one state output: the logits of the same step stay exact."""
    def edit(model: onnx.ModelProto) -> None:
        inner = output + ".before_offset"
        for node in model.graph.node:
            node.output[:] = [inner if o == output else o for o in node.output]
            node.input[:] = [inner if i == output else i for i in node.input]
        model.graph.initializer.append(numpy_helper.from_array(np.array(delta, dtype=np.float32), "offset"))
        model.graph.node.append(helper.make_node("Add", [inner, "offset"], [output]))
    return edit


def matmul_weights(model: onnx.ModelProto) -> list[str]:
    """Names of the initializers that are MatMul weights, in graph order (the last one is the head)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def halve_last_ffn_output(model: onnx.ModelProto) -> None:
    """The last FFN's value projection halved, as if an fp16 input scale of 2 were not multiplied back."""
    name = matmul_weights(model)[-2]
    weight = numpy_helper.to_array(initializer(model, name))
    replace_initializer(model, name, (weight.astype(np.float32) * 0.5).astype(weight.dtype))


def overflow_head_weights(model: onnx.ModelProto) -> None:
    """Head weights of 1e5 for a few tokens, as a naive fp16 conversion of out-of-range weights stores them:
    +-inf. (Activation overflow inside an fp16 MatMul cannot be shown on the CPU provider: ONNX Runtime
    upcasts fp16 MatMuls to fp32 there and drops the fp16 round trip of their outputs.)"""
    name = matmul_weights(model)[-1]
    weight = numpy_helper.to_array(initializer(model, name)).copy()
    assert weight.dtype == np.float16
    with np.errstate(over="ignore"):
        weight[:, :4] = np.float32(1e5) * np.sign(weight[:, :4])  # [n_embd, vocab]: tokens 0..3 -> +-inf
    replace_initializer(model, name, weight)


def failed_metrics(report_dir: Path) -> set[str]:
    report = json.loads((report_dir / "report.json").read_text())
    return {c["metric"] for c in report["checks"] if not c["passed"]}


def test_correct_export_passes_with_exit_0_and_writes_json_markdown_and_plot(made):
    result = run_validate(made.fp32, made.checkpoint)  # no --out: the report goes into the package

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("PASS: RWKV-7 fp32")
    out = made.fp32 / "validation"
    assert str(out / "report.md") in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["result"] == "PASS" and report["failed_checks"] == []
    assert {"torch", "onnxruntime", "polygraphy"} <= set(report["versions"])
    assert report["package"]["model"]["version"] == "7"
    assert report["options"]["steps"] == STEPS and report["timings_s"]["total"] > 0
    assert [s["name"] for s in report["streams"]] == ["random", "text"]
    assert all(c["passed"] for c in report["checks"])
    assert {"logits_max_abs", "state_max_rel", "kl_mean", "kl_max", "top1_agreement", "growth_ratio",
            "nonfinite_values", "greedy_divergence_margin"} <= {c["metric"] for c in report["checks"]}
    markdown = (out / "report.md").read_text()
    assert "**PASS**" in markdown and "FAIL" not in markdown
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perturbed_weight_fails_with_exit_1_naming_logits_max_abs(made, tmp_path):
    package = broken_copy(made.fp32, tmp_path / "pkg", perturb_embedding)
    result = run_validate(package, made.checkpoint, "--out", str(tmp_path / "report"))

    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL")
    assert "validation FAILED (" in result.stderr and "logits_max_abs" in result.stderr
    assert "logits_max_abs" in failed_metrics(tmp_path / "report")
    verdict = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if "FAIL" in line)
    assert verdict.startswith("**FAIL**") and "logits_max_abs" in verdict


@pytest.mark.parametrize("delta,metric", [(1e-2, "state_max_rel"), (float("inf"), "nonfinite_values")])
def test_a_corrupted_state_output_is_caught_even_though_that_steps_logits_are_exact(made, tmp_path, delta, metric):
    package = broken_copy(made.fp32, tmp_path / "pkg", offset_state_output("state_out.layer1.att_shift", delta))
    result = validate_package(package, made.checkpoint, ValidateOptions(steps=STEPS, batch=2, threads=1))

    assert not result.passed
    assert metric in {c.metric for c in result.failures}
    random = result.streams[0]
    assert random.per_step["logits_max_abs"][0] <= 1e-4  # the state output is wrong before the logits are
    if metric == "state_max_rel":
        assert random.state["layer1.att_shift"]["max_rel"] >= 1e-2 * 0.99
        # layer 0 never sees layer 1's state: compared tensor by tensor, it stays exact
        assert all(random.state[f"layer0.{t}"]["max_rel"] <= 1e-4 for t in ("att_shift", "wkv", "ffn_shift"))


def test_fp16_thresholds_catch_an_fp16_export_bug_that_fp16_rounding_cannot_explain(made, tmp_path):
    package = broken_copy(made.fp16, tmp_path / "pkg", halve_last_ffn_output)
    result = validate_package(package, made.checkpoint, ValidateOptions(steps=STEPS, batch=2, threads=1))

    assert result.thresholds.precision == "fp16"
    assert {"logits_max_abs", "kl_mean"} <= {c.metric for c in result.failures}


def test_fp16_weights_overflowed_to_inf_fail_and_the_report_stays_valid_json(made, tmp_path):
    package = broken_copy(made.fp16, tmp_path / "pkg", overflow_head_weights, fix_hash=False)
    result = validate_package(package, made.checkpoint,
                              ValidateOptions(steps=STEPS, batch=2, check_hashes=False, threads=1))

    assert not result.passed
    assert {"nonfinite_values", "logits_max_abs", "kl_mean"} <= {c.metric for c in result.failures}
    files = write_report(result, tmp_path / "report")

    def refuse(constant: str) -> None:
        raise AssertionError(f"report.json contains a bare {constant}")

    report = json.loads(files.json.read_text(), parse_constant=refuse)
    assert report["result"] == "FAIL"
    assert "nonfinite_values" in failed_metrics(tmp_path / "report")
    assert "**FAIL**" in files.markdown.read_text() and files.plot.stat().st_size > 0


def test_changed_file_with_a_stale_hash_is_refused_unless_hash_checks_are_skipped(made, tmp_path):
    package = broken_copy(made.fp32, tmp_path / "pkg", perturb_embedding, fix_hash=False)

    refused = run_validate(package, made.checkpoint, "--out", str(tmp_path / "r1"))
    assert refused.exit_code == 2
    assert "sha256 does not match" in refused.stderr and "--no-verify" in refused.stderr

    compared = run_validate(package, made.checkpoint, "--out", str(tmp_path / "r2"), "--no-verify")
    assert compared.exit_code == 1


def test_a_checkpoint_other_than_the_exported_one_is_refused(made, tmp_path):
    other = tmp_path / "rwkv6.pth"
    torch.save(make_checkpoint("6", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=0), other)
    result = run_validate(made.fp32, other, "--out", str(tmp_path / "report"))

    assert result.exit_code == 2
    assert "RWKV-6" in result.stderr and "exported from RWKV-7" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
