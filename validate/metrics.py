"""Error metrics on plain numpy arrays: no model, no runtime, so each one can be checked by hand. KL,
log-softmax and top-1 live in rwkv_deploy.fidelity, shared with bench.

Convention: `ref` is the PyTorch reference, `art` the exported artifact. Errors are computed in float64
so that the metric itself adds no rounding. NaN or Inf in `art` makes the error metrics NaN or Inf,
which fails every threshold (a comparison with NaN is never "within limit").
"""

from __future__ import annotations

import numpy as np

from ..fidelity import nonfinite_ok

RELATIVE_FLOOR = 1.0
"""Denominator floor of relative errors: |art - ref| / max(|ref|, floor). Logits and RWKV state values
are O(1) and up; below the floor the error is judged absolutely, so values near zero (fresh-state zeros,
logits close to 0) do not turn a 1e-7 difference into a huge meaningless ratio."""


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


@nonfinite_ok
def max_abs_error(ref: np.ndarray, art: np.ndarray) -> float:
    """max |art - ref| over all elements (NaN if either holds NaN, Inf if only one is infinite)."""
    return float(np.max(np.abs(_f64(art) - _f64(ref))))


@nonfinite_ok
def max_relative_error(ref: np.ndarray, art: np.ndarray, floor: float = RELATIVE_FLOOR) -> float:
    """max |art - ref| / max(|ref|, floor): relative for large values, absolute below `floor`."""
    ref64 = _f64(ref)
    return float(np.max(np.abs(_f64(art) - ref64) / np.maximum(np.abs(ref64), floor)))


def nanmax(values: object) -> float:
    """max that returns NaN when any value is NaN (np.max does, Python's max does not); 0 for no values."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.max(arr)) if arr.size else 0.0


@nonfinite_ok
def growth_slope(errors: np.ndarray, floor: float) -> float:
    """Least-squares slope of log10(max(error, floor)) against step: decades of error gained per step.

    Near 0 for a healthy export (RWKV forgets, so rounding errors do not accumulate); clearly positive
    when the artifact's state drifts away from the reference's. `floor` keeps exact zeros (and errors far
    below any tolerance) from dominating the fit. NaN if any error is NaN.
    """
    errors = _f64(errors)
    if errors.size < 2:
        return 0.0
    if np.isnan(errors).any():
        return float("nan")
    logs = np.log10(np.maximum(errors, floor))
    if not np.isfinite(logs).all():
        return float("inf")
    return float(np.polyfit(np.arange(errors.size, dtype=np.float64), logs, 1)[0])


def quarter_growth(errors: np.ndarray, floor: float) -> float:
    """max(error over the last quarter of steps) / max(error over the first quarter), both floored.

    A ratio well above 1 means the error keeps growing with sequence length, so a longer run would fail
    even if this one stayed within tolerance. NaN if any error is NaN.
    """
    errors = _f64(errors)
    if np.isnan(errors).any():
        return float("nan")
    quarter = max(1, errors.size // 4)
    first = max(float(np.max(errors[:quarter])), floor)
    last = max(float(np.max(errors[-quarter:])), floor)
    return last / first


def matching_prefix_length(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of two [rows, n] token arrays: how many tokens are identical before the first difference."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    differs = a != b
    return np.where(differs.any(axis=-1), np.argmax(differs, axis=-1), a.shape[-1])


def divergence_margins(ref_logits: np.ndarray, ref_tokens: np.ndarray, art_tokens: np.ndarray) -> np.ndarray:
    """Per sequence, at the first position where two greedy decodes differ: how much the reference preferred
    its own token over the artifact's, logit(ref token) - logit(art token); 0 where they never differ.

    `ref_logits` [n, B, V] are the reference's logits each token was chosen from. Up to the first
    difference both sides saw the same tokens, so the reference's logits there are the right yardstick: a
    tiny margin means the reference was nearly undecided, and any rounding could flip the choice.
    """
    ref_tokens, art_tokens = np.atleast_2d(ref_tokens), np.atleast_2d(art_tokens)
    first = matching_prefix_length(ref_tokens, art_tokens)
    margins = np.zeros(ref_tokens.shape[0])
    for b in np.flatnonzero(first < ref_tokens.shape[1]):
        logits = np.asarray(ref_logits[first[b], b], dtype=np.float64)
        margins[b] = logits[ref_tokens[b, first[b]]] - logits[art_tokens[b, first[b]]]
    return margins
