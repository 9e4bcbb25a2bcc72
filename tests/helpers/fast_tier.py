"""The fast tier's guard: `make test-fast` runs the tests not marked `slow` in under a minute, which holds only
while none of them exports a model at run time (each export costs seconds). A fast test reads the committed
golden packages (tests/golden/) or builds what it needs without the exporter; one that exports must say
`@pytest.mark.slow`. The guard catches exports in the test process (torch.onnx.export, the one call every
export path goes through) and `rwkv-deploy export` started as a child process."""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
from typing import Iterator, Sequence

import pytest


class ExportInFastTest(AssertionError):
    """A test outside the slow tier exported a model."""


def _refusal(item: pytest.Item, how: str) -> ExportInFastTest:
    return ExportInFastTest(f"{item.nodeid} exports a model at run time ({how}) but is not marked slow: mark it "
                            "@pytest.mark.slow, or read a golden package (tests/golden/) instead")


def _is_export_command(args: object) -> bool:
    """`rwkv-deploy export ...` or `python -m rwkv_deploy.cli ... export ...` as Popen would start it."""
    if isinstance(args, (str, bytes)):
        words = str(args).split()
    elif isinstance(args, Sequence):
        words = [str(a) for a in args]
    else:
        return False
    ours = any("rwkv-deploy" in w or "rwkv_deploy" in w for w in words[:4])
    return ours and "export" in words[1:5]


@contextlib.contextmanager
def exports_refused(item: pytest.Item) -> Iterator[None]:
    """Within this block, exporting fails the test unless `item` is marked slow."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    patches = pytest.MonkeyPatch()
    torch_onnx = importlib.import_module("torch.onnx") if "torch" in sys.modules else None
    if torch_onnx is not None:
        def refuse_export(*args, **kwargs):
            raise _refusal(item, "torch.onnx.export")
        patches.setattr(torch_onnx, "export", refuse_export)
    real_init = subprocess.Popen.__init__

    def guarded_init(self, args, *rest, **kwargs):
        if _is_export_command(args):
            raise _refusal(item, "a child `rwkv-deploy export`")
        real_init(self, args, *rest, **kwargs)
    patches.setattr(subprocess.Popen, "__init__", guarded_init)
    try:
        yield
    finally:
        patches.undo()
