"""The GenAI decoder graph: our step graph wrapped in GenAI's input/output conventions.

GenAI feeds `input_ids` [batch, seq] and, per layer, the two state tensors its
RecurrentState keeps ("conv" and "recurrent", zero-initialised, only the batch axis dynamic); it wants `logits`
[batch, seq', vocab] and the present states back. The graph:

- unpacks each layer's "conv" tensor [batch, 2, C] into att_shift (index 0) and ffn_shift (index 1); the wkv
  state is the "recurrent" one;
- `If` seq == 1: the step graph once (decoding: no loop, no masking — the per-token path);
- else: a `Loop` over the positions running the step graph, where a position holding the pad id (vocab_size)
  leaves the state and the carried logits unchanged (masked state updates), so padded prompts of unequal
  length in one batch give the same result as each prompt alone. The mask comes from the ids, not from
  GenAI's attention_mask: masking by the attention_mask 0.18 fed this model type still let the padding into
  the state (tried), so the graph takes no attention_mask input;
- packs the states back and returns the last logits as [batch, 1, vocab + 1]: the extra logit, at -1e30
  (fp16: -65504), is the id GenAI pads with and stops at (vocab_size), so it is never chosen.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

INPUT_IDS, LOGITS = "input_ids", "logits"
PAST_CONV, PAST_RECURRENT = "past.%d.conv", "past.%d.recurrent"
PRESENT_CONV, PRESENT_RECURRENT = "present.%d.conv", "present.%d.recurrent"
STATE_PARTS = ("att_shift", "wkv", "ffn_shift")


def _renamed_step(step: onnx.GraphProto, prefix: str, inputs: dict[str, str], outputs: dict[str, str],
                  outer: set[str]) -> list[onnx.NodeProto]:
    """The step graph's nodes with its inputs/outputs mapped and every other value prefixed (ONNX forbids a
    subgraph value that shadows another scope's); initializers (`outer`) keep their names."""
    def name(value: str) -> str:
        if not value or value in outer:
            return value
        if value in inputs:
            return inputs[value]
        if value in outputs:
            return outputs[value]
        return prefix + value

    nodes = []
    for node in step.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name if node.name else ""
        copy.input[:] = [name(v) for v in node.input]
        copy.output[:] = [name(v) for v in node.output]
        nodes.append(copy)
    return nodes


def _const(name: str, values, dtype=TensorProto.INT64, dims=None) -> onnx.NodeProto:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name + "_value", dtype, [len(values)] if dims is None else dims, values))


