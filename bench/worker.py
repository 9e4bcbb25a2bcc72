"""One engine's measurements in a process of its own: `python -m rwkv_deploy.bench.worker JOB.json OUT.json`.

The parent sets the thread variables (OMP_NUM_THREADS, ...) in this process's environment before any
library starts its thread pool; the job says what to measure; the result lists the rows and this
process's peak resident memory, which is then the engine's alone.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import fidelity
from .engines import (DEPLOY, DEPLOY_CPU, DEPLOY_CPU_SPIN, DEPLOY_SPIN, GENAI, GenaiEngine, LLAMACPP, RWKV_PACKAGE, RWKVCPP, TORCH_REFERENCE, DeployEngine, Engine,
                      LlamaCppEngine, RwkvCppEngine, RwkvPackageEngine, TorchReferenceEngine)


def make_engine(job: dict[str, Any]) -> Engine:
    if job["engine"] in (DEPLOY, DEPLOY_SPIN):
        return DeployEngine(Path(job["package"]), job["backend"], job["threads"], job["vocab_size"], job["seed"],
                            spin_wait=job["engine"] == DEPLOY_SPIN)
    if job["engine"] in (DEPLOY_CPU, DEPLOY_CPU_SPIN):
        return DeployEngine(Path(job["package"]), job["backend"], job["threads"], job["vocab_size"], job["seed"],
                            spin_wait=job["engine"] == DEPLOY_CPU_SPIN, cpu_graph=Path(job["cpu_graph"]),
                            cpu_prefill=Path(job["cpu_prefill"]) if job.get("cpu_prefill") else None)
    if job["engine"] == TORCH_REFERENCE:
        import torch

        torch.set_num_threads(job["threads"])
        return TorchReferenceEngine(Path(job["checkpoint"]), job["vocab_size"], job["seed"])
    if job["engine"] == RWKV_PACKAGE:
        import torch

        torch.set_num_threads(job["threads"])
        return RwkvPackageEngine(Path(job["checkpoint"]), job["version"], job["vocab_size"], job["seed"])
    if job["engine"] == RWKVCPP:
        return RwkvCppEngine(Path(job["library"]), Path(job["model_file"]), job["threads"], job["vocab_size"], job["seed"])
    if job["engine"] == GENAI:
        return GenaiEngine(Path(job["genai_folder"]), job["threads"], job["vocab_size"], job["seed"])
    if job["engine"] == LLAMACPP:
        return LlamaCppEngine(Path(job["binding_dir"]), Path(job["library_dir"]), Path(job["model_file"]),
                              job["threads"], job["vocab_size"], job["seed"], max(job["prefill_lengths"], default=1))
    raise ValueError(f"unknown engine {job['engine']!r}")


def row(job: dict[str, Any], mode: str, batch: int, tokens: int, tokens_per_s: float, seconds_per_call: float,
        calls: int) -> dict[str, Any]:
    return {"engine": job["engine"], "precision": job["precision"], "mode": mode, "batch": batch, "tokens": tokens,
            "threads": job["threads"], "tokens_per_s": tokens_per_s, "ms_per_call": 1000 * seconds_per_call,
            "calls": calls}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux keeps ru_maxrss across exec, so a worker started from a
    big parent would report the parent's peak; VmHWM belongs to this process image alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux, bytes on macOS


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    engine = make_engine(job)
    seconds = job["min_seconds"]
    if job.get("make_contexts"):
        return {"contexts": engine.context_states(job["contexts"], job["context_chunk"], Path(job["work_dir"]))}
    if "fidelity" in job:  # {"tokens": [...], "reference": .npy of the reference's logits, or "write": path}
        task = job["fidelity"]
        logits = engine.stream_logits(np.asarray(task["tokens"], dtype=np.int64))
        if "write" in task:
            np.save(task["write"], logits)
            return {"fidelity": None}
        return {"fidelity": fidelity.compare(np.load(task["reference"]), logits)}
    rows = []
    for batch in job["batches"]:
        if engine.max_decode_batch is not None and batch > engine.max_decode_batch:
            continue
        t = engine.decode(batch, seconds)
        rows.append(row(job, "decode", batch, 0, batch / t.seconds_per_call, t.seconds_per_call, t.calls))
    for length in job["prefill_lengths"]:
        t = engine.prefill(length, seconds)
        rows.append(row(job, "prefill", 1, length, length / t.seconds_per_call, t.seconds_per_call, t.calls))
    for length, path in sorted(job.get("context_states", {}).items(), key=lambda kv: int(kv[0])):
        t = engine.decode(1, seconds, state=engine.load_state(Path(path)))
        rows.append(row(job, "decode", 1, int(length), 1 / t.seconds_per_call, t.seconds_per_call, t.calls))
    peak_mb = peak_rss_mb()
    for r in rows:
        r["peak_rss_mb"] = round(peak_mb, 1)
    return {"rows": rows, "peak_rss_mb": peak_mb}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run_job(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
