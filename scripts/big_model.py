"""Peak memory and time of each stage for a model of billions of parameters (docs/export.md, "Models larger
than memory").

Writes a random RWKV checkpoint of the given shape in bf16 safetensors (one block at a time), then runs each
stage as its own `rwkv-deploy` process and reads the process's peak resident memory from the kernel
(`os.wait4`'s ru_maxrss): export at each precision, then validate, package and verify where asked.
Prints one JSON row per stage.

    python scripts/big_model.py --shape 24:2048:65536 --work /data/big --precisions fp16,int8,int4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_measured(command: list[str]) -> dict:
    """Run `command`; its wall time, exit code and peak RSS (MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    return {"seconds": round(time.perf_counter() - started, 1), "exit_code": os.waitstatus_to_exitcode(status),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "tail": output.strip().splitlines()[-1:] }


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", required=True, help="LAYERS:EMBD:VOCAB (RWKV-7, head size 64)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the checkpoint and the packages")
    parser.add_argument("--precisions", default="fp16,int8,int4")
    parser.add_argument("--validate", default="", help="precisions whose package is also validated")
    parser.add_argument("--package", action="store_true", help="also archive (package) and verify each export")
    parser.add_argument("--verify", action="store_true", help="verify each package directory (hashes, graph I/O)")
    parser.add_argument("--prefill", action="store_true", help="export the prefill graph too")
    parser.add_argument("--keep", action="store_true", help="keep each package (default: removed once measured, "
                        "so a 7B run needs the disk of one package at a time)")
    args = parser.parse_args()

    from rwkv_deploy.models.random_checkpoint import write_safetensors_checkpoint

    layers, embd, vocab = (int(x) for x in args.shape.split(":"))
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / f"rwkv7-L{layers}-C{embd}-bf16.safetensors"
    cli = [sys.executable, "-m", "rwkv_deploy.cli.main"]
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    if not checkpoint.exists():
        started = time.perf_counter()
        write_safetensors_checkpoint(checkpoint.with_suffix(".partial"), "7", n_layer=layers, n_embd=embd,
                                     vocab_size=vocab)
        checkpoint.with_suffix(".partial").rename(checkpoint)
        print(json.dumps({"stage": "write checkpoint", "seconds": round(time.perf_counter() - started, 1),
                          "bytes": checkpoint.stat().st_size, **machine}), flush=True)
    for precision in args.precisions.split(","):
        out = args.work / f"pkg-{precision}"
        command = [*cli, "export", str(checkpoint), "--out", str(out), "--precision", precision, "--force", "-q"]
        row = run_measured(command + (["--prefill"] if args.prefill else []))
        size = folder_bytes(out) if out.exists() else 0
        print(json.dumps({"stage": "export", "precision": precision, "shape": args.shape, "package_bytes": size,
                          "package_plus_2gib_mib": round(size / 2**20 + 2048), **row, **machine}), flush=True)
        if precision in args.validate.split(","):
            row = run_measured([*cli, "validate", str(out), "-c", str(checkpoint), "--steps", "16",
                                "--batch", "1", "--greedy-tokens", "8"])
            print(json.dumps({"stage": "validate", "precision": precision, **row}), flush=True)
        if args.verify:
            row = run_measured([*cli, "verify", str(out)])
            print(json.dumps({"stage": "verify directory", "precision": precision, **row}), flush=True)
        if args.package:
            archive = args.work / f"pkg-{precision}.zip"
            row = run_measured([*cli, "package", str(out), "-o", str(archive), "--force"])
            print(json.dumps({"stage": "package", "precision": precision, **row}), flush=True)
            row = run_measured([*cli, "verify", str(archive)])
            print(json.dumps({"stage": "verify", "precision": precision, **row}), flush=True)
            if not args.keep:
                archive.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