def decoder_graph(step: onnx.ModelProto, n_layer: int, token_input: str, logits_output: str,
                  state_inputs: dict[str, str], state_outputs: dict[str, str],
                  state_types: dict[str, int]) -> onnx.ModelProto:
    """The GenAI decoder model around `step` (weights stay the step graph's initializers). `state_inputs` /
    `state_outputs` map "layer{i}.{part}" to the step graph's names; `state_types` to their ONNX dtypes."""
    g = step.graph
    outer = {t.name for t in g.initializer}
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

    # then: one step
    then_nodes = [_const("t/axis1", [1]), helper.make_node("Squeeze", ["g/ids", "t/axis1"], ["t/token"])]
    then_nodes += _renamed_step(g, "t/", {token_input: "t/token", **{state_inputs[k]: f"in.{k}" for k in keys}},
                                {logits_output: "t/logits", **{state_outputs[k]: f"t/out.{k}" for k in keys}},
                                outer)
    then_out = [helper.make_tensor_value_info("t/logits", logits_type, None)] + [
        helper.make_tensor_value_info(f"t/out.{k}", state_types[k], None) for k in keys]
    then_graph = helper.make_graph(then_nodes, "step_once", [], then_out)

    # else: a masked loop over the positions
    body_in = [helper.make_tensor_value_info("l/t", TensorProto.INT64, []),
               helper.make_tensor_value_info("l/cond", TensorProto.BOOL, []),
               helper.make_tensor_value_info("l/logits", logits_type, None)] + [
        helper.make_tensor_value_info(f"l/in.{k}", state_types[k], None) for k in keys]
    body = [helper.make_node("Identity", ["l/cond"], ["l/cond_out"]),
            helper.make_node("Gather", ["g/ids", "l/t"], ["l/token"], axis=1),
            helper.make_node("Gather", ["e/mask_tail", "l/t"], ["l/mask"], axis=1),  # [batch] bool
            _const("l/axis1", [1]), _const("l/axes12", [1, 2]), _const("l/axes123", [1, 2, 3]),
            helper.make_node("Unsqueeze", ["l/mask", "l/axis1"], ["l/mask2"]),
            helper.make_node("Unsqueeze", ["l/mask", "l/axes123"], ["l/mask4"])]
    body += _renamed_step(g, "l/", {token_input: "l/token", **{state_inputs[k]: f"l/in.{k}" for k in keys}},
                          {logits_output: "l/step_logits", **{state_outputs[k]: f"l/new.{k}" for k in keys}}, outer)
    body.append(helper.make_node("Where", ["l/mask2", "l/step_logits", "l/logits"], ["l/logits_out"]))
    for k in keys:
        mask = "l/mask4" if k.endswith("wkv") else "l/mask2"
        body.append(helper.make_node("Where", [mask, f"l/new.{k}", f"l/in.{k}"], [f"l/out.{k}"]))
    body_out = [helper.make_tensor_value_info("l/cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("l/logits_out", logits_type, None)] + [
        helper.make_tensor_value_info(f"l/out.{k}", state_types[k], None) for k in keys]
    body_graph = helper.make_graph(body, "masked_position", body_in, body_out)

    else_nodes = [
        # a position is real unless it holds the pad id (vocab_size): GenAI pads prompts with it
        _const("e/axis0", [0]),
        helper.make_node("Equal", [INPUT_IDS, "g/pad_id"], ["e/is_pad"]),
        helper.make_node("Not", ["e/is_pad"], ["e/mask_tail"]),
        # logits carried from zeros [batch, vocab]
        helper.make_node("Gather", ["g/ids_shape", "g/idx0"], ["e/batch"], axis=0),
        helper.make_node("Unsqueeze", ["e/batch", "e/axis0"], ["e/batch1"]),
        _const("e/vocab", [vocab_dim]),
        helper.make_node("Concat", ["e/batch1", "e/vocab"], ["e/logits_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["e/logits_shape"], ["e/logits0"],
                         value=helper.make_tensor("zero", logits_type, [1], [0])),
        _const("e/true", [True], TensorProto.BOOL, dims=[]),
        helper.make_node("Loop", ["g/seq", "e/true", "e/logits0"] + [f"in.{k}" for k in keys],
                         ["e/logits"] + [f"e/out.{k}" for k in keys], body=body_graph),
    ]
    else_out = [helper.make_tensor_value_info("e/logits", logits_type, None)] + [
        helper.make_tensor_value_info(f"e/out.{k}", state_types[k], None) for k in keys]
    else_graph = helper.make_graph(else_nodes, "masked_positions", [], else_out)

    nodes.append(helper.make_node("If", ["g/is_step"], ["g/logits"] + [f"out.{k}" for k in keys],
                                  then_branch=then_graph, else_branch=else_graph))
    # one more logit, the pad/eos id vocab_size, that is never chosen
    pad_value = -1e30 if logits_type == TensorProto.FLOAT else -65504.0
    nodes += [_const("g/axis1", [1]), _const("g/axis0", [0]),
              helper.make_node("Gather", ["g/ids_shape", "g/idx0"], ["g/batch"], axis=0),
              helper.make_node("Unsqueeze", ["g/batch", "g/axis0"], ["g/batch1"]),
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
    graph = helper.make_graph(nodes, "rwkv_genai_decoder", inputs, outputs, initializer=list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name="rwkv-deploy")
    model.ir_version = step.ir_version
    return model
