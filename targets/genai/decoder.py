"""The GenAI decoder graph: our step graph wrapped in GenAI's input/output conventions.

GenAI feeds `input_ids` [batch, seq] and, per layer, the two state tensors its
RecurrentState keeps ("conv" and "recurrent", zero-initialised, only the batch axis dynamic); it wants `logits`
[batch, seq', vocab] and the present states back. The graph:

- unpacks each layer's "conv" tensor [batch, 2, C] into att_shift (index 0) and ffn_shift (index 1); the wkv
  state is the "recurrent" one;
- runs one of three paths, each a top-level `If` or `Loop` that the others pass through unchanged:
  1. seq == 1 (decoding): the step graph once — no loop, no masking, the per-token path;
  2. a prompt where no position holds the pad id (one prompt, or a batch of equal lengths): the package's
     prefill graph, one call for the whole prompt, as our runtime prefills it;
  3. padded prompts of unequal length: a `Loop` over the positions running the step graph, where a position
     holding the pad id (vocab_size) leaves the state and the carried logits unchanged (masked state
     updates), so each prompt gives what it gives alone. The mask comes from the ids, not from GenAI's
     attention_mask: masking by the attention_mask 0.18 fed this model type still let the padding into the
     state (tried), so the graph takes no attention_mask input.
  The paths are chained, not nested: two subgraphs deep, ONNX Runtime left MatMulNBits weights unpacked
  (8-bit logits 0.02-0.04 off our runtime's, and the old nested loop took ~400 ms a position at 0.1B);
- packs the states back and returns the last logits as [batch, 1, vocab + 1]: the extra logit, at -1e30
  (fp16: -65504), is the id GenAI pads with and stops at (vocab_size), so it is never chosen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

INPUT_IDS, LOGITS = "input_ids", "logits"
PAST_CONV, PAST_RECURRENT = "past.%d.conv", "past.%d.recurrent"
PRESENT_CONV, PRESENT_RECURRENT = "present.%d.conv", "present.%d.recurrent"
STATE_PARTS = ("att_shift", "wkv", "ffn_shift")


def _tensor_key(tensor: onnx.TensorProto) -> tuple:
    """What an initializer holds, its name aside: equal keys, equal tensors."""
    if tensor.raw_data:
        return tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).hexdigest()
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = ""
    return tensor.data_type, tuple(tensor.dims), copy.SerializeToString(deterministic=True)


def shared_initializers(graph: onnx.GraphProto, into: list[onnx.TensorProto],
                        prefix: str) -> tuple[dict[str, str], list[onnx.TensorProto]]:
    """Map `graph`'s initializers onto the equal ones already in `into` (the step and prefill graphs share
    their weights); the rest are renamed with `prefix` (equal names may hold different constants). Returns
    the name map and the initializers to add."""
    have = {_tensor_key(t): t.name for t in into}
    names, added = {}, []
    for tensor in graph.initializer:
        key = _tensor_key(tensor)
        if key not in have:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = prefix + tensor.name
            added.append(copy)
            have[key] = copy.name
        names[tensor.name] = have[key]
    return names, added


def _rename_graph(graph: onnx.GraphProto, name) -> None:
    """Rename every value of `graph` and of its subgraphs (Scan, Loop, If bodies) through `name`, in place:
    one function of the name, so a subgraph's references to outer values follow their renames."""
    for node in graph.node:
        node.name = name(node.name) if node.name else ""
        node.input[:] = [name(v) if v else v for v in node.input]
        node.output[:] = [name(v) if v else v for v in node.output]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attribute.g, name)
            for sub in attribute.graphs:
                _rename_graph(sub, name)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = name(value.name)
    for tensor in graph.initializer:
        tensor.name = name(tensor.name)


def _embedded(graph: onnx.GraphProto, prefix: str, mapped: dict[str, str]) -> list[onnx.NodeProto]:
    """`graph`'s nodes (subgraphs included) to inline in another graph: names in `mapped` (inputs, outputs,
    shared initializers) take their mapped names, every other value is prefixed."""
    copy = onnx.GraphProto()
    copy.node.extend(graph.node)  # the nodes only: the weights stay where they are
    _rename_graph(copy, lambda v: mapped.get(v, prefix + v))
    return list(copy.node)


