"""A package's CPU graphs: its step graph with the weight products on rwkv-deploy's CPU operators (fp16:
fp16_products.py; int8, int5, int4: quant_products.py; the fp32 low-rank ones of these: fp32_products.py; an fp32
package keeps ONNX Runtime's products, which measured faster for fp32 weights) and each RWKV-7 layer's time-mix
core and each block's token shift fused into one operator each (rwkv7_wkv.py, token_shift.py); and its prefill
graph with the same products rewritten, when it has any. Both keep their weights in one external-data file (each
tensor once: package/onnx_weights.py), written under temporary names and renamed.

`install_cpu_graph` puts them in the package (`cpu/step.onnx`, `cpu/prefill.onnx` and `cpu/step.onnx.data`,
hashed into manifest.json and listed in its `cpu_graphs` section, manifest.json rewritten last), where
`generate`, `serve` and `bench` find them; `write_cpu_graph` writes them anywhere (bench's work folder)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import onnx

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import is_link, refuse_link
from rwkv_deploy.package.manifest import CpuGraphEntry, Manifest, external_data_path, sha256_file
from rwkv_deploy.package.manifest_file import write_manifest
from rwkv_deploy.package.names import CPU_DIR, CPU_OPS_DOMAIN, CPU_OPS_VERSION, PREFILL_GRAPH, STEP_GRAPH
from rwkv_deploy.package.onnx_weights import share_weights

from .fp16_products import rewrite_fp16_products
from .fp32_products import rewrite_fp32_products
from .quant_products import rewrite_quant_products
from .rwkv7_wkv import rewrite_rwkv7_wkv
from .token_shift import rewrite_token_shifts

Rewrite = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, int]]
# precision -> the rewrites of its weight products, and what they look for (for the message when nothing is found)
REWRITES: dict[str, tuple[tuple[Rewrite, ...], str]] = {
    "fp32": ((), "no RWKV-7 time-mix core and no token shift x + (shift - x) * mix (an fp32 package's CPU graph "
                 "fuses those only)"),
    "fp16": ((rewrite_fp16_products, rewrite_fp32_products), "no Cast -> MatMul -> Cast product over an fp16 weight"),
    **{precision: ((rewrite_quant_products, rewrite_fp32_products), "no MatMulNBits product in a format the CPU "
                   "operators take (8-bit blocks of 16 or 32, 4-bit blocks of 32, zero points, accuracy_level 4)")
       for precision in ("int8", "int5", "int4")},
}
SUPPORTED_PRECISIONS = tuple(REWRITES)


class CpuGraphError(RefusedError):
    """A package with nothing for the CPU operators to do, or an output that may not be written."""


@dataclass(frozen=True)
class CpuGraph:
    path: Path
    data: Path
    products: int  # weight products moved onto the CPU operators
    precision: str  # the package's: fp32, fp16, int8, int5 or int4
    sha256: str = ""  # of the graph and of its data, as written
    data_sha256: str = ""
    fused_layers: int = 0  # RWKV-7 time-mix cores on Rwkv7WkvStep
    fused_shifts: int = 0  # blocks' token shifts on TokenShiftMix
    prefill: Path | None = None  # the CPU prefill graph beside it (its weights in `data` too), if one was made
    prefill_sha256: str = ""
    prefill_products: int = 0


def install_cpu_graph(package_dir: str | Path) -> CpuGraph:
    """Write the CPU step graph of the verified package `package_dir` into it (and its CPU prefill graph, when
    the package has a prefill graph with products for the operators), list them in manifest.json, replacing the
    package's CPU graphs (a corrupt one, or one made from an earlier step graph, included)."""
    package_dir = Path(package_dir)
    folder = package_dir / CPU_DIR
    refuse_link(folder)
    folder.mkdir(exist_ok=True)
    refuse_link(folder)  # not swapped for a link meanwhile
    path = f"{CPU_DIR}/{STEP_GRAPH}.onnx"
    written, manifest = _write(package_dir, package_dir / path)
    made = {STEP_GRAPH: (path, written.sha256)}
    if written.prefill is not None:
        made[PREFILL_GRAPH] = (f"{CPU_DIR}/{written.prefill.name}", written.prefill_sha256)
    entries, files = {}, {**manifest.files, external_data_path(path, written.data.name): written.data_sha256}
    for kind, (graph_path, digest) in made.items():
        source = manifest.graphs[kind]
        entries[kind] = CpuGraphEntry(path=graph_path, external_data=written.data.name, ops=CPU_OPS_DOMAIN,
                                      ops_version=CPU_OPS_VERSION, source=source.path,
                                      source_sha256=manifest.files[source.path])
        files[graph_path] = digest
    write_manifest(package_dir, replace(manifest, files=dict(sorted(files.items())), cpu_graphs=entries))
    return written


