"""Fuse each RWKV-7 layer's time-mix core of a CPU step graph into one `ai.rwkv_deploy.cpu::Rwkv7WkvStep` node.

Between its weight products an RWKV-7 decode step runs about 45 small nodes per layer (models/reference/v7.py:
key normalisation, k', the decay, the state update and readout, ln_x, the bonus term); each costs ONNX Runtime a
few microseconds whatever its size, about a third of an int8 step. The rewrite finds them from the layer's
`state_out.layer<L>.wkv` output, checks every node and constant of the pattern on the way (Reshapes, which only
regroup the channels, are looked through), and replaces the two nodes that produce the state and the core's
output; what fed only them is dropped. A layer that does not match exactly is left as it was, so a graph of
another version, or one exported differently, keeps its portable nodes.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
import onnx
from onnx import helper

from rwkv_deploy.package.names import CPU_OPS_DOMAIN, STATE_OUTPUT_PREFIX, state_input, state_output

from .graph_edit import GraphIndex, NoMatch, copy_of, finish

OP = "Rwkv7WkvStep"
WKV_STATE_SUFFIX = ".wkv"


def _split(g: GraphIndex, node: onnx.NodeProto, first: str) -> tuple[onnx.NodeProto, str]:
    """For a commutative two-input node: (the `first`-type producer of one input, the other input's name)."""
    for mine, other in permutations(node.input):
        try:
            return g.node(mine, first), other
        except NoMatch:
            continue
    raise NoMatch(f"{node.name}: no input produced by {first}")


def _constant_side(g: GraphIndex, node: onnx.NodeProto) -> tuple[str, str]:
    """For a commutative two-input node with one constant input: (the constant's name, the other name)."""
    for mine, other in permutations(node.input):
        if mine in g.constants and other not in g.constants:
            return mine, other
    raise NoMatch(f"{node.name}: no constant input")


def _check_last_axis(g: GraphIndex, node: onnx.NodeProto, head_size: int) -> None:
    """A reduction over the last axis (of a tensor grouped per head: its Reshape ends in the head size)."""
    axes = g.constant(node.input[1]) if len(node.input) > 1 else None
    keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    if axes is None or axes.tolist() != [-1] or keep != 1:
        raise NoMatch(f"{node.name}: not a reduction over the last axis")
    if _last_dim(g, node.input[0]) != head_size:
        raise NoMatch(f"{node.name}: its input is not grouped per head of {head_size}")


def _last_dim(g: GraphIndex, name: str) -> int | None:
    """The last dimension of `name` where the graph states it: a constant's, a Reshape's target (constant, last
    entry positive), or for an elementwise product the one its known inputs agree on."""
    if name in g.constants:
        dims = g.constants[name].dims
        return int(dims[-1]) if dims else None
    node = g.producer.get(name)
    if node is None or node.domain != "":
        return None
    if node.op_type == "Reshape" and node.input[1] in g.constants:
        last = int(g.constant(node.input[1]).reshape(-1)[-1])
        return last if last > 0 else None
    if node.op_type == "Mul":
        known = {d for d in (_last_dim(g, i) for i in node.input) if d is not None and d > 1}
        return known.pop() if len(known) == 1 else None
    return None


def _match_layer(g: GraphIndex, state_out: str, heads: int, head_size: int) -> tuple[onnx.NodeProto, list[str],
                                                                                 dict[str, float], str]:
    """(the node producing the core's output y, the fused node's inputs, its attributes, y's name) for the layer
    whose new WKV state is `state_out`."""
    c = heads * head_size
    update = g.producer.get(state_out)
    if update is None or update.op_type != "Add":
        raise NoMatch(f"{state_out}: not produced by Add")
    decay_mul, update_mm = None, None
    for mine, other in permutations(update.input):
        try:
            decay_mul, update_mm = g.node(mine, "Mul"), g.node(other, "MatMul")
            break
        except NoMatch:
            continue
    if decay_mul is None or update_mm is None:
        raise NoMatch(f"{update.name}: not S * w + left @ right")
    state = next((name for name in decay_mul.input if name in g.inputs), None)
    if state is None:
        raise NoMatch(f"{decay_mul.name}: no graph input (the state) among its inputs")
    w_view = next(name for name in decay_mul.input if name != state)
    w_row = g.producer.get(w_view)
    if (w_row is None or w_row.op_type != "Reshape" or w_row.input[1] not in g.constants
            or g.constant(w_row.input[1]).tolist()[-2:] != [1, head_size]):
        raise NoMatch(f"{decay_mul.name}: the decay is not a row [.., 1, N] (S · diag(w))")
    scaled = g.node(g.node(w_view, "Exp").input[0], "Mul")
    sigmoid, scale_name = _split(g, scaled, "Sigmoid")
    decay_scale, w_hat = g.scalar(scale_name), sigmoid.input[0]

    left, right = g.node(update_mm.input[0], "Concat"), g.node(update_mm.input[1], "Concat")
    if len(left.input) != 2 or len(right.input) != 2:
        raise NoMatch(f"{update_mm.name}: its operands are not two-part Concats")
    state_alpha = g.node(left.input[0], "MatMul")
    if state_alpha.input[0] != state:
        raise NoMatch(f"{state_alpha.name}: does not read the state")
    kk = g.node(state_alpha.input[1], "Neg").input[0]
    v = g.through_reshapes(left.input[1])
    beta_mul = g.node(right.input[0], "Mul")
    if g.through_reshapes(kk) not in {g.through_reshapes(i) for i in beta_mul.input}:
        raise NoMatch(f"{beta_mul.name}: not kk * a")
    a = g.through_reshapes(next(i for i in beta_mul.input if g.through_reshapes(i) != g.through_reshapes(kk)))
    k_prime_mul = g.node(right.input[1], "Mul")

    norm = g.node(kk, "Div")
    kk_raw = norm.input[0]
    clip = g.node(norm.input[1], "Clip")
    l2 = g.node(clip.input[0], "ReduceL2")
    if l2.input[0] != kk_raw or len(clip.input) < 2 or (len(clip.input) > 2 and clip.input[2]):
        raise NoMatch(f"{norm.name}: not kk / max(|kk|, floor)")
    _check_last_axis(g, l2, head_size)
    norm_floor = g.scalar(clip.input[1])
    k_k, k = _constant_side(g, g.node(kk_raw, "Mul"))

    factor_add, k_again = _split(g, k_prime_mul, "Add")
    if g.through_reshapes(k_again) != k:
        raise NoMatch(f"{k_prime_mul.name}: not k * (1 + (a - 1) * k_a)")
    one, scaled_a = _constant_side(g, factor_add)
    g.scalar(one, 1.0)
    k_a, a_minus = _constant_side(g, g.node(scaled_a, "Mul"))
    sub = g.node(a_minus, "Sub")
    if g.through_reshapes(sub.input[0]) != a:
        raise NoMatch(f"{sub.name}: not a - 1")
    g.scalar(sub.input[1], 1.0)

    readout = next((n for n in g.readers.get(state_out, []) if n.op_type == "MatMul"), None)
    if readout is None or readout.input[0] != state_out:
        raise NoMatch(f"{state_out}: no readout S' @ r")
    r = g.through_reshapes(readout.input[1])
    group_norm = g.reader(readout.output[0], "LayerNormalization")
    eps = next((a.f for a in group_norm.attribute if a.name == "epsilon"), 1e-5)
    axis = next((a.i for a in group_norm.attribute if a.name == "axis"), -1)
    scale = g.constant(group_norm.input[1])
    if axis != -1 or scale.size != head_size or not np.all(scale == 1) or (len(group_norm.input) > 2 and
                                                                          group_norm.input[2]):
        raise NoMatch(f"{group_norm.name}: not a per-head normalisation without affine")
    ln_mul = g.reader(group_norm.output[0], "Mul")
    ln_weight, _ = _constant_side(g, ln_mul)
    ln_add = g.reader(ln_mul.output[0], "Add")
    ln_bias, _ = _constant_side(g, ln_add)
    y_add = g.reader(ln_add.output[0], "Add")

    bonus = g.node(next(i for i in y_add.input if i != ln_add.output[0]), "Mul")
    total, v_again = _split(g, bonus, "ReduceSum")
    if g.through_reshapes(v_again) != v:
        raise NoMatch(f"{bonus.name}: not sum(...) * v")
    _check_last_axis(g, total, head_size)
    r_k, rk_product = _constant_side(g, g.node(total.input[0], "Mul"))
    pair = g.node(rk_product, "Mul")
    if {g.through_reshapes(i) for i in pair.input} != {r, g.through_reshapes(k_prime_mul.output[0])}:
        raise NoMatch(f"{pair.name}: not r * k'")

    for name in (k_k, k_a, r_k, ln_weight, ln_bias):
        if g.constant(name).size != c:
            raise NoMatch(f"{name}: holds {g.constant(name).size} values, not C = {c}")
    inputs = [state, r, w_hat, k, v, a, k_k, k_a, r_k, ln_weight, ln_bias]
    return y_add, inputs, {"decay_scale": decay_scale, "norm_floor": norm_floor, "epsilon": eps}, y_add.output[0]


def _heads(value: onnx.ValueInfoProto) -> tuple[int, int] | None:
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:]) or dims[2].dim_value != dims[3].dim_value:
        return None
    return dims[1].dim_value, dims[2].dim_value


