"""Fuse each block's token shift of a CPU step graph into one `ai.rwkv_deploy.cpu::TokenShiftMix` node.

A decode step mixes each block's input x with the previous token's (the shift state) as x + (shift - x) * mix,
once per mix vector (RWKV-7: six in the time-mix block, one in the channel-mix block), and keeps x as the next
shift state: 2 + 2m small nodes (Unsqueeze, Sub, m Mul and m Add, Gather) that the operator does in one, with the
same arithmetic in the same order (bit-identical). Found from each `state_in.<layer>...shift` input; a block whose
nodes differ from the pattern in any way (another reader of the difference, a mix that is not a constant vector,
a state output that is not x) is left as it was.
"""

from __future__ import annotations

import onnx
from onnx import helper

from rwkv_deploy.package.names import CPU_OPS_DOMAIN, STATE_INPUT_PREFIX, STATE_OUTPUT_PREFIX

from .graph_edit import GraphIndex, NoMatch, copy_of, finish

OP = "TokenShiftMix"
SHIFT_STATE_SUFFIX = "_shift"


def _match_block(g: GraphIndex, state_in: str, state_out: str, width: int) -> tuple[list[str], list[str],
                                                                                   list[onnx.NodeProto]]:
    """(the fused node's inputs, its outputs, the nodes it replaces: the Sub first) for the block whose shift
    state is `state_in` / `state_out`."""
    unsqueeze = g.reader(state_in, "Unsqueeze")
    if g.constant(unsqueeze.input[1]).tolist() != [1]:
        raise NoMatch(f"{unsqueeze.name}: not [B, C] -> [B, 1, C]")
    sub = g.reader(unsqueeze.output[0], "Sub")
    if sub.input[0] != unsqueeze.output[0]:
        raise NoMatch(f"{sub.name}: not shift - x")
    x = sub.input[1]
    keep = g.producer.get(state_out)
    if (keep is None or keep.op_type != "Gather" or keep.input[0] != x or g.scalar(keep.input[1]) not in (-1, 0)
            or next((a.i for a in keep.attribute if a.name == "axis"), 0) != 1):
        raise NoMatch(f"{state_out}: not x[:, -1]")
    mixes, outputs, replaced = [], [], [sub, unsqueeze, keep]
    for mul in g.readers.get(sub.output[0], []):
        if mul.op_type != "Mul" or mul.domain != "" or list(mul.input).index(sub.output[0]) != 0:
            raise NoMatch(f"{mul.name}: reads shift - x and is not (shift - x) * mix")
        mix = mul.input[1]
        if g.constant(mix).size != width:
            raise NoMatch(f"{mix}: not a vector of C = {width} values")
        add = g.reader(mul.output[0], "Add")
        if list(add.input) != [x, mul.output[0]]:
            raise NoMatch(f"{add.name}: not x + (shift - x) * mix")
        mixes.append(mix)
        outputs.append(add.output[0])
        replaced += [mul, add]
    if not mixes:
        raise NoMatch(f"{sub.name}: mixes nothing")
    return [x, state_in, *mixes], [state_out, *outputs], replaced


def _width(value: onnx.ValueInfoProto) -> int | None:
    dims = value.type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None


def rewrite_token_shifts(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with each block's token shift on TokenShiftMix, and how many were fused."""
    out = copy_of(model)
    graph = out.graph
    g = GraphIndex.of(graph)
    outputs = {o.name for o in graph.output}
    fused: dict[int, onnx.NodeProto | None] = {}  # id(node) -> the fused node in its place, or None (removed)
    for value in graph.input:
        name = value.name[len(STATE_INPUT_PREFIX):]
        state_out, width = STATE_OUTPUT_PREFIX + name, _width(value)
        if not (value.name.startswith(STATE_INPUT_PREFIX) and name.endswith(SHIFT_STATE_SUFFIX)) or (
                state_out not in outputs or width is None):
            continue
        try:
            inputs, names, replaced = _match_block(g, value.name, state_out, width)
        except NoMatch:
            continue
        sub = replaced[0]  # the fused node runs where the Sub ran: x is there, and every mix is read after it
        node = helper.make_node(OP, inputs, names, name=f"{sub.name}/token_shift", domain=CPU_OPS_DOMAIN)
        fused |= {id(n): None for n in replaced} | {id(sub): node}
    nodes = [fused.get(id(n), n) if id(n) in fused else n for n in graph.node]
    del graph.node[:]
    graph.node.extend(n for n in nodes if n is not None)
    return finish(out, [], sum(1 for n in fused.values() if n is not None))
