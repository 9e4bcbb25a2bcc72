"""`bench --genai`: each package's ONNX Runtime GenAI folder measured beside our runtime, with its fidelity
against the fp32 reference and the cost ratio the issue sets (GenAI's time per token over ours). On the
committed golden packages: nothing is exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from tests.helpers.golden import golden_checkpoint, golden_package

pytestmark = pytest.mark.slow  # a dozen worker processes

runner = CliRunner()
QUICK = ["--baselines", "", "--batches", "1", "--prefill", "8", "--contexts", "", "--threads", "1", "--rounds", "1",
         "--min-seconds", "0.2", "--json", "-q"]


def _bench(tmp_path: Path, *args: str) -> dict:
    result = runner.invoke(app, ["bench", *args, *QUICK, "--genai", "--work-dir", str(tmp_path / "work"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


def test_genai_rows_come_beside_ours_with_the_same_fidelity(tmp_path: Path) -> None:
    checkpoint = golden_checkpoint("v7-fp32", tmp_path)
    report = _bench(tmp_path, str(golden_package("v7-fp32")), str(golden_package("v7-int8")), "-c", str(checkpoint),
                    "--fidelity-tokens", "32")
    rows = {(r["engine"], r["precision"], r["mode"]): r for r in report["rows"]}
    for precision in ("fp32", "int8"):
        ours, genai = rows[("rwkv-deploy", precision, "decode")], rows[("onnxruntime-genai", precision, "decode")]
        assert genai["tokens_per_s"] > 0 and rows[("onnxruntime-genai", precision, "prefill")]["tokens"] == 8
        # the same graph under GenAI: the same numbers, so the same distance from the reference
        assert genai["kl_mean"] == pytest.approx(ours["kl_mean"], rel=1e-3, abs=1e-9)
        assert genai["top1"] == ours["top1"]
    assert rows[("onnxruntime-genai", "fp32", "decode")]["kl_mean"] < 1e-9
    costs = {r["precision"]: r for r in report["ratios"] if r["name"] == "genai_decode_b1_cost"}
    assert set(costs) == {"fp32", "int8"} and costs["fp32"]["target"] == 1.1 and not costs["fp32"]["higher_is_better"]


def test_a_package_genai_cannot_run_is_a_note_not_a_failure(tmp_path: Path) -> None:
    report = _bench(tmp_path, str(golden_package("v4-fp32")), "--fidelity-tokens", "0")
    assert not [r for r in report["rows"] if r["engine"] == "onnxruntime-genai"]
    assert any(n.startswith("onnxruntime-genai fp32: skipped") and "RWKV-4" in n for n in report["notes"])
