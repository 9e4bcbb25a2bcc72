"""The `rwkv-deploy build-cpu` command: a thin wrapper over targets.cpu.graph_file.install_cpu_graph."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import one_line_errors
from .extras import require_targets_extra


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
    app.command("build-cpu")(build_cpu_cmd)


@one_line_errors
def build_cpu_cmd(
    package_dir: Path = typer.Argument(..., metavar="DIR", help="fp32, fp16, int8, int5 or int4 package directory "
                                       "(the CPU graph is added to it)"),
) -> None:
    """Add a CPU step graph to a package: its weight products on rwkv-deploy's CPU operators (fp16: weights read as
    fp16, fp32 arithmetic; int8/int5/int4: the same quantized weights against int8 activations, on AVX-512 VNNI
    where the CPU has it; fp32 keeps ONNX Runtime's), each RWKV-7 layer's time-mix core and each block's token
    shift as one operator.
    With a prefill graph, also cpu/prefill.onnx (its products the same way, the weights shared). Writes them and
    their data into the package and lists them in manifest.json; `generate` and `serve` run them on the CPU where
    this install built the operators."""
    require_targets_extra("build-cpu")
    from rwkv_deploy.runtime import cpu_ops
    from rwkv_deploy.targets.cpu.graph_file import install_cpu_graph

    written = install_cpu_graph(package_dir)
    quantized = written.precision.startswith("int")
    kernels = cpu_ops.quant_kernel_path() if quantized else cpu_ops.kernel_path()
    here = (f"this install runs it with its {kernels} kernels" if kernels else
            "this install has no CPU operator library, so it runs the portable graph")
    typer.echo(f"wrote {written.path} and {written.data.name}: {written.products} weight products, "
               f"{written.fused_layers} RWKV-7 time-mix cores and {written.fused_shifts} token shifts on "
               f"rwkv-deploy's CPU operators; {here}")
    if written.prefill is not None:
        typer.echo(f"wrote {written.prefill}: the prefill graph's {written.prefill_products} weight products on them, "
                   f"its weights in {written.data.name} too")
