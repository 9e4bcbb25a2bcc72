"""Run a whole benchmark: prepare the checkpoint and packages, measure every engine in its own worker
process, measure the machine's memory bandwidth, and return the rows with the ratios the targets use."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rwkv_deploy.errors import RwkvDeployError
from rwkv_deploy.package.manifest import read_manifest
from rwkv_deploy.package.names import MANIFEST_NAME, STEP_GRAPH

from . import machine
from .engines import DEPLOY, RWKV_PACKAGE, TORCH_REFERENCE
from .ratios import Ratio, compute_ratios
from .shapes import ModelShape

BASELINES = (TORCH_REFERENCE, RWKV_PACKAGE)
CONTEXT_SOURCE_ORDER = ("int4", "int8", "fp32", "fp16")  # fastest prefill first: contexts are only a state
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class BenchError(RwkvDeployError):
    exit_code = 2


# Writes the package of `checkpoint` at `precision` (step and prefill graphs, no tokenizer) into `out`. Bench
# runs packages and never imports the exporter; the command passes it in for `--shape`.
Exporter = Callable[[Path, Path, str], None]


@dataclass(frozen=True)
class BenchOptions:
    shape: ModelShape | None = None  # random weights of this shape, exported at each of `precisions`
    packages: tuple[Path, ...] = ()  # or: these exported packages
    checkpoint: Path | None = None  # the packages' checkpoint, for the baselines (with `packages`)
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
    batches: tuple[int, ...] = (1, 4, 16)
    prefill_lengths: tuple[int, ...] = (64, 512)
    contexts: tuple[int, ...] = (1024, 4096, 16384)
    baselines: tuple[str, ...] = BASELINES
    backend: str = "onnxruntime"
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    min_seconds: float = 3.0
    work_dir: Path = Path(".bench-cache")
    seed: int = 0


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    ratios: list[Ratio]
    machine: dict[str, Any]
    options: dict[str, Any]
    notes: list[str]
    seconds: float

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "ratios": [asdict(r) for r in self.ratios], "machine": self.machine,
                           "options": self.options, "notes": self.notes, "seconds": round(self.seconds, 1)},
                          indent=2, default=str) + "\n"


def run_bench(options: BenchOptions, progress: Callable[[str], None] = lambda stage: None,
              export: Exporter | None = None) -> BenchResult:
    """Measure every engine; `export` makes the packages when `options.shape` asks for random weights."""
    started = time.perf_counter()
    if (options.shape is None) == (not options.packages):
        raise BenchError("bench: give package directories or --shape, not both and not neither")
    options.work_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    checkpoint, packages = _prepare(options, progress, export)
    manifests = {p: read_manifest(p) for p in packages}
    step_graphs = {p: m.graphs[STEP_GRAPH] for p, m in manifests.items()}
    first = manifests[packages[0]].model
    version, vocab = first.version, first.vocab_size
    common = {"threads": options.threads, "min_seconds": options.min_seconds, "seed": options.seed,
              "vocab_size": vocab, "version": version, "backend": options.backend}
    by_precision = {g.precision: p for p, g in step_graphs.items()}
    context_states = _context_states(options, by_precision, common, progress) if options.contexts else {}
    jobs = [{**common, "engine": DEPLOY, "precision": step_graphs[p].precision, "package": str(p),
             "batches": list(options.batches), "prefill_lengths": list(options.prefill_lengths),
             "context_states": context_states} for p in packages]
    jobs += _baseline_jobs(options, checkpoint, version, common, notes)
    rows: list[dict[str, Any]] = []
    for job in jobs:
        progress(f"measuring {job['engine']} {job['precision']}")
        rows += _run_worker(job, options.threads)["rows"]
    progress("measuring the memory read bandwidth")
    bandwidth = machine.memory_read_bandwidth(options.threads)
    info = {**machine.describe(), "threads": options.threads, "memory_read_bytes_per_s": bandwidth}
    weight_bytes = {g.precision: machine.decode_weight_bytes(p / g.path) for p, g in step_graphs.items()}
    info["decode_weight_bytes"] = weight_bytes
    ratios = compute_ratios(rows, weight_bytes, bandwidth, max(options.contexts, default=0), min(options.contexts, default=0))
    return BenchResult(rows, ratios, info, _options_dict(options), notes, time.perf_counter() - started)


def _prepare(options: BenchOptions, progress: Callable[[str], None],
             export: Exporter | None) -> tuple[Path | None, list[Path]]:
    if options.packages:
        return options.checkpoint, list(options.packages)
    shape = options.shape
    assert shape is not None
    if export is None:
        raise BenchError("bench: --shape needs the exporter (install rwkv-deploy[export]: it brings PyTorch)")
    label = shape.label.replace(":", "-")
    checkpoint = options.work_dir / f"rwkv{label}-seed{options.seed}.pth"
    if not checkpoint.exists():
        progress(f"writing a random checkpoint of shape {shape.label}")
        shape.write_random_checkpoint(checkpoint, options.seed)
    packages = []
    for precision in options.precisions:
        out = options.work_dir / f"{checkpoint.stem}-{precision}"
        if not (out / MANIFEST_NAME).exists():
            progress(f"exporting the {precision} package (step and prefill graphs; cached in {options.work_dir})")
            export(checkpoint, out, precision)
        packages.append(out)
    return checkpoint, packages


def _context_states(options: BenchOptions, by_precision: dict[str, Path], common: dict[str, Any],
                    progress: Callable[[str], None]) -> dict[int, str]:
    """States after 1k/4k/16k... tokens, made once with the fastest package: decode cost at a context only
    needs a state that has seen that many tokens, and every package of one model shares the state format."""
    source = next((by_precision[p] for p in CONTEXT_SOURCE_ORDER if p in by_precision), next(iter(by_precision.values())))
    out_dir = options.work_dir / f"contexts-{source.name}-seed{options.seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = sorted(options.contexts)
    existing = {n: str(out_dir / f"context-{n}.npz") for n in wanted if (out_dir / f"context-{n}.npz").exists()}
    if len(existing) == len(wanted):
        return existing
    progress(f"feeding {wanted[-1]} tokens through {source.name} for the context-length states")
    job = {**common, "engine": DEPLOY, "precision": "", "package": str(source), "make_contexts": True,
           "contexts": wanted, "context_chunk": 512, "work_dir": str(out_dir)}
    return {int(k): v for k, v in _run_worker(job, options.threads)["contexts"].items()}


def _baseline_jobs(options: BenchOptions, checkpoint: Path | None, version: str, common: dict[str, Any],
                   notes: list[str]) -> list[dict[str, Any]]:
    jobs = []
    for engine in options.baselines:
        if checkpoint is None:
            notes.append(f"{engine}: skipped (no --checkpoint given for the packages)")
            continue
        if importlib.util.find_spec("torch") is None:
            notes.append(f"{engine}: skipped (PyTorch is not installed: pip install \"rwkv-deploy[export]\")")
            continue
        if engine == RWKV_PACKAGE:
            if importlib.util.find_spec("rwkv") is None:
                notes.append("rwkv-package: skipped (BlinkDL's rwkv package is not installed: pip install rwkv)")
                continue
            if checkpoint.suffix != ".pth":
                notes.append(f"rwkv-package: skipped ({checkpoint.name} is not a BlinkDL .pth file)")
                continue
        jobs.append({**common, "engine": engine, "precision": "fp32", "checkpoint": str(checkpoint),
                     "batches": list(options.batches), "prefill_lengths": list(options.prefill_lengths)})
    return jobs


def _run_worker(job: dict[str, Any], threads: int) -> dict[str, Any]:
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    with tempfile.TemporaryDirectory(prefix="rwkv-bench-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        done = subprocess.run([sys.executable, "-m", "rwkv_deploy.bench.worker", str(job_file), str(out_file)],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"bench: the {job['engine']} {job['precision']} worker failed: {last}")
        return json.loads(out_file.read_text())


def _options_dict(options: BenchOptions) -> dict[str, Any]:
    data = asdict(options)
    data["shape"] = options.shape.label if options.shape else None
    return data
