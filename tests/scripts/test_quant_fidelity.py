"""scripts/quant_fidelity.py: the fidelity of a quantization setting on bench's token stream (docs/bench.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from rwkv_deploy.export.package_builder import ExportOptions, export_package
from tests.helpers.small_packages import small_checkpoint

import pytest

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quant_fidelity.py"


def load_script():
    spec = importlib.util.spec_from_file_location("quant_fidelity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kl_of_a_setting_and_of_a_precision(tmp_path, capsys):
    checkpoint = small_checkpoint(tmp_path / "m.pth", "7")
    export_package(checkpoint, tmp_path / "fp32", ExportOptions(tokenizer="none"))
    graph = next((tmp_path / "fp32").glob("*.onnx"))
    script = load_script()
    assert script.main([str(graph), str(checkpoint), "--precision", "int8", "--tokens", "16"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    coarse = '{"bits": 4, "block_size": 128, "symmetric": true, "accuracy_level": 4, "head_bits": 4, "embedding_bits": 4}'
    assert script.main([str(graph), str(checkpoint), "--config", coarse, "--tokens", "16"]) == 0
    int4 = json.loads(capsys.readouterr().out)
    assert int8["fidelity_tokens"] == int4["fidelity_tokens"] == 16
    assert 0 < int8["kl_mean"] < int4["kl_mean"]  # rounding shows, and coarser rounding shows more
