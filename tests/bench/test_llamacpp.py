"""llama.cpp as a bench engine (`--baselines llama.cpp`): built from the llama-cpp-python sdist's llama.cpp, fed the
bench checkpoint through its own converter and quantizer, driven through the sdist's ctypes binding.

The real run builds the library once (about a minute and a half on 2 cores) and measures a tiny RWKV-7 with the
World vocabulary. Its F32 file must give the fp32 reference's logits within float rounding: that proves the whole
route (our Hugging Face folder, its converter, our driving of its C API) hands llama.cpp the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rwkv_deploy.bench.llamacpp import isa_options
from rwkv_deploy.cli.main import app
from tests.helpers.llama_cpp import sdist_missing_reason

pytestmark = pytest.mark.slow  # builds llama.cpp (minutes) and exports

runner = CliRunner()
SHAPE = "7:2:64:65536"  # llama.cpp's converter reads the World vocabulary: 65536 tokens
QUICK = ["--precisions", "fp32,int8", "--batches", "1,4", "--prefill", "16", "--contexts", "", "--threads", "1",
         "--min-seconds", "0.1", "--rounds", "1", "--fidelity-tokens", "32", "--json", "-q"]


def test_the_build_takes_this_cpus_instruction_sets_but_never_amx():
    cpuinfo = "processor : 0\nflags : fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512_vnni amx_tile amx_int8\n"
    options = isa_options(cpuinfo)
    assert "-DGGML_AVX2=ON" in options and "-DGGML_AVX512=ON" in options and "-DGGML_AVX512_VNNI=ON" in options
    assert "-DGGML_AVX512_BF16=OFF" in options and "-DGGML_AVX_VNNI=OFF" in options
    assert not [o for o in options if "AMX" in o]  # AMX stays at the CMAKE_OPTIONS' OFF
    assert "-DGGML_AVX512=OFF" in isa_options("flags : sse4_2 avx avx2 fma f16c\n")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    if sdist_missing_reason():
        pytest.fail(sdist_missing_reason())
    root = tmp_path_factory.mktemp("llamacpp-bench")
    result = runner.invoke(app, ["bench", "--shape", SHAPE, "--baselines", "llama.cpp", "--llamacpp-precisions",
                                 "F32,Q8_0,Q4_0", "--work-dir", str(root / "cache"), "--out", str(root / "out"),
                                 *QUICK])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), root


def test_llama_cpp_rows_come_beside_ours_with_their_fidelity(bench_run):
    report, _ = bench_run
    rows = {(r["engine"], r["precision"], r["mode"], r["batch"], r["tokens"]): r for r in report["rows"]}
    for precision in ("F32", "Q8_0", "Q4_0"):
        for key in (("decode", 1, 0), ("decode", 4, 0), ("prefill", 1, 16)):  # batch 4: its parallel sequences
            row = rows[("llama.cpp", precision, *key)]
            assert row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 0
    # its F32 file is our checkpoint: the fp32 reference's distribution within float rounding
    f32 = rows[("llama.cpp", "F32", "decode", 1, 0)]
    assert f32["kl_mean"] < 1e-9 and f32["top1"] == 1.0
    # its quantized files are not (and Q4_0 less so than Q8_0)
    q8, q4 = rows[("llama.cpp", "Q8_0", "decode", 1, 0)], rows[("llama.cpp", "Q4_0", "decode", 1, 0)]
    assert 1e-7 < q8["kl_mean"] < q4["kl_mean"] < 1.0


def test_ratios_against_llama_cpp_are_quotients_of_the_rows(bench_run):
    report, _ = bench_run
    rows = {(r["engine"], r["precision"], r["mode"], r["batch"], r["tokens"]): r for r in report["rows"]}
    ratios = {(r["name"], r["precision"]): r for r in report["ratios"]}
    decode = ratios[("decode_b1_vs_llamacpp", "int8")]
    assert decode["target"] == 1.0
    assert decode["value"] == pytest.approx(rows[("rwkv-deploy", "int8", "decode", 1, 0)]["tokens_per_s"]
                                            / rows[("llama.cpp", "Q8_0", "decode", 1, 0)]["tokens_per_s"])
    kl = ratios[("kl_mean_vs_llamacpp", "int8")]
    assert kl["value"] == pytest.approx(rows[("rwkv-deploy", "int8", "decode", 1, 0)]["kl_mean"]
                                        / rows[("llama.cpp", "Q8_0", "decode", 1, 0)]["kl_mean"])
    assert ("prefill16_vs_llamacpp", "fp32") in ratios
    assert any("llama.cpp: library" in note for note in report["notes"])


def test_a_given_library_folder_without_the_library_is_a_note_not_a_crash(bench_run, tmp_path: Path):
    _, root = bench_run
    result = runner.invoke(app, ["bench", "--shape", SHAPE, "--baselines", "llama.cpp", "--llamacpp-lib",
                                 str(tmp_path), "--work-dir", str(root / "cache"), "--out", str(tmp_path / "out"),
                                 *QUICK])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert not [r for r in report["rows"] if r["engine"] == "llama.cpp"]
    assert [n for n in report["notes"] if n.startswith("llama.cpp: skipped") and "libllama.so" in n]


def test_versions_llama_cpp_lacks_are_skipped_with_a_note(tmp_path: Path):
    result = runner.invoke(app, ["bench", "--shape", "5:2:64:65536:16", "--baselines", "llama.cpp",
                                 "--work-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
                                 *QUICK[:QUICK.index("--fidelity-tokens")], "--fidelity-tokens", "0", "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert [n for n in notes if n.startswith("llama.cpp: skipped") and "RWKV-6 and RWKV-7 only" in n]
