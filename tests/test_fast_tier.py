"""The fast tier's guard (tests/helpers/fast_tier.py, wired in tests/conftest.py): a test not marked slow that
exports fails with a line that says what to do; a slow one exports freely."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.helpers.fast_tier import ExportInFastTest, exports_refused


def _item(slow: bool) -> SimpleNamespace:
    marker = pytest.mark.slow.mark if slow else None
    return SimpleNamespace(nodeid="tests/x.py::test_y", get_closest_marker=lambda name: marker)


def test_this_fast_test_is_guarded_by_the_conftest_hook() -> None:
    with pytest.raises(ExportInFastTest, match="is not marked slow"):
        torch.onnx.export(torch.nn.Identity(), (torch.zeros(1),), None, dynamo=True)


def test_a_child_export_command_is_refused_in_a_fast_test() -> None:
    with pytest.raises(ExportInFastTest, match="child `rwkv-deploy export`"):
        subprocess.run([sys.executable, "-m", "rwkv_deploy.cli", "export", "x.pth"])
    with pytest.raises(ExportInFastTest):
        subprocess.run("rwkv-deploy export x.pth -o out", shell=True)


def test_other_child_processes_run() -> None:
    done = subprocess.run([sys.executable, "-c", "print('export')"], capture_output=True, text=True)
    assert done.stdout == "export\n"


def test_a_slow_item_is_left_alone_and_each_patch_is_undone() -> None:
    outer = torch.onnx.export  # this test is fast: the conftest hook's refusal is in place
    with exports_refused(_item(slow=True)):
        assert torch.onnx.export is outer
    with exports_refused(_item(slow=False)):
        assert torch.onnx.export is not outer
        with pytest.raises(ExportInFastTest, match="tests/x.py::test_y"):
            torch.onnx.export(torch.nn.Identity(), (torch.zeros(1),), None)
    assert torch.onnx.export is outer
