"""`rwkv-deploy package PKG --genai DIR`: the folder's files and their record, and the packages refused."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rwkv_deploy.cli.main import app
from rwkv_deploy.package.manifest import sha256_file
from tests.helpers.small_packages import shared

pytestmark = pytest.mark.slow  # exports and builds GenAI folders

pytest.importorskip("onnx")

runner = CliRunner()


def test_the_folder_holds_the_config_the_decoder_and_a_record_hashing_both(shared_package, tmp_path):
    from rwkv_deploy.targets.genai.folder import check_folder

    out = tmp_path / "genai"
    result = runner.invoke(app, ["package", str(shared(shared_package, "7")), "--genai", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["genai_config.json", "model.onnx", "rwkv-deploy-genai.json"]
    record = json.loads((out / "rwkv-deploy-genai.json").read_text())
    assert record["files"] == {name: sha256_file(out / name) for name in ("genai_config.json", "model.onnx")}
    config = json.loads((out / "genai_config.json").read_text())["model"]
    assert config["type"] == "qwen3_5_text" and config["vocab_size"] == 257 and config["pad_token_id"] == 256
    assert config["decoder"]["inputs"]["past_conv_names"] == "past.%d.conv"
    assert check_folder(out) == []

    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes() + b"\0")
    (out / "extra.bin").write_bytes(b"x")
    assert check_folder(out) == ["model.onnx: sha256 differs from rwkv-deploy-genai.json",
                                 "extra.bin: not listed in rwkv-deploy-genai.json"]


def test_an_existing_folder_is_kept_unless_forced(shared_package, tmp_path):
    out = tmp_path / "genai"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = runner.invoke(app, ["package", str(shared(shared_package, "6")), "--genai", str(out)])
    assert result.exit_code == 2 and "not an empty directory" in result.output
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("kind, why", [
    ("4", "RWKV-4 is not supported"),
    ("6-tuned", "state-tuned package"),
    ("7-no-prefill", "exported without --prefill"),
])
def test_packages_genai_cannot_run_are_refused_in_one_line(shared_package, small_packages, tmp_path, kind, why):
    package = {"4": lambda: shared(shared_package, "4"), "6-tuned": lambda: small_packages["6-tuned"],
               "7-no-prefill": lambda: shared(shared_package, "7", prefill=False)}[kind]()
    out = tmp_path / "genai"
    result = runner.invoke(app, ["package", str(package), "--genai", str(out)])
    assert result.exit_code == 2
    assert why in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_hugging_face_tokenizer_package_tokenizes_through_og_tokenizer(tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from rwkv_deploy.export.package_builder import ExportOptions, export_package
    from rwkv_deploy.targets.genai.folder import check_folder, write_genai_folder
    from tests.helpers.small_packages import small_checkpoint

    text = "hello world, the quick brown fox"
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.train_from_iterator([text] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    package = tmp_path / "pkg"
    export_package(small_checkpoint(tmp_path / "v7.pth", "7", vocab_size=320), package,
                             ExportOptions(tokenizer=str(tmp_path / "tokenizer.json"), prefill=True))
    folder = write_genai_folder(package, tmp_path / "genai").path
    assert check_folder(folder) == []

    tokenizer = og.Tokenizer(og.Model(str(folder)))
    ids = [int(i) for i in tokenizer.encode(text)]
    assert ids == hf.encode(text).ids
    assert tokenizer.decode(ids) == text
