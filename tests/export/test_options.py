"""ExportOptions refuses what can never export when it is made, before any checkpoint is opened (and so
`rwkv-deploy export` refuses it with one line and exit code 2, in a venv without PyTorch too)."""

from __future__ import annotations

import pytest

from rwkv_deploy.export.options import MIN_OPSET, ExportError, ExportOptions


@pytest.mark.parametrize(("options", "message"), [
    ({"precision": "int3"}, "unknown precision 'int3'; expected one of fp32, fp16, int8, int5, int4"),
    ({"prefill_logits": "some"}, "unknown prefill logits 'some'; expected last or all"),
    ({"ln_x_eps": 0.0}, "--ln-x-eps 0.0: must be a small positive number"),
    ({"ln_x_eps": 1.5}, "--ln-x-eps 1.5: must be a small positive number"),
    ({"opset": MIN_OPSET - 1}, f"--opset {MIN_OPSET - 1}: the exporter writes opsets {MIN_OPSET} and later"),
])
def test_options_that_can_never_export_are_refused_when_made(options: dict, message: str) -> None:
    with pytest.raises(ExportError) as caught:
        ExportOptions(**options)
    assert str(caught.value).startswith(message) and caught.value.exit_code == 2


def test_the_defaults_and_every_listed_choice_are_accepted() -> None:
    assert ExportOptions().precision == "fp32"
    for precision in ("fp32", "fp16", "int8", "int5", "int4"):
        ExportOptions(precision=precision, prefill_logits="all", ln_x_eps=1e-5, opset=MIN_OPSET)
