"""Which step graph runs on the CPU: the package's portable graph, or its CPU graph (`rwkv-deploy build-cpu`:
the same step with the weight products on rwkv-deploy's CPU operators, listed in manifest.json's `cpu_graphs`).

`--cpu-graph auto` (generate and serve) takes the CPU graph when it can run here: the package has one, the
session runs on ONNX Runtime's CPU provider (the operators have no GPU kernels), and this install built the
operator library at the version the graph needs; otherwise the portable graph, which computes the same step.
`on` insists (the reason it cannot run is an error), `off` never takes it. The library API defaults to `off`,
so a program gets the graph it asked for.
"""

from __future__ import annotations

from rwkv_deploy.errors import RefusedError
from rwkv_deploy.package.manifest import CpuGraphEntry
from rwkv_deploy.package.names import STEP_GRAPH

from . import cpu_ops
from .package import DeploymentPackage

CHOICES = ("auto", "on", "off")
CPU_PROVIDER = "CPUExecutionProvider"


class CpuGraphUnavailable(RefusedError):
    """`--cpu-graph on` and the package's CPU graph cannot run here (the message says why)."""


def unusable_reason(package: DeploymentPackage, first_provider: str) -> str | None:
    """Why the package's CPU step graph cannot run in a session whose first provider is `first_provider`; None
    when it can."""
    entry = package.manifest.cpu_graphs.get(STEP_GRAPH)
    if entry is None:
        return "the package has no CPU graph (add one with `rwkv-deploy build-cpu DIR`)"
    if first_provider != CPU_PROVIDER:
        return f"its operators run on ONNX Runtime's CPU provider only, and this session runs on {first_provider}"
    if cpu_ops.library_path() is None:
        return cpu_ops.NOT_BUILT
    provided = min(cpu_ops.VERSION, cpu_ops.library_version() or 0)  # a stale library provides less
    if entry.ops != cpu_ops.DOMAIN or entry.ops_version > provided:
        return (f"it needs operators {entry.ops} version {entry.ops_version}; this install provides "
                f"{cpu_ops.DOMAIN} version {provided}")
    return None


def chosen_cpu_graph(package: DeploymentPackage, choice: str, first_provider: str) -> CpuGraphEntry | None:
    """The CPU step graph to run for `choice` ("auto", "on", "off"), or None for the portable step graph."""
    if choice not in CHOICES:
        raise CpuGraphUnavailable(f"--cpu-graph {choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "off":
        return None
    reason = unusable_reason(package, first_provider)
    if reason is None:
        return package.manifest.cpu_graphs[STEP_GRAPH]
    if choice == "on":
        raise CpuGraphUnavailable(f"{package.directory}: --cpu-graph on, but {reason}")
    return None
