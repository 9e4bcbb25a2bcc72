"""`manifest.json`: the contract every runtime (Python, Node.js, C++, browser, Triton) reads.

Schema (format_version 1) is documented in docs/manifest.md. Runtimes need nothing else to run a
package: graph paths, I/O names, state shapes/dtypes/initial values, tokenizer and file hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rwkv_deploy.errors import RefusedError

from .names import FORMAT_VERSION, LOGITS_OUTPUT, MANIFEST_NAME, TOKEN_INPUT


class ManifestError(RefusedError):
    """A manifest that cannot be read or does not describe a usable package."""


@dataclass(frozen=True)
class ModelInfo:
    version: str
    n_layer: int
    n_embd: int
    n_head: int | None
    head_size: int | None
    vocab_size: int
    ffn_size: int
    lora: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphInfo:
    path: str
    precision: str
    opset: int
    external_data: str | None = None
    quantization: dict[str, Any] | None = None  # int8/int4: what was quantized and how (export/quantize.py)
    logits: str | None = None  # prefill graph: "last" ([batch, vocab]) or "all" ([batch, T, vocab]) positions


@dataclass(frozen=True)
class StateEntry:
    """One state tensor: fed as `input`, returned as `output`; a fresh state is `init` everywhere,
    or, when `init_file` is set, the array `name` in that .npz file (state-tuned checkpoints)."""

    name: str
    input: str
    output: str
    shape: list[int | str]
    dtype: str
    init: float
    init_file: str | None = None


@dataclass(frozen=True)
class TokenizerInfo:
    kind: str  # "world", "hf", "bytes" or "none"
    files: list[str] = field(default_factory=list)
    eos_token_id: int | None = None


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine of one graph (`rwkv-deploy build-engine`): the plan, its record, and what it needs to
    run: the TensorRT flavour ("tensorrt" or "tensorrt_rtx") and version it was built with, and the GPU
    compute capabilities it runs on ("8.6", ...; ">12.0": any newer than 12.0; [] when not known)."""

    plan: str
    info: str
    library: str
    version: str
    targets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CpuGraphEntry:
    """A CPU target graph of one package graph (`rwkv-deploy build-cpu`): `path` and its weights
    (`external_data`, in its folder), the operator domain and version it needs from rwkv-deploy's CPU operator
    library, and the package graph it was derived from with that graph's sha256 (a graph exported again makes
    it stale: runtimes then use the portable graph)."""

    path: str
    external_data: str
    ops: str
    ops_version: int
    source: str
    source_sha256: str


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    graphs: dict[str, GraphInfo]
    state: list[StateEntry]
    tokenizer: TokenizerInfo
    files: dict[str, str]
    token_input: str = TOKEN_INPUT
    logits_output: str = LOGITS_OUTPUT
    format_version: int = FORMAT_VERSION
    producer: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, EngineEntry] = field(default_factory=dict)  # by graph name; optional in the JSON
    cpu_graphs: dict[str, CpuGraphEntry] = field(default_factory=dict)  # by graph name; optional in the JSON

    def to_json(self) -> str:
        data = asdict(self)
        for optional in ("engines", "cpu_graphs"):  # packages without them keep the manifest they always had
            if not data[optional]:
                del data[optional]
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


def external_data_path(graph_path: str, name: str) -> str:
    """The package path of a graph's external data file `name`: ONNX resolves it relative to the graph's folder."""
    folder = graph_path.rpartition("/")[0]
    return f"{folder}/{name}" if folder else name


def shape_text(shape: list | None) -> str:
    """A manifest shape for messages: `[batch, 4, 64]`, or `unknown`."""
    return "unknown" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