def _branch_outputs(prefix: str, keys: list[str], logits_type: int,
                    state_types: dict[str, int]) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(f"{prefix}/logits", logits_type, None)] + [
        helper.make_tensor_value_info(f"{prefix}/out.{k}", state_types[k], None) for k in keys]


def _const(name: str, values, dtype=TensorProto.INT64, dims=None) -> onnx.NodeProto:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name + "_value", dtype, [len(values)] if dims is None else dims, values))


@dataclass(frozen=True)
class PrefillGraph:
    """The package's prefill graph and what the decoder needs to call it: its token input, its logits output
    and whether that output holds every position ([batch, T, vocab]) or the last ([batch, vocab])."""
    model: onnx.ModelProto
    tokens_input: str
    logits_output: str
    logits_all: bool


def decoder_graph(step: onnx.ModelProto, n_layer: int, token_input: str, logits_output: str,
                  state_inputs: dict[str, str], state_outputs: dict[str, str],
                  state_types: dict[str, int], prefill: PrefillGraph) -> onnx.ModelProto:
    """The GenAI decoder model around `step` and `prefill` (weights: the step graph's initializers plus the
    prefill graph's that the step lacks). `state_inputs` / `state_outputs` map "layer{i}.{part}" to both
    graphs' names (the package format gives them one set); `state_types` to their ONNX dtypes."""
    g = step.graph
    kept = {t.name: t.name for t in g.initializer}  # the step graph's weights keep their names
    initializers = list(g.initializer)
    prefill_names, prefill_added = shared_initializers(prefill.model.graph, initializers, "p/")
    initializers += prefill_added
    keys = [f"layer{i}.{part}" for i in range(n_layer) for part in STATE_PARTS]
    nodes: list[onnx.NodeProto] = []
    ftype = state_types[keys[0]]
    logits_type = next(o.type.tensor_type.elem_type for o in g.output if o.name == logits_output)

    # unpack GenAI's states into ours (top-level names "in.<key>")
    nodes += [_const("g/idx0", 0, dims=[]), _const("g/idx1", 1, dims=[])]
    for i in range(n_layer):
        nodes.append(helper.make_node("Gather", [PAST_CONV % i, "g/idx0"], [f"in.layer{i}.att_shift"], axis=1))
        nodes.append(helper.make_node("Gather", [PAST_CONV % i, "g/idx1"], [f"in.layer{i}.ffn_shift"], axis=1))
        nodes.append(helper.make_node("Identity", [PAST_RECURRENT % i], [f"in.layer{i}.wkv"]))

    # the pad id (vocab_size, see PAD_LOGIT) would index past the embedding: clamp it to a real row (a padded
    # position is masked out; a finished sequence's next logits are not used)
    vocab_dim = next(o for o in g.output if o.name == logits_output).type.tensor_type.shape.dim[-1].dim_value
    nodes += [_const("g/last_id", vocab_dim - 1, dims=[]), _const("g/pad_id", vocab_dim, dims=[]),
              helper.make_node("Min", [INPUT_IDS, "g/last_id"], ["g/ids"])]
    # seq == 1 ?
    nodes += [helper.make_node("Shape", [INPUT_IDS], ["g/ids_shape"]),
              _const("g/one", 1, dims=[]),
              helper.make_node("Gather", ["g/ids_shape", "g/one"], ["g/seq"], axis=0),
              helper.make_node("Equal", ["g/seq", "g/one"], ["g/is_step"])]

    # a position is real unless it holds the pad id (vocab_size): GenAI pads prompts of unequal length with it
    nodes += [helper.make_node("Equal", [INPUT_IDS, "g/pad_id"], ["g/is_pad"]),
              helper.make_node("Not", ["g/is_pad"], ["g/mask"]),
              helper.make_node("Cast", ["g/is_pad"], ["g/is_pad_int"], to=TensorProto.INT64),
              helper.make_node("ReduceMax", ["g/is_pad_int"], ["g/any_pad_int"], keepdims=0),
              helper.make_node("Cast", ["g/any_pad_int"], ["g/any_pad"], to=TensorProto.BOOL),
              helper.make_node("Not", ["g/is_step"], ["g/is_prompt"]),
              helper.make_node("Not", ["g/any_pad"], ["g/no_pad"]),
              helper.make_node("And", ["g/is_prompt", "g/no_pad"], ["g/use_prefill"]),
              helper.make_node("And", ["g/is_prompt", "g/any_pad"], ["g/use_loop"]),
              _const("g/zero", 0, dims=[]),
              helper.make_node("Where", ["g/use_loop", "g/seq", "g/zero"], ["g/loop_trips"])]
    # logits [batch, vocab] for the paths that do not reach a position
    nodes += [_const("g/axis0", [0]), _const("g/vocab", [vocab_dim]),
              helper.make_node("Gather", ["g/ids_shape", "g/idx0"], ["g/batch"], axis=0),
              helper.make_node("Unsqueeze", ["g/batch", "g/axis0"], ["g/batch1"]),
              helper.make_node("Concat", ["g/batch1", "g/vocab"], ["g/logits_shape"], axis=0),
              helper.make_node("ConstantOfShape", ["g/logits_shape"], ["g/logits0"],
                               value=helper.make_tensor("zero", logits_type, [1], [0]))]

    def passing(prefix: str, logits: str, states: str) -> onnx.GraphProto:
        """A branch that does nothing: the logits and states it was given."""
        keep = [helper.make_node("Identity", [logits], [f"{prefix}/logits"])] + [
            helper.make_node("Identity", [f"{states}.{k}"], [f"{prefix}/out.{k}"]) for k in keys]
        return helper.make_graph(keep, "unchanged", [], _branch_outputs(prefix, keys, logits_type, state_types))

    # Three paths, one after the other at the top level, each skipped unless it applies (an If whose other branch
    # passes its inputs on, a Loop of zero trips); not nested (see the module docstring).
    # 1. decoding (seq == 1): the step graph once
    step_nodes = [_const("t/axis1", [1]), helper.make_node("Squeeze", ["g/ids", "t/axis1"], ["t/token"])]
    step_nodes += _embedded(g, "t/", {**kept, token_input: "t/token", **{state_inputs[k]: f"in.{k}" for k in keys},
                                      logits_output: "t/logits", **{state_outputs[k]: f"t/out.{k}" for k in keys}})
    step_graph = helper.make_graph(step_nodes, "step_once", [], _branch_outputs("t", keys, logits_type, state_types))
    nodes.append(helper.make_node("If", ["g/is_step"], ["a/logits"] + [f"a.{k}" for k in keys],
                                  then_branch=step_graph, else_branch=passing("a0", "g/logits0", "in")))

    # 2. a prompt with no padding (every prompt of the batch has this length): the prefill graph, one call
    prefill_nodes = _embedded(prefill.model.graph, "p/", {
        **prefill_names, prefill.tokens_input: "g/ids", prefill.logits_output: "p/logits_out",
        **{state_inputs[k]: f"a.{k}" for k in keys}, **{state_outputs[k]: f"p/out.{k}" for k in keys}})
    if prefill.logits_all:  # [batch, T, vocab]: the last position's
        prefill_nodes += [_const("p/last", -1, dims=[]),
                          helper.make_node("Gather", ["p/logits_out", "p/last"], ["p/logits"], axis=1)]
    else:
        prefill_nodes.append(helper.make_node("Identity", ["p/logits_out"], ["p/logits"]))
    prefill_graph = helper.make_graph(prefill_nodes, "prefill", [],
                                      _branch_outputs("p", keys, logits_type, state_types))
    nodes.append(helper.make_node("If", ["g/use_prefill"], ["b/logits"] + [f"b.{k}" for k in keys],
                                  then_branch=prefill_graph, else_branch=passing("b0", "a/logits", "a")))

    # 3. padded prompts: the step graph position by position; a pad position leaves state and logits unchanged
    body_in = [helper.make_tensor_value_info("l/t", TensorProto.INT64, []),
               helper.make_tensor_value_info("l/cond", TensorProto.BOOL, []),
               helper.make_tensor_value_info("l/logits", logits_type, None)] + [
        helper.make_tensor_value_info(f"l/in.{k}", state_types[k], None) for k in keys]
    body = [helper.make_node("Identity", ["l/cond"], ["l/cond_out"]),
            helper.make_node("Gather", ["g/ids", "l/t"], ["l/token"], axis=1),
            helper.make_node("Gather", ["g/mask", "l/t"], ["l/mask"], axis=1),  # [batch] bool
            _const("l/axis1", [1]), _const("l/axes123", [1, 2, 3]),
            helper.make_node("Unsqueeze", ["l/mask", "l/axis1"], ["l/mask2"]),
            helper.make_node("Unsqueeze", ["l/mask", "l/axes123"], ["l/mask4"])]
    body += _embedded(g, "l/", {**kept, token_input: "l/token", **{state_inputs[k]: f"l/in.{k}" for k in keys},
                                logits_output: "l/step_logits", **{state_outputs[k]: f"l/new.{k}" for k in keys}})
    body.append(helper.make_node("Where", ["l/mask2", "l/step_logits", "l/logits"], ["l/logits_out"]))
    for k in keys:
        mask = "l/mask4" if k.endswith("wkv") else "l/mask2"
        body.append(helper.make_node("Where", [mask, f"l/new.{k}", f"l/in.{k}"], [f"l/out.{k}"]))
    body_out = [helper.make_tensor_value_info("l/cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("l/logits_out", logits_type, None)] + [
        helper.make_tensor_value_info(f"l/out.{k}", state_types[k], None) for k in keys]
    body_graph = helper.make_graph(body, "masked_position", body_in, body_out)
    nodes += [_const("g/true", [True], TensorProto.BOOL, dims=[]),
              helper.make_node("Loop", ["g/loop_trips", "g/true", "b/logits"] + [f"b.{k}" for k in keys],
                               ["g/logits"] + [f"out.{k}" for k in keys], body=body_graph)]

    # one more logit, the pad/eos id vocab_size, that is never chosen
    pad_value = -1e30 if logits_type == TensorProto.FLOAT else -65504.0
    nodes += [_const("g/axis1", [1]),
              helper.make_node("Concat", ["g/batch1", "g/axis1"], ["g/pad_shape"], axis=0),
              helper.make_node("ConstantOfShape", ["g/pad_shape"], ["g/pad_logit"],
                               value=helper.make_tensor("pad", logits_type, [1], [pad_value])),
              helper.make_node("Concat", ["g/logits", "g/pad_logit"], ["g/logits_padded"], axis=1),
              helper.make_node("Unsqueeze", ["g/logits_padded", "g/axis1"], [LOGITS])]
    for i in range(n_layer):
        nodes += [helper.make_node("Unsqueeze", [f"out.layer{i}.att_shift", "g/axis1"], [f"g/att{i}"]),
                  helper.make_node("Unsqueeze", [f"out.layer{i}.ffn_shift", "g/axis1"], [f"g/ffn{i}"]),
                  helper.make_node("Concat", [f"g/att{i}", f"g/ffn{i}"], [PRESENT_CONV % i], axis=1),
                  helper.make_node("Identity", [f"out.layer{i}.wkv"], [PRESENT_RECURRENT % i])]

    def dims(name: str) -> list:
        value = next(v for v in list(g.input) + list(g.output) if v.name == name)
        return [d.dim_value or "batch" for d in value.type.tensor_type.shape.dim]

    inputs = [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence_length"])]
    outputs = [helper.make_tensor_value_info(LOGITS, logits_type, ["batch", 1, vocab_dim + 1])]
    for i in range(n_layer):
        conv = dims(state_inputs[f"layer{i}.att_shift"])
        wkv = dims(state_inputs[f"layer{i}.wkv"])
        inputs += [helper.make_tensor_value_info(PAST_CONV % i, ftype, [conv[0], 2] + conv[1:]),
                   helper.make_tensor_value_info(PAST_RECURRENT % i, ftype, wkv)]
        outputs += [helper.make_tensor_value_info(PRESENT_CONV % i, ftype, [conv[0], 2] + conv[1:]),
                    helper.make_tensor_value_info(PRESENT_RECURRENT % i, ftype, wkv)]
    graph = helper.make_graph(nodes, "rwkv_genai_decoder", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=_opsets(step, prefill.model), producer_name="rwkv-deploy")
    model.ir_version = step.ir_version
    return model


def _opsets(*models: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    """Every domain the models import, each at the highest version any of them asks for."""
    versions: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    return [helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())]
