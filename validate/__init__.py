"""Prove an exported package matches its PyTorch reference: run both on the same tokens, measure, report.

`validate_package` runs the comparison and returns a `ValidationResult` (metrics, checks, pass/fail);
`write_report` turns it into report.json, report.md and report.png. The package is run by the runtime's
own backend (`rwkv_deploy.runtime.backends.make_backend`), as `rwkv-deploy generate` runs it.

Modules: `sides` (the PyTorch reference; the artifact over a runtime backend), `stream_compare` (step by
step, per-step metrics and Polygraphy's verdict), `greedy`, `prefill_check`, `validator` (the whole run),
`result` (options and result), `metrics`, `streams`, `thresholds`, `report`.
"""

from .report import ReportFiles, write_report
from .result import ThresholdsNotMet, ValidateOptions, ValidationError, ValidationResult
from .thresholds import Check, Fp16Thresholds, Fp32Thresholds, Thresholds, thresholds_for
from .validator import validate_package

__all__ = [
    "Check", "Fp16Thresholds", "Fp32Thresholds", "ReportFiles", "Thresholds", "ThresholdsNotMet",
    "ValidateOptions", "ValidationError", "ValidationResult", "thresholds_for", "validate_package", "write_report",
]