def write_cpu_graph(package_dir: str | Path, out: str | Path) -> CpuGraph:
    """The CPU step graph of the verified package `package_dir`, written to `out` (and `out`.data; the CPU
    prefill graph, when made, beside it: `prefill_path(out)`)."""
    return _write(package_dir, out)[0]


def prefill_path(out: Path) -> Path:
    """Where the CPU prefill graph goes beside the CPU step graph `out`: step.onnx -> prefill.onnx."""
    name = out.name
    return out.with_name(PREFILL_GRAPH + name[len(STEP_GRAPH):] if name.startswith(STEP_GRAPH)
                         else f"{PREFILL_GRAPH}.{name}")


@dataclass(frozen=True)
class _Counts:
    products: int = 0
    fused_layers: int = 0
    fused_shifts: int = 0


def _rewritten(graph_path: Path, precision: str, required: bool) -> tuple[onnx.ModelProto, _Counts]:
    """The graph at `graph_path` on the CPU operators; CpuGraphError when `required` and the precision's first
    rewrite, or all of them, find nothing."""
    rewrites, wanted = REWRITES[precision]
    model, products = onnx.load(str(graph_path), load_external_data=True), 0
    for rewrite in rewrites:
        model, count = rewrite(model)
        if required and count == 0 and rewrite is rewrites[0]:
            raise CpuGraphError(f"{graph_path}: {wanted} found")
        products += count
    model, fused = rewrite_rwkv7_wkv(model)
    model, shifts = rewrite_token_shifts(model)
    if required and products + fused + shifts == 0:
        raise CpuGraphError(f"{graph_path}: {wanted} found")
    return model, _Counts(products, fused, shifts)


def _write(package_dir: str | Path, out: str | Path) -> tuple[CpuGraph, Manifest]:
    """The CPU graphs written (the step graph at `out`, the prefill graph beside it when the package has one with
    work for the operators; their weights in one file, `out`.data), and the package's manifest without its CPU
    graphs (verified so)."""
    from rwkv_deploy.package.verify import verify_without_cpu_graphs

    package_dir, out = Path(package_dir), Path(out)
    data, prefill_out = out.with_name(out.name + ".data"), prefill_path(out)
    for target in (out, data, prefill_out):
        if is_link(target):
            raise CpuGraphError(f"{target}: is a symbolic link; refusing to write through it")
    manifest, problems = verify_without_cpu_graphs(package_dir)
    if problems or manifest is None:
        raise CpuGraphError(f"{package_dir}: no CPU graph written, the package fails verification: {problems[0]}")
    step = manifest.graphs[STEP_GRAPH]
    if step.precision not in REWRITES:
        raise CpuGraphError(f"{package_dir}: the package is {step.precision}; the CPU operators take "
                            f"{', '.join(SUPPORTED_PRECISIONS)} packages")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # written under the final names in a private folder, then renamed into place, the step graph last
        model, counts = _rewritten(package_dir / step.path, step.precision, required=True)
        _save(model, staging / out.name)
        del model
        prefill_counts = None
        if PREFILL_GRAPH in manifest.graphs:
            model, prefill_counts = _rewritten(package_dir / manifest.graphs[PREFILL_GRAPH].path, step.precision,
                                               required=False)
            if prefill_counts.products == 0:  # nothing faster than the package's own prefill graph
                prefill_counts = None
            else:
                _save(model, staging / prefill_out.name)
            del model
        names = [out.name] + ([prefill_out.name] if prefill_counts else [])
        share_weights([staging / name for name in names], data.name)  # each tensor once, in one file
        digests = {name: sha256_file(staging / name) for name in [*names, data.name]}
        for name in digests:
            os.chmod(staging / name, 0o644)  # as every other package file (onnx writes its data file 0600)
        os.replace(staging / data.name, data)
        if prefill_counts:
            os.replace(staging / prefill_out.name, prefill_out)
        os.replace(staging / out.name, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    graph = CpuGraph(out, data, counts.products, step.precision, digests[out.name], digests[data.name],
                     counts.fused_layers, counts.fused_shifts,
                     prefill=prefill_out if prefill_counts else None,
                     prefill_sha256=digests.get(prefill_out.name, ""),
                     prefill_products=prefill_counts.products if prefill_counts else 0)
    return graph, manifest


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data",
                    all_tensors_to_one_file=True)  # small constants stay inline (shape inference reads them)