def rewrite_rwkv7_wkv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every RWKV-7 layer's time-mix core on Rwkv7WkvStep, and how many were fused."""
    out = copy_of(model)
    graph = out.graph
    g = GraphIndex.of(graph)
    fused: list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]] = []  # (state producer, y producer, new)
    for output in graph.output:
        name = output.name
        if not (name.startswith(STATE_OUTPUT_PREFIX) and name.endswith(WKV_STATE_SUFFIX)):
            continue
        state_in = state_input(name[len(STATE_OUTPUT_PREFIX):])
        if state_in not in g.inputs or state_output(name[len(STATE_OUTPUT_PREFIX):]) != name:
            continue
        shape = _heads(g.inputs[state_in])
        if shape is None:
            continue
        try:
            y_node, inputs, attributes, y = _match_layer(g, name, *shape)
        except NoMatch:
            continue
        if inputs[0] != state_in:
            continue
        node = helper.make_node(OP, inputs, [y, name], name=f"{y_node.name}/wkv7", domain=CPU_OPS_DOMAIN,
                                **attributes)
        fused.append((g.producer[name], y_node, node))
    replaced = {id(p): None for p, _, _ in fused} | {id(y): new for _, y, new in fused}
    nodes = [replaced.get(id(n), n) if id(n) in replaced else n for n in graph.node]
    del graph.node[:]
    graph.node.extend(n for n in nodes if n is not None)
    return finish(out, [], len(fused))
