"""`rwkv-deploy bench`: one run measures every engine, prints JSON rows, computes the target ratios, draws a chart.

Tests never assert on speed (a shared 2-core machine); they check what is measured, how it is reported, and
that the ratios are the right quotients of the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.bench import machine
from rwkv_deploy.bench.ratios import compute_ratios
from rwkv_deploy.bench.shapes import ShapeError, parse_shape
from rwkv_deploy.cli.main import app
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.models import load_model
from tests.helpers.random_checkpoints import make_checkpoint

runner = CliRunner()
QUICK = ["--batches", "1,2", "--prefill", "4", "--contexts", "8,16", "--min-seconds", "0.05"]
ROW_KEYS = {"engine", "precision", "mode", "batch", "tokens", "tokens_per_s"}


def test_shapes_parse_and_bad_ones_are_named():
    assert parse_shape("7:12:768:65536") == parse_shape("7:12:768:65536:64")
    assert parse_shape("5:2:64:256:16").version == "5.2"
    for bad in ("7:12:768", "8:1:64:256", "7:a:64:256", "7:2:64:256:48", "7:0:64:256"):
        with pytest.raises(ShapeError, match="--shape"):
            parse_shape(bad)


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("bench")
    result = runner.invoke(app, ["bench", "--shape", "7:2:64:256:16", "--precisions", "fp32,int8", *QUICK,
                                 "--work-dir", str(root / "cache"), "--out", str(root / "out"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), root


def test_json_has_a_row_per_engine_mode_batch_and_length(shape_run):
    data, _ = shape_run
    rows = data["rows"]
    assert all(ROW_KEYS <= set(r) and r["tokens_per_s"] > 0 for r in rows)
    keys = {(r["engine"], r["precision"], r["mode"], r["batch"], r["tokens"]) for r in rows}
    for precision in ("fp32", "int8"):
        assert {("rwkv-deploy", precision, "decode", b, 0) for b in (1, 2)} <= keys
        assert ("rwkv-deploy", precision, "prefill", 1, 4) in keys
        assert {("rwkv-deploy", precision, "decode", 1, n) for n in (8, 16)} <= keys  # context lengths
    assert {("torch-reference", "fp32", "decode", 2, 0), ("torch-reference", "fp32", "prefill", 1, 4)} <= keys
    assert ("rwkv-package", "fp32", "decode", 1, 0) in keys  # the rwkv package has no batch: batch 1 only
    assert ("rwkv-package", "fp32", "decode", 2, 0) not in keys
    assert data["machine"]["memory_read_bytes_per_s"] > 0


def test_ratios_are_quotients_of_rows_from_the_same_run(shape_run):
    data, _ = shape_run
    rows = {(r["engine"], r["precision"], r["mode"], r["batch"], r["tokens"]): r for r in data["rows"]}
    ratios = {(r["name"], r["precision"]): r for r in data["ratios"]}
    decode = rows[("rwkv-deploy", "int8", "decode", 1, 0)]["tokens_per_s"]
    package = rows[("rwkv-package", "fp32", "decode", 1, 0)]["tokens_per_s"]
    ratio = ratios[("decode_b1_vs_rwkv_package", "int8")]
    assert ratio["value"] == pytest.approx(decode / package) and ratio["target"] == 3.0
    short = rows[("rwkv-deploy", "fp32", "decode", 1, 8)]["tokens_per_s"]
    long = rows[("rwkv-deploy", "fp32", "decode", 1, 16)]["tokens_per_s"]
    assert ratios[("context16_vs_8_cost", "fp32")]["value"] == pytest.approx(short / long)  # time ratio
    bandwidth = ratios[("decode_b1_weight_bandwidth", "fp32")]["value"]
    weight_bytes = data["machine"]["decode_weight_bytes"]["fp32"]
    assert bandwidth == pytest.approx(weight_bytes * decode_fp32(rows) / data["machine"]["memory_read_bytes_per_s"])


def decode_fp32(rows: dict) -> float:
    return rows[("rwkv-deploy", "fp32", "decode", 1, 0)]["tokens_per_s"]


def test_report_files_are_written(shape_run):
    _, root = shape_run
    out = root / "out"
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| decode_b1_vs_rwkv_package | int8 |" in (out / "bench.md").read_text()
    assert json.loads((out / "bench.json").read_text())["rows"]


def test_met_and_missed_targets_follow_the_direction_of_each_ratio():
    def r(engine, precision, mode, batch, tokens, tps):
        return {"engine": engine, "precision": precision, "mode": mode, "batch": batch, "tokens": tokens, "tokens_per_s": tps}
    rows = [r("rwkv-deploy", "int4", "decode", 1, 0, 50.0), r("rwkv-deploy", "int4", "decode", 16, 0, 300.0),
            r("rwkv-package", "fp32", "decode", 1, 0, 10.0), r("rwkv-deploy", "int4", "decode", 1, 1024, 50.0),
            r("rwkv-deploy", "int4", "decode", 1, 16384, 40.0)]
    ratios = {x.name: x for x in compute_ratios(rows, {"int4": 10**7}, 10**9, 16384, 1024)}
    assert ratios["decode_b1_vs_rwkv_package"].value == 5.0 and ratios["decode_b1_vs_rwkv_package"].met
    assert ratios["decode_b16_vs_b1"].value == 6.0 and ratios["decode_b16_vs_b1"].met is False
    slow = ratios["context16384_vs_1024_cost"]
    assert slow.value == pytest.approx(1.25) and slow.met is False  # 25% slower per token: missed
    assert ratios["decode_b1_weight_bandwidth"].value == pytest.approx(0.5)


def test_a_package_with_its_checkpoint_and_bad_input(tmp_path):
    checkpoint = tmp_path / "m.pth"
    torch.save(make_checkpoint("5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=1), checkpoint)
    export_package(checkpoint, tmp_path / "pkg", ExportOptions(tokenizer="none"))  # no prefill graph: steps
    result = runner.invoke(app, ["bench", str(tmp_path / "pkg"), "-c", str(checkpoint), *QUICK, "--contexts", "",
                                 "--baselines", "torch-reference", "--work-dir", str(tmp_path / "c"),
                                 "--out", str(tmp_path / "o"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    engines = {r["engine"] for r in json.loads(result.stdout)["rows"]}
    assert engines == {"rwkv-deploy", "torch-reference"}
    missing = runner.invoke(app, ["bench", str(tmp_path / "nothing"), "-q", "--out", str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "manifest.json: no manifest.json" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    both = runner.invoke(app, ["bench", str(tmp_path / "pkg"), "--shape", "7:1:64:256:16", "-q"])
    assert both.exit_code == 2 and "not both" in both.output
    bad = runner.invoke(app, ["bench", "--shape", "7:1:64", "-q"])
    assert bad.exit_code == 2 and "VERSION:LAYERS:WIDTH:VOCAB" in bad.output


def test_decode_weight_bytes_count_every_weight_but_the_embedding(tmp_path):
    checkpoint = tmp_path / "m.pth"
    torch.save(make_checkpoint("7", n_layer=2, n_embd=64, head_size=16, vocab_size=256, seed=2), checkpoint)
    export_package(checkpoint, tmp_path / "pkg", ExportOptions(tokenizer="none"))
    graph = next((tmp_path / "pkg").glob("*.onnx"))
    model = load_model(checkpoint)
    params = sum(p.numel() for n, p in model.named_parameters() if n != "emb.weight") * 4
    counted = machine.decode_weight_bytes(graph)
    assert params * 0.97 <= counted <= params * 1.03  # the exporter may fold or add small constants
    assert machine.memory_read_bandwidth(1, megabytes=64, repeats=1) > 1e8
