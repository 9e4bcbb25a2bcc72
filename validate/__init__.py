"""Prove an exported package matches its PyTorch reference: run both on the same tokens, measure, report.

`validate_package` runs the comparison and returns a `ValidationResult` (metrics, checks, pass/fail);
`write_report` turns it into report.json, report.md and report.png. The package is run by the runtime's
own backend (`rwkv_deploy.runtime.backends.make_backend`), as `rwkv-deploy generate` runs it.

Modules: `sides` (the PyTorch reference; the artifact over a runtime backend), `stream_compare` (step by
step, per-step metrics and Polygraphy's verdict), `greedy`, `prefill_check`, `validator` (the whole run),
`result` (options and result), `metrics`, `streams`, `thresholds`, `report`.

Attributes are imported lazily (PEP 562): `rwkv_deploy.validate.result` (options, no PyTorch) can be read by
the command line of a runtime-only install without loading the reference models.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReportFiles": ".report", "write_report": ".report",
    "ThresholdsNotMet": ".errors", "ValidateOptions": ".result", "ValidationError": ".errors",
    "ValidationResult": ".result",
    "Check": ".thresholds", "Fp16Thresholds": ".thresholds", "Fp32Thresholds": ".thresholds",
    "Thresholds": ".thresholds", "thresholds_for": ".thresholds",
    "validate_package": ".validator",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
