"""Run a whole benchmark: prepare the checkpoint, the packages and rwkv.cpp's files, measure every engine in
worker processes of their own, interleaved over rounds at each thread count, measure each engine's fidelity
on one fixed token stream and the machine's memory bandwidth, and return the rows with the target ratios."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rwkv_deploy.errors import RefusedError, RwkvDeployError
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.package.names import MANIFEST_NAME, STEP_GRAPH

from . import machine
from .fidelity import FIELDS as FIDELITY_FIELDS
from .fidelity import token_stream
from .options import (BASELINES, DEPLOY, DEPLOY_CPU, DEPLOY_CPU_SPIN, DEPLOY_SPIN, SPINNING, GENAI, KNOWN_BASELINES, LLAMACPP, RWKV_PACKAGE, RWKVCPP, TORCH_REFERENCE,
                      BenchOptions)
from .ratios import Ratio, compute_ratios

__all__ = ["BASELINES", "BenchError", "BenchOptions", "BenchResult", "run_bench"]

CONTEXT_SOURCE_ORDER = ("int4", "int5", "int8", "fp32", "fp16")  # fastest prefill first: contexts are only a state
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ROW_KEY = ("engine", "precision", "mode", "batch", "tokens", "threads")


class BenchError(RefusedError):
    """Bench options that do not fit together, or a package bench cannot measure."""


# Writes the package of `checkpoint` at `precision` (step and prefill graphs, no tokenizer) into `out`. Bench
# runs packages and never imports the exporter; the command passes it in for `--shape`.
Exporter = Callable[[Path, Path, str], None]
# Writes the ONNX Runtime GenAI folder of a package (`package --genai`) into a folder, replacing it; raises an
# RwkvDeployError for a package GenAI cannot run. The command passes it in: bench does not import the targets.
GenaiWriter = Callable[[Path, Path], None]
# (package, graph file) -> what was written: targets.cpu's write_cpu_graph (its `prefill`: the CPU prefill graph)
CpuGraphWriter = Callable[[Path, Path], Any]
Progress = Callable[[str], None]


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    ratios: list[Ratio]
    machine: dict[str, Any]
    options: dict[str, Any]
    notes: list[str]
    seconds: float

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "ratios": [asdict(r) | {"met": r.met} for r in self.ratios],
                           "machine": self.machine, "options": self.options, "notes": self.notes,
                           "seconds": round(self.seconds, 1)}, indent=2, default=str) + "\n"


def run_bench(options: BenchOptions, progress: Progress = lambda stage: None,
              export: Exporter | None = None, write_genai: GenaiWriter | None = None,
              write_cpu_graph: CpuGraphWriter | None = None) -> BenchResult:
    """Measure every engine; `export` makes the packages when `options.shape` asks for random weights,
    `write_genai` their GenAI folders when `options.genai` asks for GenAI, `write_cpu_graph` the CPU step graphs
    of fp16 packages when `options.cpu_ops` asks for them."""
    started = time.perf_counter()
    _check(options)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    checkpoint, packages = _prepare(options, progress, export)
    manifests = {p: read_manifest(p) for p in packages}
    step_graphs = {p: m.graphs[STEP_GRAPH] for p, m in manifests.items()}
    first = manifests[packages[0]].model
    version, vocab = first.version, first.vocab_size
    common = {"min_seconds": options.min_seconds / options.rounds, "seed": options.seed, "vocab_size": vocab,
              "version": version, "backend": options.backend}
    by_precision = {g.precision: p for p, g in step_graphs.items()}
    context_states = _context_states(options, by_precision, common, progress) if options.contexts else {}
    jobs = [{**common, "engine": DEPLOY, "precision": step_graphs[p].precision, "package": str(p),
             "batches": list(options.batches), "prefill_lengths": list(options.prefill_lengths),
             "context_states": context_states} for p in packages]
    jobs += _baseline_jobs(options, checkpoint, version, common, notes, progress)
    jobs += _genai_jobs(options, jobs, notes, progress, write_genai)
    jobs += _cpu_graph_jobs(options, jobs, notes, progress, write_cpu_graph)
    fidelity = _fidelity(options, jobs, checkpoint, vocab, progress, notes)
    jobs += _spinning_jobs(options, jobs, notes)
    rows = _measure(options, jobs, progress)
    for row in rows:
        same_numbers = SPINNING.get(row["engine"], row["engine"])  # one graph, bit-identical logits
        row.update(fidelity.get((same_numbers, row["precision"]), dict.fromkeys(FIDELITY_FIELDS)))
    progress("measuring the memory read bandwidth")
    bandwidth = {n: machine.memory_read_bandwidth(n) for n in options.threads}
    info = {**machine.describe(), "threads": list(options.threads),
            "memory_read_bytes_per_s": {str(n): b for n, b in bandwidth.items()}}
    weight_bytes = {g.precision: machine.decode_weight_bytes(p / g.path) for p, g in step_graphs.items()}
    info["decode_weight_bytes"] = weight_bytes
    ratios = compute_ratios(rows, weight_bytes, bandwidth, max(options.contexts, default=0),
                            min(options.contexts, default=0))
    return BenchResult(rows, ratios, info, _options_dict(options), notes, time.perf_counter() - started)


def _check(options: BenchOptions) -> None:
    if (options.shape is None) == (not options.packages):
        raise BenchError("bench: give package directories or --shape, not both and not neither")
    unknown = [b for b in options.baselines if b not in KNOWN_BASELINES]
    if unknown:
        raise BenchError(f"bench: unknown baseline {unknown[0]!r} (choose from {', '.join(KNOWN_BASELINES)})")
    if options.rounds < 1 or not options.threads or min(options.threads) < 1:
        raise BenchError("bench: --rounds and every --threads value must be at least 1")


def _prepare(options: BenchOptions, progress: Progress, export: Exporter | None) -> tuple[Path | None, list[Path]]:
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
                    progress: Progress) -> dict[int, str]:
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
           "contexts": wanted, "context_chunk": 512, "work_dir": str(out_dir), "threads": max(options.threads)}
    return {int(k): v for k, v in _run_worker(job)["contexts"].items()}


def _baseline_jobs(options: BenchOptions, checkpoint: Path | None, version: str, common: dict[str, Any],
                   notes: list[str], progress: Progress) -> list[dict[str, Any]]:
    jobs = []
    for engine in options.baselines:
        if checkpoint is None:
            notes.append(f"{engine}: skipped (no --checkpoint given for the packages)")
            continue
        if engine == RWKVCPP:
            jobs += _rwkvcpp_jobs(options, checkpoint, common, notes, progress)
            continue
        if engine == LLAMACPP:
            jobs += _llamacpp_jobs(options, checkpoint, version, common, notes, progress)
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


def _rwkvcpp_jobs(options: BenchOptions, checkpoint: Path, common: dict[str, Any], notes: list[str],
                  progress: Progress) -> list[dict[str, Any]]:
    """One job per rwkv.cpp precision, its files made by its own converter and quantizer (`bench.rwkvcpp`)."""
    from .rwkvcpp import RwkvCppError, model_file, prepare_tools

    if checkpoint.suffix != ".pth" or importlib.util.find_spec("torch") is None:
        notes.append("rwkv.cpp: skipped (its converter needs a BlinkDL .pth checkpoint and PyTorch)")
        return []
    try:
        tools = prepare_tools(options.work_dir, options.rwkvcpp_source, options.rwkvcpp_lib,
                              max(options.threads), progress)
        files = {p: model_file(tools, checkpoint, p, options.work_dir / "rwkvcpp" / "models", progress)
                 for p in options.rwkvcpp_precisions}
    except RwkvCppError as exc:
        notes.append(f"rwkv.cpp: skipped ({exc})")
        return []
    notes.append(f"rwkv.cpp: library {tools.library}; files converted without the unused layer-0 att.v0/v1/v2, "
                 "which its loader cannot read (docs/bench.md)")
    return [{**common, "engine": RWKVCPP, "precision": p, "library": str(tools.library), "model_file": str(f),
             "batches": [1], "prefill_lengths": list(options.prefill_lengths)} for p, f in files.items()]


def _llamacpp_jobs(options: BenchOptions, checkpoint: Path, version: str, common: dict[str, Any], notes: list[str],
                   progress: Progress) -> list[dict[str, Any]]:
    """One job per llama.cpp precision, its GGUF files made by its own converter and quantizer (`bench.llamacpp`):
    decode at every batch (its parallel sequences), prefill in one batch."""
    from .llamacpp import LlamaCppError, checkpoint_versions_note, model_file, prepare_tools

    why = checkpoint_versions_note(version)
    if why is None and (importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None):
        why = "its converter needs PyTorch and transformers (pip install transformers)"
    if why is None and common["vocab_size"] != 65536:
        why = f"its converter reads RWKV's World vocabulary (65536 tokens), this model has {common['vocab_size']}"
    if why is not None:
        notes.append(f"llama.cpp: skipped ({why})")
        return []
    try:
        tools = prepare_tools(options.work_dir, options.llamacpp_sdist, options.llamacpp_lib, max(options.threads),
                              progress)
        files = {p: model_file(tools, checkpoint, p, options.work_dir / "llamacpp" / "models", progress)
                 for p in options.llamacpp_precisions}
    except LlamaCppError as exc:
        notes.append(f"llama.cpp: skipped ({exc})")
        return []
    notes.append(f"llama.cpp: library {tools.library_dir} (built without AMX, docs/bench.md); GGUF files from its "
                 "convert_hf_to_gguf.py on the checkpoint's Hugging Face folder, quantized types by its quantizer "
                 "from the F32 file; its threads spin-wait (ggml's default)")
    return [{**common, "engine": LLAMACPP, "precision": p, "binding_dir": str(tools.binding_dir),
             "library_dir": str(tools.library_dir), "model_file": str(f), "batches": list(options.batches),
             "prefill_lengths": list(options.prefill_lengths)} for p, f in files.items()]


def _genai_jobs(options: BenchOptions, jobs: list[dict[str, Any]], notes: list[str], progress: Progress,
                write_genai: GenaiWriter | None) -> list[dict[str, Any]]:
    """One job per package GenAI can run: its GenAI folder in the work folder, decode at batch 1 and prefill."""
    if not options.genai:
        return []
    if write_genai is None or importlib.util.find_spec("onnxruntime_genai") is None:
        notes.append("onnxruntime-genai: skipped (pip install onnxruntime-genai)")
        return []
    found = []
    for job in (j for j in jobs if j["engine"] == DEPLOY):
        name = Path(job["package"]).name
        folder = options.work_dir / "genai" / name
        progress(f"GenAI folder of {name}")
        try:
            write_genai(Path(job["package"]), folder)
        except RwkvDeployError as exc:
            notes.append(f"onnxruntime-genai {job['precision']}: skipped ({exc})")
            continue
        found.append({**job, "engine": GENAI, "genai_folder": str(folder), "batches": [1], "context_states": {}})
    if found:
        notes.append("onnxruntime-genai: each package's `package --genai` folder run by GenAI's Generator (greedy, "
                     "one sequence); GenAI cannot turn off ONNX Runtime's spin-waiting, so its threads spin")
    return found


def _cpu_graph_jobs(options: BenchOptions, jobs: list[dict[str, Any]], notes: list[str], progress: Progress,
                    write_cpu_graph: CpuGraphWriter | None) -> list[dict[str, Any]]:
    """One job per package: its CPU graphs in the work folder, decode at every batch, and prefill where a CPU
    prefill graph was made (otherwise prompts stay on the package's prefill graph, not measured again). A package
    the CPU operators have nothing for (an fp32 package of RWKV-4 to 6) gets a note."""
    if not options.cpu_ops:
        return []
    from rwkv_deploy.runtime import cpu_ops

    if write_cpu_graph is None or cpu_ops.library_path() is None:
        notes.append("rwkv-deploy-cpu: skipped (rwkv-deploy's CPU operator library is not built in this install)")
        return []
    found = []
    for job in (j for j in jobs if j["engine"] == DEPLOY):
        name = Path(job["package"]).name
        graph = options.work_dir / "cpu" / name / "step.cpu.onnx"
        graph.parent.mkdir(parents=True, exist_ok=True)
        progress(f"CPU step graph of {name}")
        try:
            prefill = getattr(write_cpu_graph(Path(job["package"]), graph), "prefill", None)
        except RwkvDeployError as exc:
            notes.append(f"rwkv-deploy-cpu {job['precision']}: skipped ({exc})")
            continue
        # prompts on the CPU prefill graph where one was made (measured), else on the package's (not measured again)
        found.append({**job, "engine": DEPLOY_CPU, "cpu_graph": str(graph), "context_states": {},
                      "cpu_prefill": str(prefill) if prefill else None,
                      "prefill_lengths": job["prefill_lengths"] if prefill else []})
    if found:
        notes.append(f"rwkv-deploy-cpu: packages' step graphs with the weight products on rwkv-deploy's CPU operators "
                     f"(fp16: {cpu_ops.kernel_path()} kernels, fp16 weights read as fp16, fp32 arithmetic; int8/int5/"
                     f"int4: {cpu_ops.quant_kernel_path()} kernels, MatMulNBits' weights, int8 activations; fp32: "
                     f"ONNX Runtime's) and each RWKV-7 layer's time-mix core on one operator")
    else:
        notes.append("rwkv-deploy-cpu: no package the CPU operators have work for")
    return found


def _spinning_jobs(options: BenchOptions, jobs: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """Our packages again with spin-waiting ONNX Runtime threads, decode at batch 1 (`BenchOptions.spin_wait`)."""
    if not options.spin_wait:
        return []
    if options.backend != "onnxruntime" or max(options.threads) < 2:
        notes.append("rwkv-deploy-spin: skipped (spin-waiting applies to ONNX Runtime at 2 or more threads)")
        return []
    notes.append("rwkv-deploy-spin (and rwkv-deploy-cpu-spin, the CPU graphs): the same packages with ONNX Runtime's "
                 "worker threads spin-waiting between ops (the runtime's spin_wait=True, generate --spin-wait), as "
                 "rwkv.cpp's and llama.cpp's threads do; measured at thread counts above 1 only; fidelity is the "
                 "non-spinning row's (same graph, same numbers)")
    spinning = {engine: spin for spin, engine in SPINNING.items()}
    return [{**job, "engine": spinning[job["engine"]], "batches": [1], "prefill_lengths": [], "context_states": {}}
            for job in jobs if job["engine"] in spinning]


def _fidelity(options: BenchOptions, jobs: list[dict[str, Any]], checkpoint: Path | None, vocab: int,
              progress: Progress, notes: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """KL mean/max and top-1 of every engine against the fp32 PyTorch reference on one fixed token stream."""
    if options.fidelity_tokens < 1:
        return {}
    if checkpoint is None or importlib.util.find_spec("torch") is None:
        notes.append("fidelity: not measured (needs the checkpoint and PyTorch for the fp32 reference)")
        return {}
    tokens = token_stream(vocab, options.fidelity_tokens, options.seed).tolist()
    reference = options.work_dir / "fidelity" / f"{checkpoint.stem}-reference-{len(tokens)}.npy"
    threads = max(options.threads)
    if not reference.exists():
        progress(f"fp32 reference logits on the fidelity stream ({len(tokens)} tokens)")
        reference.parent.mkdir(parents=True, exist_ok=True)
        staging = reference.with_name(f".writing-{reference.name}")
        _run_worker({**jobs[0], "engine": TORCH_REFERENCE, "precision": "fp32", "checkpoint": str(checkpoint),
                     "threads": threads, "fidelity": {"tokens": tokens, "write": str(staging)}})
        os.replace(staging, reference)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        progress(f"fidelity of {job['engine']} {job['precision']}")
        result = _run_worker({**job, "threads": threads, "fidelity": {"tokens": tokens, "reference": str(reference)}})
        found[(job["engine"], job["precision"])] = result["fidelity"]
    return found


def _measure(options: BenchOptions, jobs: list[dict[str, Any]], progress: Progress) -> list[dict[str, Any]]:
    """Every job at every thread count, over `rounds` rounds with the engine order reversed each round; each
    row reports the median round (and the fastest), so a burst of load in one round does not decide it."""
    samples: dict[tuple, list[dict[str, Any]]] = {}
    for threads in options.threads:
        for round_ in range(options.rounds):
            for job in (jobs if round_ % 2 == 0 else jobs[::-1]):
                if job["engine"] in SPINNING and threads < 2:
                    continue  # one thread has no worker to wait
                progress(f"measuring {job['engine']} {job['precision']} at {threads} thread(s), "
                         f"round {round_ + 1}/{options.rounds}")
                for row in _run_worker({**job, "threads": threads})["rows"]:
                    samples.setdefault(tuple(row[k] for k in ROW_KEY), []).append(row)
    return [_merge(rounds) for rounds in samples.values()]


def _merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["ms_per_call"] for r in rounds]
    median = statistics.median(seconds)
    first = rounds[0]
    per_call = first["tokens_per_s"] * first["ms_per_call"]  # tokens per call (batch, or T for prefill) * 1000
    return {**{k: first[k] for k in ROW_KEY}, "tokens_per_s": per_call / median, "ms_per_call": median,
            "ms_per_call_min": min(seconds), "rounds": len(rounds), "calls": sum(r["calls"] for r in rounds),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds)}


def _run_worker(job: dict[str, Any]) -> dict[str, Any]:
    threads = job["threads"]
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    with tempfile.TemporaryDirectory(prefix="rwkv-bench-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        done = subprocess.run([sys.executable, "-m", "rwkv_deploy.bench.worker", str(job_file), str(out_file)],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise BenchError(f"bench: the {job['engine']} {job['precision']} worker failed: {last}")
        return json.loads(out_file.read_text())


def _options_dict(options: BenchOptions) -> dict[str, Any]:
    data = asdict(options)
    data["shape"] = options.shape.label if options.shape else None
    return data
