"""Checkpoint -> deployment package directory (ONNX step graph, tokenizer, manifest), written atomically.

Everything is written into a temporary sibling of the target and renamed into place at the end, so an
interrupted or failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from rwkv_deploy import __version__
from rwkv_deploy.fileio import is_link
from rwkv_deploy.models.checkpoint.lazy import LazyTensor
from rwkv_deploy.models.loading import open_checkpoint
from rwkv_deploy.models.reference.base import RWKVModel
from rwkv_deploy.models.streaming import graph_weights, meta_model, streamed_model
from rwkv_deploy.package.manifest import GraphInfo, Manifest, ModelInfo, StateEntry, sha256_file
from rwkv_deploy.package.manifest_file import write_manifest
from rwkv_deploy.package.names import (LOGITS_OUTPUT, MANIFEST_NAME, PREFILL_GRAPH, PREFILL_LOGITS_ALL,
                                       STEP_GRAPH, TOKEN_INPUT, state_input, state_output)
from rwkv_deploy.staging import staged_directory, staged_files

from .onnx_graph import export_prefill_graph, export_step_graph
from .onnx_checks import check_onnx_file, check_opset
from .options import MIN_OPSET, QUANTIZED_PRECISIONS, ExportError, ExportOptions
from .precision import apply_precision
from .quantize import quantize_staged_graph
from rwkv_deploy.package.onnx_weights import share_weights
from .tokenizer_choice import choose_tokenizer, install_tokenizer

INITIAL_STATE_FILE = "initial_state.npz"


def _write_graph(
    kind: str, export: Callable[..., str | None], model: RWKVModel, weights: dict[str, LazyTensor], path: Path,
    options: ExportOptions, progress: Callable[[str], None],
) -> GraphInfo:
    """Trace one graph of the package to `path` (checked), quantized for int8/int4; its manifest entry."""
    progress(f"tracing the {kind} graph to ONNX and checking it")
    quantized = options.precision in QUANTIZED_PRECISIONS
    traced = path.with_name(f".fp32-{path.name}") if quantized else path

    def check(graph: Path) -> None:
        check_onnx_file(graph)
        check_opset(graph, options.opset)

    external = export(model, traced, options.opset, True if quantized else options.external_data, check=check,
                      weights=weights)
    quantization = None
    if quantized:  # int8/int4: quantize the traced fp32 graph into the final file, drop the fp32 one
        progress(f"quantizing the {kind} graph to {options.precision}")
        external, quantization = quantize_staged_graph(traced, path, options.precision, options.external_data,
                                                       check=check_onnx_file)
    return GraphInfo(path=path.name, precision=options.precision, opset=options.opset, external_data=external,
                     quantization=quantization)


def _state_entries(model: RWKVModel, package_dir: Path) -> list[StateEntry]:
    entries, tuned = [], {}
    fresh = model.init_state(1)
    for spec, tensor in zip(model.state_spec(), fresh):
        if spec.init_from_checkpoint:
            tuned[spec.name] = tensor[0].numpy()
        entries.append(StateEntry(
            name=spec.name, input=state_input(spec.name), output=state_output(spec.name),
            shape=list(spec.shape), dtype=spec.dtype, init=float(spec.init),
            init_file=INITIAL_STATE_FILE if spec.init_from_checkpoint else None))
    if tuned:
        np.savez(package_dir / INITIAL_STATE_FILE, **tuned)
    return entries


def check_target(out_dir: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an output that would destroy or swallow something: a link or a file; the checkpoint (or any
    input), a folder holding it, or a folder inside it; the current directory or a folder holding it; a
    non-empty folder without --force, and with --force one that is not an rwkv-deploy package."""
    if is_link(out_dir):
        raise ExportError(f"{out_dir}: is a symbolic link; refusing to write through it")
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is a file; --out names the package directory to create")
    target = out_dir.resolve()
    for path in inputs:
        source = path.resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            raise ExportError(f"{out_dir}: is, holds or lies inside the input {path}; choose another --out")
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(target):
        raise ExportError(f"{out_dir}: is or holds the current directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise ExportError(f"{out_dir}: exists and is not empty (use --force to replace it)")
        if not (out_dir / MANIFEST_NAME).is_file():
            raise ExportError(f"{out_dir}: exists, is not empty and is not an rwkv-deploy package (no "
                              f"{MANIFEST_NAME}); --force replaces only packages: choose another --out")


def export_package(
    checkpoint: str | Path, out_dir: str | Path, options: ExportOptions = ExportOptions(),
    progress: Callable[[str], None] = lambda stage: None,
) -> Manifest:
    """Export `checkpoint` into the package directory `out_dir` and return its manifest."""
    if options.opset > onnx.defs.onnx_opset_version():  # the rest is checked by ExportOptions itself
        raise ExportError(f"--opset {options.opset}: the exporter writes opsets {MIN_OPSET} to "
                          f"{onnx.defs.onnx_opset_version()}")
    out_dir, checkpoint = Path(out_dir), Path(checkpoint)
    tokenizer_file = [Path(options.tokenizer)] if options.tokenizer not in (None, "world", "bytes", "none") else []
    check_target(out_dir, [checkpoint, *tokenizer_file], options.force)
    progress("opening checkpoint")
    overrides = {"ln_x_eps": options.ln_x_eps} if options.ln_x_eps is not None else {}
    # the weights stay on disk: each is read when the graph file is written (models/streaming.py)
    ckpt = open_checkpoint(checkpoint, max_params=options.max_params, **overrides)
    cfg = ckpt.config
    kind, tok_source = choose_tokenizer(cfg.vocab_size, options.tokenizer)
    weights = graph_weights(ckpt)
    # fp16 calibration and a tuned initial state need values: a model that reads one matrix at a time
    model = streamed_model(cfg, weights) if options.precision == "fp16" or cfg.has_time_state else meta_model(cfg)
    source_sha = sha256_file(checkpoint) if Path(checkpoint).is_file() else None
    source_format = ckpt.source_format

    # Built in a staging sibling, renamed into place at the end; one writer per --out (staging.py).
    with staged_directory(out_dir, replace=options.force) as tmp:
        progress(f"preparing {options.precision} weights")
        graph_model = apply_precision(meta_model(cfg), options.precision, calibration_model=model)
        name = options.name or Path(checkpoint).stem
        graph_file = f"{name}.onnx"
        graphs = {STEP_GRAPH: _write_graph(STEP_GRAPH, export_step_graph, graph_model, weights, tmp / graph_file,
                                           options, progress)}
        if options.prefill:
            prefill = partial(export_prefill_graph, all_logits=options.prefill_logits == PREFILL_LOGITS_ALL)
            graphs[PREFILL_GRAPH] = _write_graph(PREFILL_GRAPH, prefill, graph_model, weights,
                                                 tmp / f"{name}.prefill.onnx", options, progress)
            progress("storing the weights once for both graphs")
            data_name = f"{graph_file}.data"
            share_weights([tmp / g.path for g in graphs.values()], data_name)
            graphs = {k: replace(g, external_data=data_name) for k, g in graphs.items()}
            graphs[PREFILL_GRAPH] = replace(graphs[PREFILL_GRAPH], logits=options.prefill_logits)
        state = _state_entries(model, tmp)
        tokenizer = install_tokenizer(kind, tok_source, tmp)
        progress("hashing files")
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in staged_files(tmp)}
        manifest = Manifest(
            model=ModelInfo(version=cfg.version, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                            head_size=cfg.head_size, vocab_size=cfg.vocab_size, ffn_size=cfg.ffn_size,
                            lora=dict(cfg.lora)),
            graphs=graphs,
            state=state, tokenizer=tokenizer, files=files, token_input=TOKEN_INPUT, logits_output=LOGITS_OUTPUT,
            producer={"name": "rwkv-deploy", "version": __version__, "torch": torch.__version__.split("+")[0]},
            source={"checkpoint": Path(checkpoint).name, "format": source_format, "sha256": source_sha,
                    "ln_x_eps": cfg.ln_x_eps},
        )
        write_manifest(tmp, manifest)
        check_target(out_dir, [checkpoint, *tokenizer_file], options.force)  # still true after minutes of work?
    return manifest
