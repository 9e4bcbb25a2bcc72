"""Prove an exported package matches its PyTorch reference: run both on the same tokens, measure, report.

`validate_package` runs the comparison and returns a `ValidationResult` (metrics, checks, pass/fail);
`write_report` turns it into report.json, report.md and report.png.
"""

from .report import ReportFiles, write_report
from .thresholds import Check, Fp16Thresholds, Fp32Thresholds, Thresholds, thresholds_for
from .validator import (ThresholdsNotMet, ValidateOptions, ValidationError, ValidationResult,
                        validate_package)

__all__ = [
    "Check", "Fp16Thresholds", "Fp32Thresholds", "ReportFiles", "Thresholds", "ThresholdsNotMet",
    "ValidateOptions", "ValidationError", "ValidationResult", "thresholds_for", "validate_package", "write_report",
]
