"""The CLI's defaults are the library's: an option that mirrors a field of the library's options dataclass
defaults to that field's value (or to None / an off flag, which the command turns into "the library decides"),
so `rwkv-deploy X` and the Python API do the same thing when nothing is given."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import typer.main

from rwkv_deploy.bench.options import DEFAULTS as BENCH_DEFAULTS
from rwkv_deploy.cli.main import app
from rwkv_deploy.export.options import ExportOptions
from rwkv_deploy.runtime.backends import DEFAULT_BACKEND
from rwkv_deploy.runtime.sampling import SamplingParams
from rwkv_deploy.serve.options import ServeOptions
from rwkv_deploy.targets.triton import CPU_THREADS_DEFAULT, BatchingOptions, InstanceOptions
from rwkv_deploy.validate.result import ValidateOptions

pytestmark = pytest.mark.slow  # exports a package at run time (the fast tier: make test-fast)

COMMANDS = typer.main.get_command(app).commands
LIBRARY_DEFAULTS = {
    "export": ExportOptions(),
    "validate": ValidateOptions(),
    "generate": SamplingParams(),  # the sampling options
    "bench": BENCH_DEFAULTS,
    "serve": ServeOptions(),
}
LEFT_TO_THE_LIBRARY = {("export", "external_data"), ("bench", "packages"), ("bench", "threads"),
                       ("serve", "prefill_chunk"), ("serve", "threads"), ("serve", "triton"), ("serve", "triton_model")}


def cli_defaults(command: str) -> dict[str, Any]:
    return {param.name: param.default for param in COMMANDS[command].params}


def as_cli_text(value: Any) -> Any:
    """A tuple default is given on the command line as comma-separated text."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("command", sorted(LIBRARY_DEFAULTS))
def test_every_mirrored_option_defaults_to_the_librarys_value(command: str) -> None:
    library = LIBRARY_DEFAULTS[command]
    fields = {field.name: getattr(library, field.name) for field in dataclasses.fields(library)}
    cli = cli_defaults(command)
    mirrored = sorted(set(cli) & set(fields))
    assert len(mirrored) >= 4, f"{command}: expected the CLI to mirror the library's options, found {mirrored}"
    for name in mirrored:
        if (command, name) in LEFT_TO_THE_LIBRARY:
            assert cli[name] in (None, False), f"{command} --{name}: leaves the choice to the library"
            continue
        assert cli[name] == as_cli_text(fields[name]), f"{command} --{name}: {cli[name]!r} != {fields[name]!r}"


def test_the_backend_defaults_agree() -> None:
    assert cli_defaults("generate")["backend"] == DEFAULT_BACKEND == ValidateOptions().backend


def help_default(command: str, option: str) -> str:
    """What `rwkv-deploy COMMAND --help` says an option defaults to: the text after "default" in its help."""
    (param,) = [p for p in COMMANDS[command].params if option in p.opts]
    assert param.default is None, f"{command} {option}: None, so the library decides"
    match = re.search(r"default:? ([^()]*)\)$", param.help or "")
    assert match, f"{command} {option}: its help names no default"
    return match.group(1)


def test_package_triton_help_states_the_triton_writers_defaults() -> None:
    batching, instances = BatchingOptions(), InstanceOptions()
    assert help_default("package", "--triton-max-batch-size") == str(batching.max_batch_size)
    assert help_default("package", "--triton-preferred-batch-sizes") == as_cli_text(batching.preferred_batch_sizes)
    assert help_default("package", "--triton-max-queue-delay-us") == str(batching.max_queue_delay_us)
    assert help_default("package", "--triton-max-sequences") == str(batching.max_sequences)
    assert help_default("package", "--triton-idle-timeout") == f"{batching.sequence_idle_us / 1e6:g}"
    assert help_default("package", "--triton-instances") == str(instances.count)
    assert help_default("package", "--triton-kind") == instances.kind
    gpu = InstanceOptions(kind="gpu").onnxruntime_parameters()
    for option in ("--triton-intra-op-threads", "--triton-inter-op-threads"):
        assert help_default("package", option) == f"{CPU_THREADS_DEFAULT} on cpu, 0 on gpu" and gpu == ()
