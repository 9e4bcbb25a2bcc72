"""Write a package's CPU step graph: its fp16 step graph with the weight products on rwkv-deploy's CPU operators
(fp16_products.py), weights beside it in one external-data file, written under a temporary name and renamed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.fileio import is_link
from rwkv_deploy.package.manifest_file import read_manifest
from rwkv_deploy.package.names import STEP_GRAPH

from .fp16_products import rewrite_fp16_products

SUPPORTED_PRECISIONS = ("fp16",)


class CpuGraphError(RefusedError):
    """A package with nothing for the CPU operators to do, or an output that may not be written."""


@dataclass(frozen=True)
class CpuGraph:
    path: Path
    data: Path
    products: int  # weight products moved onto Fp16MatMul


def write_cpu_graph(package_dir: str | Path, out: str | Path) -> CpuGraph:
    """The CPU step graph of the verified package `package_dir`, written to `out` (and `out`.data)."""
    import onnx

    from rwkv_deploy.package.verify import verify_package

    package_dir, out = Path(package_dir), Path(out)
    data = out.with_name(out.name + ".data")
    for target in (out, data):
        if is_link(target):
            raise CpuGraphError(f"{target}: is a symbolic link; refusing to write through it")
    problems = verify_package(package_dir)
    if problems:
        raise CpuGraphError(f"{package_dir}: no CPU graph written, the package fails verification: {problems[0]}")
    manifest = read_manifest(package_dir)
    step = manifest.graphs[STEP_GRAPH]
    if step.precision not in SUPPORTED_PRECISIONS:
        raise CpuGraphError(f"{package_dir}: the package is {step.precision}; the CPU operators take fp16 packages "
                            "(no fp16 weight products here)")
    model, products = rewrite_fp16_products(onnx.load(str(package_dir / step.path), load_external_data=True))
    if products == 0:
        raise CpuGraphError(f"{package_dir / step.path}: no Cast -> MatMul -> Cast product over an fp16 weight found")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp_data = out.with_name(f".{out.name}.{os.getpid()}.tmp.data")
    try:
        onnx.save_model(model, str(tmp), save_as_external_data=True, location=tmp_data.name,
                        all_tensors_to_one_file=True)  # small constants stay inline (shape inference reads them)
        # the graph names its data file: write it again pointing at the final name, then rename both
        for tensor in _external_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data.name
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        os.replace(tmp_data, data)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, tmp_data):
            leftover.unlink(missing_ok=True)
    return CpuGraph(out, data, products)


def _external_tensors(model):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]
