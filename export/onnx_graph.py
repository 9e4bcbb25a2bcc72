"""Trace a reference model to ONNX with named state inputs/outputs and a dynamic batch: the single-step
graph, and the optional time-parallel prefill graph (dynamic T).

Tracing always runs on the meta device and the weights are streamed into the file afterwards
(`weight_streaming.py`), so exporting needs the memory of one tensor, whatever the model's size."""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Sequence

import onnx
import onnx_ir as ir
import torch
from torch import nn

from rwkv_deploy.models.checkpoint.lazy import LazyTensor
from rwkv_deploy.models.reference import ops
from rwkv_deploy.models.reference.base import RWKVModel
from rwkv_deploy.models.state import StateSpec

from rwkv_deploy.package.names import (BATCH_AXIS, LOGITS_OUTPUT, MAX_BATCH, PREFILL_TOKENS_INPUT, TIME_AXIS, TOKEN_INPUT,
                                       state_input, state_output)

from .onnx_file import INLINE_WEIGHTS_MAX, inline_external_data
from .options import DEFAULT_OPSET
from .weight_streaming import attach_weights, fold_weight_transposes, optimize, save_streaming

Weights = Mapping[str, LazyTensor]


class StepGraph(nn.Module):
    """(token [B], *state) -> (logits [B, V], *new_state): the exact signature of the exported graph."""

    def __init__(self, model: RWKVModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, state: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model.step(token, list(state))
        return (logits.float(), *new_state)


class PrefillGraph(nn.Module):
    """(tokens [B, T], *state) -> (logits [B, V] of the last position, or [B, T, V], *new_state)."""

    def __init__(self, model: RWKVModel, all_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.all_logits = all_logits

    def forward(self, tokens: torch.Tensor, state: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model(tokens, list(state), last_only=not self.all_logits)
        return (logits.float(), *new_state)


def io_names(spec: StateSpec) -> tuple[list[str], list[str]]:
    inputs = [TOKEN_INPUT] + [state_input(n) for n in spec.names]
    outputs = [LOGITS_OUTPUT] + [state_output(n) for n in spec.names]
    return inputs, outputs


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _example_state(model: RWKVModel, batch: int) -> tuple[torch.Tensor, ...]:
    """State tensors of the right shapes and dtypes for tracing (on the meta device: values play no part)."""
    return tuple(torch.zeros(spec.concrete_shape(batch), dtype=getattr(torch, spec.dtype), device="meta")
                 for spec in model.state_spec())


def export_step_graph(
    model: RWKVModel, path: str | Path, opset: int = DEFAULT_OPSET, external_data: bool | None = None,
    check: Callable[[Path], None] | None = None, weights: Weights | None = None,
) -> str | None:
    """Write the step graph to `path`; returns the external-data file name, or None for one self-contained file.

    `model` is a reference model with its weights, or (for models larger than memory) its structure on the
    meta device with `weights` naming a lazy tensor per parameter (`models.streaming`). External data is used
    when asked, or automatically from 1 GiB of weights (`INLINE_WEIGHTS_MAX`). `check` runs on the staged
    graph while its weights are still external, so checking needs no memory for the weights.
    """
    example_batch = 2
    token = torch.zeros(example_batch, dtype=torch.long, device="meta")
    state = _example_state(model, example_batch)
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)
    inputs, outputs = io_names(model.state_spec())
    return _export(StepGraph(model), (token, state), ({0: batch}, tuple({0: batch} for _ in state)),
                   inputs, outputs, Path(path), opset, external_data, check, weights)


def export_prefill_graph(
    model: RWKVModel, path: str | Path, opset: int = DEFAULT_OPSET, external_data: bool | None = None,
    check: Callable[[Path], None] | None = None, all_logits: bool = False, weights: Weights | None = None,
) -> str | None:
    """Write the prefill graph (tokens [batch, T], any T >= 1, + state -> logits + state) to `path`.

    Everything that does not depend on the previous position (projections, LoRAs, FFN, norms) runs as
    one product over all T positions; the per-head recurrence is one ONNX Scan over T. `logits` is
    [batch, vocab] for the last position, or [batch, T, vocab] with `all_logits`. Arguments and return
    value as `export_step_graph`."""
    example_batch, example_t = 2, 37  # more than two chunks of a chunked recurrence (one would specialize)
    tokens = torch.zeros(example_batch, example_t, dtype=torch.long, device="meta")
    state = _example_state(model, example_batch)
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)
    length = torch.export.Dim(TIME_AXIS, min=1, max=1 << 20)
    spec = model.state_spec()
    inputs = [PREFILL_TOKENS_INPUT] + [state_input(n) for n in spec.names]
    outputs = [LOGITS_OUTPUT] + [state_output(n) for n in spec.names]
    with ops.recurrence_as_scan():
        return _export(PrefillGraph(model, all_logits), (tokens, state),
                       ({0: batch, 1: length}, tuple({0: batch} for _ in state)),
                       inputs, outputs, Path(path), opset, external_data, check, weights)


def _on_meta(wrapper: nn.Module, weights: Weights | None) -> tuple[nn.Module, Weights]:
    """The wrapper with every parameter on the meta device, and the weights to stream: the given ones, or the
    wrapper's own (a model in memory: exported through the same path as one that is not)."""
    if weights is not None:
        return wrapper, weights
    own = {name.removeprefix("model."): LazyTensor.of(p.detach()) for name, p in wrapper.state_dict().items()}
    return copy.deepcopy(wrapper).to(device="meta"), own


def _export(
    wrapper: nn.Module, args: tuple, dynamic_shapes: tuple, inputs: list[str], outputs: list[str], path: Path,
    opset: int, external_data: bool | None, check: Callable[[Path], None] | None, weights: Weights | None,
) -> str | None:
    wrapper, weights = _on_meta(wrapper.eval(), weights)
    if external_data is None:
        external_data = weight_bytes(wrapper) >= INLINE_WEIGHTS_MAX
    # the exporter logs unrelated notes (torchvision absent; torch.export's "always_classified is unsupported")
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, args, None, input_names=inputs, output_names=outputs, opset_version=opset,
            dynamo=True, dynamic_shapes=dynamic_shapes, optimize=False, verbose=False,
        )
        graph = program.model
        del program
        attach_weights(graph, weights)
        fold_weight_transposes(graph)
        optimize(graph)
        strip_exporter_metadata(graph)
    for log, level in zip(loggers, levels):
        log.setLevel(level)
    # Always save with external data (each weight read and written in turn); a single file is assembled from
    # it without a second in-memory copy of the weights.
    staging = path.with_name(f".staging-{path.name}")
    staged_data = staging.with_name(staging.name + ".data")
    try:
        save_streaming(graph, staging)
        del graph
        if check is not None:
            check(staging)
        if external_data:
            data = path.with_name(path.name + ".data")
            _rename_external_data(staging, staged_data.name, data.name)
            os.replace(staged_data, data)
            os.replace(staging, path)
            return data.name
        inline_external_data(staging, path)
        return None
    finally:
        staging.unlink(missing_ok=True)
        staged_data.unlink(missing_ok=True)


NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def strip_exporter_metadata(model: ir.Model) -> None:
    """Drop the exporter's per-node and per-value notes (PyTorch stack traces with this machine's source paths,
    FX node text, class hierarchies): about 80% of a small graph's bytes, nothing a runtime reads, and a leak of
    where the package was built. Model-level metadata (ours) stays, and so does each node's module path
    (`pkg.torch.onnx.name_scopes`, no file paths): quantization names MatMul weights by it."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
            value.metadata_props.clear()
        for node in graph:
            for key in [k for k in node.metadata_props if k != NAME_SCOPES_KEY]:
                del node.metadata_props[key]
            for value in node.outputs:
                value.metadata_props.clear()


def _rename_external_data(model_path: Path, old: str, new: str) -> None:
    """Point every external tensor of the (small, weight-less) model file at the renamed data file."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(model, str(model_path))
