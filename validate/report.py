"""The validation report: report.json for machines, report.md for people, report.png for the error curves.

JSON has no NaN or Infinity, and a failing artifact produces exactly those, so non-finite numbers are
written as the strings "NaN", "Infinity" and "-Infinity": every JSON parser reads the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import create_new_file, is_link
from rwkv_deploy.package.names import STEP_GRAPH
from rwkv_deploy.staging import staged_directory

from .validator import ValidationResult

PLOT_FLOOR = 1e-12  # exact zeros cannot be drawn on a log axis


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    plot: Path



def artifact_runtime(result: ValidationResult) -> str:
    """What ran the artifact, in words (the validator's description of the runtime backend)."""
    return result.artifact_runtime or f"the runtime's {result.options.backend} backend"

REPORT_FILES = ("report.json", "report.md", "report.png")


class ReportTargetError(RefusedError):
    """The report folder cannot be (re)written without following a link or deleting someone's files."""


def check_report_target(out_dir: str | Path) -> None:
    """Refuse a report folder that is a symbolic link, not a folder, or holds anything but an earlier
    report: the new report replaces the whole folder, so nothing else may be in it. Checked before
    validating (and again when writing)."""
    out = Path(out_dir)
    if is_link(out):
        raise ReportTargetError(f"{out}: is a symbolic link; refusing to write the report through it")
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise ReportTargetError(f"{out}: exists and is not a folder")
    links = sorted(p.name for p in out.iterdir() if is_link(p))
    if links:
        raise ReportTargetError(f"{out / links[0]}: is a symbolic link; refusing to write the report there")
    others = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES or not stat.S_ISREG(os.lstat(p).st_mode))
    if others:
        raise ReportTargetError(f"{out}: holds {others[0]!r}, which is not a validation report file; give an empty "
                                "or new folder with --report-dir")


def write_report(result: ValidationResult, out_dir: str | Path) -> ReportFiles:
    """Write report.json, report.md and report.png as a fresh folder `out_dir`: built beside it, then renamed
    into place (an earlier report there is replaced as a whole; links are never followed)."""
    out = Path(out_dir)
    check_report_target(out)
    with staged_directory(out, replace=True) as tmp:
        create_new_file(tmp / REPORT_FILES[0],
                        (json.dumps(json_safe(report_dict(result)), indent=2, allow_nan=False) + "\n").encode())
        plot_errors(result, tmp / REPORT_FILES[2])
        create_new_file(tmp / REPORT_FILES[1], markdown(result, REPORT_FILES[2]).encode())
        check_report_target(out)
    return ReportFiles(*(out / name for name in REPORT_FILES))


def report_dict(result: ValidationResult) -> dict[str, Any]:
    """Everything measured and decided, plus what was compared with what, as plain data."""
    m = result.manifest
    return {
        "result": "PASS" if result.passed else "FAIL",
        "summary": result.summary_line(),
        "failed_checks": [c.describe() for c in result.failures],
        "package": {"dir": result.package_dir, "graph": asdict(m.graphs[STEP_GRAPH]), "model": asdict(m.model),
                    "tokenizer": m.tokenizer.kind, "state_tensors": [e.name for e in m.state],
                    "producer": m.producer, "source": m.source},
        "reference": {"checkpoint": result.checkpoint, "runtime": f"PyTorch {result.versions['torch']}, fp32, CPU"},
        "artifact": {"runtime": artifact_runtime(result)},
        "options": asdict(result.options),
        "thresholds": result.thresholds.to_dict(),
        "checks": [asdict(c) for c in result.checks],
        "streams": [asdict(s) for s in result.streams],
        "greedy": asdict(result.greedy) | {"min_fraction": result.greedy.min_fraction,
                                           "max_margin": result.greedy.max_margin},
        "timings_s": result.timings,
        "versions": result.versions,
        "notes": result.notes,
    }


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by its name, recursively, and numpy scalars unwrapped."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


# -- markdown -------------------------------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


_STREAM_ROWS = (
    ("logits_max_abs", "logits: max abs error"),
    ("logits_max_rel", "logits: max relative error (floor 1)"),
    ("kl_mean", "KL(ref || artifact): mean, nats"),
    ("kl_max", "KL(ref || artifact): max, nats"),
    ("top1_agreement", "top-1 agreement"),
    ("state_max_abs", "state: max abs error (worst tensor)"),
    ("state_max_rel", "state: max relative error (floor 1, worst tensor)"),
    ("growth_slope", "error growth: slope of log10 max error per step"),
    ("growth_ratio", "error growth: last / first quarter max error"),
    ("steps_out_of_tolerance", "steps with logits out of tolerance (Polygraphy)"),
    ("nonfinite_values", "NaN / Inf values in artifact outputs"),
)


