"""Both sides through every step of one token stream, compared at every step.

Each side carries its own recurrent state: the artifact's state outputs are fed back as its next state
inputs, never the reference's, so rounding errors accumulate exactly as they would in deployment. At every
step the logits and every state tensor are measured (`StreamLog`, with `metrics`), and Polygraphy's
`SimpleCompareFunc` gives the per-step verdict on the logits (`PolygraphyLogitsCheck`). Polygraphy's
`Comparator.run` does not fit the loop: it feeds every runner the same inputs from one data loader, whereas
here each side's next state input is its own previous output, and the reference is a PyTorch module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import fidelity
from . import metrics
from .metrics import nanmax
from .sides import Outputs, Side
from .streams import TokenStream
from .thresholds import Thresholds


class PolygraphyLogitsCheck:
    """Per-step pass/fail of the logits with Polygraphy's SimpleCompareFunc (|dlogit| <= atol everywhere).

    Only the logits go through it: SimpleCompareFunc computes min/max/mean/median of the absolute and
    relative error of every output it sees (measured ~15x the cost of metrics.max_abs_error +
    max_relative_error), which for the dozens of large state tensors of a real model would dominate
    the run. State tensors are judged by `metrics` alone.
    """

    def __init__(self, logits_name: str, atol: float, artifact_name: str, reference_name: str) -> None:
        from polygraphy.comparator.compare import SimpleCompareFunc
        from polygraphy.comparator.struct import AccuracyResult

        self.logits_name = logits_name
        # rtol 0: Polygraphy's relative error divides by |reference| + 2e-16, meaningless near zero logits
        self.func = SimpleCompareFunc(check_error_stat="elemwise", atol=atol, rtol=0.0)
        self.pair = (artifact_name, reference_name)
        self.results = AccuracyResult({self.pair: []})

    def __call__(self, ref: Outputs, art: Outputs) -> bool:
        from polygraphy.comparator.struct import IterationResult

        name = self.logits_name
        # SimpleCompareFunc formats both arrays for a verbose log line even when that line is not shown;
        # with numpy summarising every array that costs microseconds instead of ~10 ms per step.
        with np.printoptions(threshold=1, edgeitems=1):
            verdict = self.func(IterationResult({name: art[name]}, runner_name=self.pair[0]),
                                IterationResult({name: ref[name]}, runner_name=self.pair[1]))
        self.results[self.pair].append(verdict)
        return bool(verdict[name])

    def failed_steps(self) -> list[int]:
        return [t for t, verdict in enumerate(self.results[self.pair]) if not all(map(bool, verdict.values()))]


@dataclass
class StreamResult:
    """Everything measured on one token stream: summary numbers, per-state-tensor numbers, per-step curves."""

    name: str
    description: str
    steps: int
    batch: int
    metrics: dict[str, float]
    state: dict[str, dict[str, float]]
    per_step: dict[str, list[float]]
    details: dict[str, str]
    seconds: float


class StreamLog:
    """Accumulates per-step metrics of one stream, then reduces them to a StreamResult."""

    CURVES = ("logits_max_abs", "logits_max_rel", "kl_mean", "kl_max", "top1_agreement", "state_max_rel")

    def __init__(self, logits_name: str, state_names: dict[str, str]) -> None:
        self.logits_name = logits_name
        self.state_names = state_names  # output name -> state tensor name
        self.curves: dict[str, list[float]] = {k: [] for k in self.CURVES}
        self.state_abs: dict[str, list[float]] = {n: [] for n in state_names.values()}
        self.state_rel: dict[str, list[float]] = {n: [] for n in state_names.values()}
        self.kl_rows: list[np.ndarray] = []
        self.top1_rows: list[np.ndarray] = []
        self.nonfinite = 0

    def add(self, ref: Outputs, art: Outputs) -> None:
        r, a = ref[self.logits_name], art[self.logits_name]
        kl, top1 = fidelity.kl_divergence(r, a), fidelity.top1_matches(r, a)
        self.kl_rows.append(kl)
        self.top1_rows.append(top1)
        self.curves["logits_max_abs"].append(metrics.max_abs_error(r, a))
        self.curves["logits_max_rel"].append(metrics.max_relative_error(r, a))
        self.curves["kl_mean"].append(float(np.mean(kl)))
        self.curves["kl_max"].append(float(np.max(kl)))
        self.curves["top1_agreement"].append(float(np.mean(top1)))
        self.nonfinite += fidelity.count_nonfinite(a)
        for output, name in self.state_names.items():
            self.state_abs[name].append(metrics.max_abs_error(ref[output], art[output]))
            self.state_rel[name].append(metrics.max_relative_error(ref[output], art[output]))
            self.nonfinite += fidelity.count_nonfinite(art[output])
        self.curves["state_max_rel"].append(nanmax([v[-1] for v in self.state_rel.values()]))

    def result(self, stream: TokenStream, thresholds: Thresholds, failed_steps: list[int], seconds: float) -> StreamResult:
        logit_errors = np.asarray(self.curves["logits_max_abs"])
        kl, top1 = np.concatenate(self.kl_rows), np.concatenate(self.top1_rows)
        state = {name: {"max_abs": nanmax(self.state_abs[name]), "max_rel": nanmax(self.state_rel[name])}
                 for name in self.state_abs}
        worst_state = max(state, key=lambda n: _sort_key(state[n]["max_rel"]), default="")
        summary = {
            "logits_max_abs": nanmax(logit_errors),
            "logits_max_rel": nanmax(self.curves["logits_max_rel"]),
            "state_max_abs": nanmax([s["max_abs"] for s in state.values()]),
            "state_max_rel": state[worst_state]["max_rel"] if worst_state else 0.0,
            "kl_mean": float(np.mean(kl)),
            "kl_max": float(np.max(kl)),
            "top1_agreement": float(np.mean(top1)),
            "growth_slope": metrics.growth_slope(logit_errors, thresholds.growth_floor),
            "growth_ratio": metrics.quarter_growth(logit_errors, thresholds.growth_floor),
            "nonfinite_values": float(self.nonfinite),
            "steps_out_of_tolerance": float(len(failed_steps)),
        }
        details = {"state_max_rel": f"worst tensor {worst_state}" if worst_state else "",
                   "steps_out_of_tolerance": _first_failures(failed_steps, logit_errors, thresholds)}
        return StreamResult(stream.name, stream.description, stream.steps, stream.batch, summary, state,
                            dict(self.curves), details, seconds)


def _sort_key(value: float) -> float:
    return float("inf") if np.isnan(value) else value


def _first_failures(failed: list[int], logit_errors: np.ndarray, thresholds: Thresholds) -> str:
    if not failed:
        return ""
    t = failed[0]
    return (f"Polygraphy SimpleCompareFunc, |dlogit| <= {thresholds.logits_max_abs:g}: first failing step {t} "
            f"(max |dlogit| {logit_errors[t]:.3g}), {len(failed)}/{logit_errors.size} steps failed")


def run_stream(reference: Side, artifact: Side, stream: TokenStream, thresholds: Thresholds) -> StreamResult:
    """Both sides through every step of `stream`, each on its own state, comparing all outputs each step."""
    start = time.perf_counter()
    manifest = reference.manifest
    log = StreamLog(manifest.logits_output, {e.output: e.name for e in manifest.state})
    step_check = PolygraphyLogitsCheck(manifest.logits_output, thresholds.logits_max_abs, artifact.name, reference.name)
    ref_state, art_state = reference.init_state(stream.batch), artifact.init_state(stream.batch)
    for tokens in stream.tokens:
        ref_out, ref_state = reference.advance(tokens, ref_state)
        art_out, art_state = artifact.advance(tokens, art_state)
        log.add(ref_out, art_out)
        step_check(ref_out, art_out)
    return log.result(stream, thresholds, step_check.failed_steps(), time.perf_counter() - start)
