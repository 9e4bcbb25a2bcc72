"""Export streams the weights: the graph traced without weights and filled lazily is the exporter's own graph
for the model in memory, and no more than one large weight is held at a time."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from rwkv_deploy.export import weight_streaming
from rwkv_deploy.export.onnx_graph import StepGraph, export_step_graph, io_names
from rwkv_deploy.models.checkpoint.lazy import LazyTensor
from rwkv_deploy.models.loading import build_model, open_checkpoint
from rwkv_deploy.models.streaming import graph_weights, meta_model, streamed_model
from rwkv_deploy.package.names import BATCH_AXIS, MAX_BATCH
from tests.helpers.small_packages import small_checkpoint

pytestmark = pytest.mark.slow  # exports


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return small_checkpoint(tmp_path_factory.mktemp("ckpt") / "v7.pth", "7", seed=3, n_embd=96)


def exporter_graph(model, path) -> onnx.ModelProto:
    """What torch.onnx writes for the model with its weights in memory (optimize=True), weights inline."""
    token = torch.zeros(2, dtype=torch.long)
    state = tuple(model.init_state(2))
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)
    inputs, outputs = io_names(model.state_spec())
    program = torch.onnx.export(StepGraph(model), (token, state), None, input_names=inputs, output_names=outputs,
                                opset_version=18, dynamo=True, dynamic_shapes=({0: batch}, tuple({0: batch} for _ in state)),
                                optimize=True)
    program.save(str(path))
    return onnx.load(str(path))


def test_streamed_graph_is_the_exporters_graph_for_the_model_in_memory(checkpoint, tmp_path):
    ckpt = open_checkpoint(checkpoint)
    streamed = tmp_path / "streamed.onnx"
    export_step_graph(meta_model(ckpt.config), streamed, weights=graph_weights(ckpt))
    expected = exporter_graph(build_model(ckpt.config, ckpt.materialize().tensors), tmp_path / "exporter.onnx")
    got = onnx.load(str(streamed))

    assert [(n.op_type, list(n.input), list(n.output)) for n in got.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in expected.graph.node]
    want = {t.name: numpy_helper.to_array(t) for t in expected.graph.initializer}
    have = {t.name: numpy_helper.to_array(t) for t in got.graph.initializer}
    assert have.keys() == want.keys()
    transposed = [name for name in want if not name.startswith("model.") and want[name].ndim == 2]
    assert len(transposed) >= 10  # the nn.Linear weights, folded into transposed copies under the same names
    for name, array in want.items():
        assert have[name].dtype == array.dtype and np.array_equal(have[name], array), name


def test_export_holds_one_large_weight_at_a_time(checkpoint, tmp_path, monkeypatch):
    """Each weight is read once, large ones only while the file is written (not by tracing or the optimizer,
    which would keep what they read), and each is released before the next large one is read (the writer's
    in-flight budget set to nothing, as it is for a model larger than the budget)."""
    monkeypatch.setattr(weight_streaming, "MAX_IN_FLIGHT_BYTES", 1)
    writing = [False]
    save = weight_streaming.save_streaming

    def save_and_note(*args, **kwargs):
        writing[0] = True
        return save(*args, **kwargs)

    monkeypatch.setattr("rwkv_deploy.export.onnx_graph.save_streaming", save_and_note)
    ckpt = open_checkpoint(checkpoint)
    reads: dict[str, int] = {}
    alive: set[str] = set()
    early: list[str] = []
    peak = [0]

    def counted(name: str, weight: LazyTensor) -> LazyTensor:
        def load() -> torch.Tensor:
            reads[name] = reads.get(name, 0) + 1
            tensor = weight.load().clone()
            if tensor.numel() > weight_streaming.FOLD_INPUT_LIMIT:
                if not writing[0]:
                    early.append(name)
                alive.add(name)
                peak[0] = max(peak[0], len(alive))
                weakref.finalize(tensor, alive.discard, name)
            return tensor
        return LazyTensor(weight.shape, weight.dtype, load)

    weights = {name: counted(name, w) for name, w in graph_weights(ckpt).items()}
    export_step_graph(meta_model(ckpt.config), tmp_path / "g.onnx", weights=weights)
    gc.collect()
    assert reads.keys() == weights.keys() and set(reads.values()) == {1}
    assert not early, f"read before the file was written: {early[:3]}"
    assert peak[0] == 1 and not alive


def test_streamed_model_computes_like_the_model_in_memory(checkpoint):
    ckpt = open_checkpoint(checkpoint)
    model = streamed_model(ckpt.config, graph_weights(ckpt))
    reference = build_model(ckpt.config, ckpt.materialize().tensors)
    tokens = torch.randint(0, ckpt.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = model(tokens, model.init_state(2))
        want, _ = reference(tokens, reference.init_state(2))
    assert torch.equal(got, want)
    assert all(m.weight.device.type == "meta" for m in model.modules() if isinstance(m, torch.nn.Linear))