def markdown(result: ValidationResult, plot_name: str) -> str:
    """A readable summary: the verdict first, then what was compared, the checks, and the details."""
    m, o = result.manifest, result.options
    graph = m.graphs[STEP_GRAPH]
    verdict = (f"**PASS**: all {len(result.checks)} checks passed" if result.passed else
               f"**FAIL**: {len(result.failures)} of {len(result.checks)} checks failed: "
               + "; ".join(c.describe() for c in result.failures))
    lines = [f"# Validation of {Path(result.package_dir).name}", "", verdict, "", result.summary_line(), "",
             "## What was compared", "",
             f"- Artifact: `{Path(result.package_dir) / graph.path}` ({graph.precision}, opset {graph.opset}), "
             f"{artifact_runtime(result)}",
             f"- Reference: `{result.checkpoint}` in PyTorch {result.versions['torch']}, fp32"
             + (f", ln_x_eps {m.source['ln_x_eps']}" if m.source.get("ln_x_eps") is not None else ""),
             f"- Model: RWKV-{m.model.version}, {m.model.n_layer} layers x {m.model.n_embd}, vocab {m.model.vocab_size}, "
             f"tokenizer {m.tokenizer.kind}",
             f"- {o.steps} steps x {o.batch} sequences per stream; each side carries its own state (the artifact's "
             f"state outputs are its next inputs); the logits and all {len(m.state)} state tensors compared at every step",
             *[f"- Stream `{s.name}`: {s.description}" for s in result.streams],
             f"- Greedy decoding: {result.greedy.prompt_length}-token prompts from the `{result.greedy.prompt_stream}` "
             f"stream, {result.greedy.tokens} tokens decoded by each side independently",
             *[f"- Note: {n}" for n in result.notes],
             "", f"## Checks ({result.thresholds.precision} thresholds)", ""]
    lines += _table(["check", "stream", "value", "limit", "result"],
                    [[c.metric, c.scope, _num(c.value), f"{c.op} {c.limit:g}", ("pass" if c.passed else "**FAIL**")
                      + (f" ({c.detail})" if c.detail and not c.passed else "")] for c in result.checks])
    lines += ["", "## Metrics per stream", ""]
    lines += _table(["metric"] + [s.name for s in result.streams],
                    [[label] + [_num(s.metrics[key]) for s in result.streams] for key, label in _STREAM_ROWS])
    lines += ["", "## State tensors (max over steps and sequences)", ""]
    lines += _table(["tensor"] + [f"{s.name} {k}" for s in result.streams for k in ("max abs", "max rel")],
                    [[e.name] + [_num(s.state[e.name][k]) for s in result.streams for k in ("max_abs", "max_rel")]
                     for e in m.state])
    lines += ["", "## Greedy decoding", ""]
    lines += _table(["sequence", "identical tokens before first divergence",
                     "reference's preference for its token where they part (logits)"],
                    [[str(b), f"{n} / {result.greedy.tokens}", _num(margin) if n < result.greedy.tokens else "-"]
                     for b, (n, margin) in enumerate(zip(result.greedy.matched, result.greedy.margins))])
    lines += ["", "## Error per step", "", f"![error per step]({plot_name})", "",
              "## Environment and timings", ""]
    lines += _table(["", ""], [[k, v] for k, v in result.versions.items()]
                    + [[f"{k} (s)", f"{v:.2f}"] for k, v in result.timings.items()])
    return "\n".join(lines) + "\n"


# -- plot -----------------------------------------------------------------------------------------------------


def _plottable(values: list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(arr), np.maximum(arr, PLOT_FLOOR), np.nan)


def plot_errors(result: ValidationResult, path: Path) -> None:
    """Logit max abs error and worst state relative error per step, log scale, one line per stream."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    panels = (("logits_max_abs", "logits: max |artifact - reference|", result.thresholds.logits_max_abs),
              ("state_max_rel", "state: max relative error (worst tensor)", result.thresholds.state_max_rel))
    for ax, (key, title, limit) in zip(fig.subplots(1, 2), panels):
        for stream in result.streams:
            values = stream.per_step[key]
            bad = int(np.count_nonzero(~np.isfinite(values)))
            ax.plot(_plottable(values), label=stream.name + (f" ({bad} steps NaN/Inf)" if bad else ""))
        ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"{result.thresholds.precision} limit")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{Path(result.package_dir).name}: {'PASS' if result.passed else 'FAIL'}")
    fig.savefig(path, dpi=100)
