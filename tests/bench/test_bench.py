"""`rwkv-deploy bench`: one run measures every engine, prints JSON rows, computes the target ratios, draws a chart.

Tests never assert on speed (a shared 2-core machine); they check what is measured, how it is reported, and
that the ratios are the right quotients of the rows."""

from __future__ import annotations

import json
from pathlib import Path

from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rwkv_deploy.bench import fidelity, machine
from rwkv_deploy.bench.options import DEFAULTS
from rwkv_deploy.bench.ratios import compute_ratios
from rwkv_deploy.bench.shapes import ShapeError, parse_shape
from rwkv_deploy.cli.main import app
from rwkv_deploy.export.package_builder import ExportOptions, export_package
from rwkv_deploy.models import load_model
from tests.helpers.random_checkpoints import make_checkpoint

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

runner = CliRunner()
QUICK = ["--batches", "1,2", "--prefill", "4", "--contexts", "8,16", "--min-seconds", "0.05"]
ROW_KEYS = {"engine", "precision", "mode", "batch", "tokens", "threads", "tokens_per_s", "kl_mean", "top1"}
RWKVCPP = ("FP32", "FP16", "Q8_0", "Q5_1", "Q4_0")


def test_shapes_parse_and_bad_ones_are_named():
    assert parse_shape("7:12:768:65536") == parse_shape("7:12:768:65536:64")
    assert parse_shape("5:2:64:256:16").version == "5.2"
    for bad in ("7:12:768", "8:1:64:256", "7:a:64:256", "7:2:64:256:48", "7:0:64:256"):
        with pytest.raises(ShapeError, match="--shape"):
            parse_shape(bad)


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory) -> tuple[dict, Path]:
    """One bench run with every engine, rwkv.cpp built from ../shared/vendor/rwkv.cpp (once per test session,
    about 30 s of the 2-core CI machine), at 1 and 2 threads, 2 rounds."""
    root = tmp_path_factory.mktemp("bench")
    result = runner.invoke(app, ["bench", "--shape", "7:2:64:256:16", "--precisions", "fp32,int8", *QUICK,
                                 "--threads", "1,2", "--rounds", "2", "--fidelity-tokens", "24", "--spin-wait",
                                 "--work-dir", str(root / "cache"), "--out", str(root / "out"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), root


def keyed(data: dict) -> dict[tuple, dict]:
    return {(r["engine"], r["precision"], r["mode"], r["batch"], r["tokens"], r["threads"]): r for r in data["rows"]}


def test_json_has_a_row_per_engine_mode_batch_length_and_thread_count(shape_run):
    data, _ = shape_run
    rows = data["rows"]
    assert all(ROW_KEYS <= set(r) and r["tokens_per_s"] > 0 and r["rounds"] == 2 for r in rows)
    keys = set(keyed(data))
    for threads in (1, 2):
        for precision in ("fp32", "int8"):
            assert {("rwkv-deploy", precision, "decode", b, 0, threads) for b in (1, 2)} <= keys
            assert ("rwkv-deploy", precision, "prefill", 1, 4, threads) in keys
            assert {("rwkv-deploy", precision, "decode", 1, n, threads) for n in (8, 16)} <= keys  # contexts
        assert {("torch-reference", "fp32", "decode", 2, 0, threads), ("torch-reference", "fp32", "prefill", 1, 4, threads)} <= keys
        assert ("rwkv-package", "fp32", "decode", 1, 0, threads) in keys  # no batch API: batch 1 only
        assert ("rwkv-package", "fp32", "decode", 2, 0, threads) not in keys
        for precision in RWKVCPP:  # rwkv.cpp: decode one token at a time, prefill in its sequence mode
            assert {("rwkv.cpp", precision, "decode", 1, 0, threads), ("rwkv.cpp", precision, "prefill", 1, 4, threads)} <= keys
            assert ("rwkv.cpp", precision, "decode", 2, 0, threads) not in keys
    assert all(v > 0 for v in data["machine"]["memory_read_bytes_per_s"].values())


def test_spin_waiting_rows_are_decode_at_batch_1_above_one_thread_with_the_same_fidelity(shape_run):
    data, _ = shape_run
    rows = keyed(data)
    spinning = {k: r for k, r in rows.items() if k[0] == "rwkv-deploy-spin"}
    assert set(spinning) == {("rwkv-deploy-spin", p, "decode", 1, 0, 2) for p in ("fp32", "int8")}
    for (_, precision, *_), row in spinning.items():
        plain = rows[("rwkv-deploy", precision, "decode", 1, 0, 2)]
        assert row["kl_mean"] == plain["kl_mean"] and row["top1"] == plain["top1"]
    ratios = {(r["name"], r["precision"], r["threads"]): r for r in data["ratios"]}
    q8 = rows[("rwkv.cpp", "Q8_0", "decode", 1, 0, 2)]["tokens_per_s"]
    ratio = ratios[("decode_b1_spinning_vs_rwkvcpp", "int8", 2)]
    assert ratio["value"] == pytest.approx(spinning[("rwkv-deploy-spin", "int8", "decode", 1, 0, 2)]["tokens_per_s"] / q8)
    assert ("decode_b1_spinning_vs_rwkvcpp", "int8", 1) not in ratios


def test_every_row_carries_its_fidelity_against_the_fp32_reference(shape_run):
    data, _ = shape_run
    kl = {(r["engine"], r["precision"]): r["kl_mean"] for r in data["rows"]}
    top1 = {(r["engine"], r["precision"]): r["top1"] for r in data["rows"]}
    assert all(r["fidelity_tokens"] == 24 for r in data["rows"])
    assert kl[("torch-reference", "fp32")] == 0 and top1[("torch-reference", "fp32")] == 1
    # the same checkpoint went through rwkv.cpp's converter: its FP32 matches the reference (float rounding only)
    for engine, precision in (("rwkv-deploy", "fp32"), ("rwkv-package", "fp32"), ("rwkv.cpp", "FP32")):
        assert kl[(engine, precision)] < 1e-9 and top1[(engine, precision)] == 1
    assert kl[("rwkv.cpp", "FP16")] < kl[("rwkv.cpp", "Q8_0")] < kl[("rwkv.cpp", "Q5_1")] < kl[("rwkv.cpp", "Q4_0")]
    assert 0 < kl[("rwkv-deploy", "int8")] < 0.01


def test_ratios_are_quotients_of_rows_from_the_same_run(shape_run):
    data, _ = shape_run
    rows = keyed(data)
    ratios = {(r["name"], r["precision"], r["threads"]): r for r in data["ratios"]}
    for threads in (1, 2):
        decode = rows[("rwkv-deploy", "int8", "decode", 1, 0, threads)]["tokens_per_s"]
        package = rows[("rwkv-package", "fp32", "decode", 1, 0, threads)]["tokens_per_s"]
        ratio = ratios[("decode_b1_vs_rwkv_package", "int8", threads)]
        assert ratio["value"] == pytest.approx(decode / package) and ratio["target"] == 3.0
        q8 = rows[("rwkv.cpp", "Q8_0", "decode", 1, 0, threads)]["tokens_per_s"]
        ratio = ratios[("decode_b1_vs_rwkvcpp", "int8", threads)]
        assert ratio["value"] == pytest.approx(decode / q8) and ratio["target"] == 1.2
        fp32_prefill = rows[("rwkv-deploy", "fp32", "prefill", 1, 4, threads)]["tokens_per_s"]
        their_prefill = rows[("rwkv.cpp", "FP32", "prefill", 1, 4, threads)]["tokens_per_s"]
        assert ratios[("prefill4_vs_rwkvcpp", "fp32", threads)]["value"] == pytest.approx(fp32_prefill / their_prefill)
        short = rows[("rwkv-deploy", "fp32", "decode", 1, 8, threads)]["tokens_per_s"]
        long = rows[("rwkv-deploy", "fp32", "decode", 1, 16, threads)]["tokens_per_s"]
        assert ratios[("context16_vs_8_cost", "fp32", threads)]["value"] == pytest.approx(short / long)  # time ratio
        bandwidth = ratios[("decode_b1_weight_bandwidth", "fp32", threads)]["value"]
        weight_bytes = data["machine"]["decode_weight_bytes"]["fp32"]
        measured = data["machine"]["memory_read_bytes_per_s"][str(threads)]
        fp32 = rows[("rwkv-deploy", "fp32", "decode", 1, 0, threads)]["tokens_per_s"]
        assert bandwidth == pytest.approx(weight_bytes * fp32 / measured)
    kl = ratios[("kl_mean_vs_rwkvcpp", "int8", None)]
    ours, theirs = rows[("rwkv-deploy", "int8", "decode", 1, 0, 1)], rows[("rwkv.cpp", "Q8_0", "decode", 1, 0, 1)]
    assert kl["value"] == pytest.approx(ours["kl_mean"] / theirs["kl_mean"]) and kl["target"] == 1.0
    assert kl["met"] == (kl["value"] <= 1.0)


def test_report_files_are_written(shape_run):
    _, root = shape_run
    out = root / "out"
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| decode_b1_vs_rwkvcpp | int8 | 2 |" in (out / "bench.md").read_text()
    assert json.loads((out / "bench.json").read_text())["rows"]


def test_met_and_missed_targets_follow_the_direction_of_each_ratio():
    def r(engine, precision, mode, batch, tokens, tps):
        return {"engine": engine, "precision": precision, "mode": mode, "batch": batch, "tokens": tokens, "threads": 2,
                "tokens_per_s": tps}
    rows = [r("rwkv-deploy", "int4", "decode", 1, 0, 50.0), r("rwkv-deploy", "int4", "decode", 16, 0, 300.0),
            r("rwkv-package", "fp32", "decode", 1, 0, 10.0), r("rwkv-deploy", "int4", "decode", 1, 1024, 50.0),
            r("rwkv-deploy", "int4", "decode", 1, 16384, 40.0)]
    ratios = {x.name: x for x in compute_ratios(rows, {"int4": 10**7}, {2: 10**9}, 16384, 1024)}
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
                                 "--baselines", "torch-reference", "--threads", "1", "--rounds", "1",
                                 "--fidelity-tokens", "0", "--work-dir", str(tmp_path / "c"),
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


def test_fidelity_is_kl_of_the_reference_against_the_engine_and_top1_agreement():
    reference = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert fidelity.compare(reference, reference) == {"kl_mean": 0.0, "kl_max": 0.0, "top1": 1.0, "fidelity_tokens": 2}
    other = np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    p = np.exp(reference[1]) / np.exp(reference[1]).sum()
    q = np.exp(other[1]) / np.exp(other[1]).sum()
    result = fidelity.compare(reference, other)
    assert result["kl_max"] == pytest.approx(float((p * np.log(p / q)).sum()))
    assert result["kl_mean"] == pytest.approx(result["kl_max"] / 2) and result["top1"] == 0.5
    tokens = fidelity.token_stream(256, 16, seed=0)
    assert (tokens == fidelity.token_stream(256, 16, seed=0)).all() and tokens.max() < 256


def test_the_command_line_takes_its_defaults_from_bench_options(monkeypatch):
    seen = []

    def capture(options, progress, **writers):  # export=, write_genai=
        seen.append(options)
        raise RuntimeError("captured")
    monkeypatch.setattr("rwkv_deploy.bench.run.run_bench", capture)
    runner.invoke(app, ["bench", "--shape", "7:1:64:256:16", "-q"])
    assert seen and seen[0] == replace(DEFAULTS, shape=parse_shape("7:1:64:256:16"))


def test_rwkvcpp_that_cannot_be_had_is_a_note_not_a_crash(tmp_path):
    checkpoint = tmp_path / "m.pth"
    torch.save(make_checkpoint("7", n_layer=1, n_embd=64, head_size=16, vocab_size=256, seed=1), checkpoint)
    export_package(checkpoint, tmp_path / "pkg", ExportOptions(tokenizer="none"))
    result = runner.invoke(app, ["bench", str(tmp_path / "pkg"), "-c", str(checkpoint), *QUICK, "--contexts", "",
                                 "--baselines", "rwkv.cpp", "--rwkvcpp-lib", str(tmp_path / "missing.so"),
                                 "--threads", "1", "--rounds", "1", "--fidelity-tokens", "4",
                                 "--work-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["engine"] for r in data["rows"]} == {"rwkv-deploy"}
    assert any("rwkv.cpp: skipped" in n and "missing.so" in n for n in data["notes"])
    unknown = runner.invoke(app, ["bench", str(tmp_path / "pkg"), "--baselines", "ollama", "-q"])
    assert unknown.exit_code == 2 and "ollama" in unknown.output and "llama.cpp" in unknown.output  # the choices


def test_a_shape_too_large_for_this_machines_memory_is_one_line_before_anything_is_allocated(tmp_path):
    """40 B parameters pass the plausibility cap (50 B) but not a 23 GiB machine: one line, exit 2, no traceback."""
    result = runner.invoke(app, ["bench", "--shape", "7:48:8192:65536", "--baselines", "", "--contexts", "",
                                 "--work-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "-q"])
    have = machine_memory()
    if have is not None and 4 * parse_shape("7:48:8192:65536").parameters <= have:
        pytest.skip("this machine could hold the weights")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "need about" in lines[0] and "GiB of memory" in lines[0]
    assert not list((tmp_path / "c").glob("*.pth"))


def machine_memory():
    from rwkv_deploy.bench.shapes import physical_memory

    return physical_memory()
