"""The int8 file's float fallback for close calls (issue 34): one ONNX file that runs the int8 network on
every image and the float network only on the images whose int8 top-2 margin is below a threshold.

Why: int8's error is spread over the whole MobileNet backbone (docs/benchmarks.md, "int8 for the pretrained
default"); no recipe brought its labels to 99% agreement with float on the test splits. But a label can only
change where the two best classes are close: an image whose int8 probabilities are p1 >= p2 >= ... can only
get another top-1 label in float when the int8 error moves p1 - p2 across zero. So the file answers with the
int8 probabilities where p1 - p2 >= MARGIN, and computes the float network on the other images of the batch
(and only those), whose answer is then exactly the float file's.

The graph (the int8 file's nodes, then):

    P8 = int8 network(x)                       every output o of the int8 network is o/int8
    top2 = TopK(P8, 2); close = top2[:, 0] - top2[:, 1] < MARGIN
    If any(close):                             rows = NonZero(close)
        P32 = float network(Gather(x, rows))   the float file's nodes, names prefixed "float/"
        o = ScatterND(o/int8, rows, P32)       the close rows replaced by the float answer
    else:
        o = o/int8

The cost is the int8 network on every image plus the float one on the close fraction, and a file that holds
both networks' weights (int8 plus float). `imgclf export --quantize int8 --float-fallback 0` writes the int8
network alone.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

#: names of the float network inside the fallback branch
PREFIX = "float/"
#: the probabilities output the margin is taken on: the first output of the model
MARGIN_OUTPUT = 0


def close_calls(probabilities: np.ndarray, margin: float) -> np.ndarray:
    """Which rows the fallback file answers in float: top-1 minus top-2 probability below `margin`."""
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities), bool)
    top2 = -np.sort(-probabilities, axis=1)[:, :2]
    return (top2[:, 0] - top2[:, 1]) < margin


def simulate(float_probs: np.ndarray, int8_probs: np.ndarray, margin: float) -> np.ndarray:
    """The probabilities the fallback file gives, from the two files' outputs (for choosing a margin)."""
    out = int8_probs.copy()
    close = close_calls(int8_probs, margin)
    out[close] = float_probs[close]
    return out


def _prefixed(graph, input_name: str):
    """(nodes, initializers) of the float `graph`, every name but the input's prefixed with PREFIX."""
    import copy

    def rename(name: str) -> str:
        return name if (name == "" or name == input_name) else PREFIX + name

    nodes = []
    for node in graph.node:
        n = copy.deepcopy(node)
        n.name = PREFIX + n.name if n.name else ""
        for i, name in enumerate(n.input):
            n.input[i] = rename(name)
        for i, name in enumerate(n.output):
            n.output[i] = rename(name)
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in n.attribute):
            raise ValueError(f"float graph node {node.name!r} ({node.op_type}) has a subgraph: not supported")
        nodes.append(n)
    initializers = []
    for init in graph.initializer:
        t = copy.deepcopy(init)
        t.name = rename(t.name)
        initializers.append(t)
    return nodes, initializers


def build(float_model, int8_model, margin: float):
    """The fallback model (an onnx ModelProto) of the two files' models; `int8_model` is changed in place
    and returned. Both must have one input of the same name and the same outputs."""
    from onnx import TensorProto, helper, numpy_helper

    graph = int8_model.graph
    fgraph = float_model.graph
    if len(graph.input) != 1 or [i.name for i in graph.input] != [i.name for i in fgraph.input]:
        raise ValueError("the float and int8 files must have the same single input")
    outputs = [o.name for o in graph.output]
    if outputs != [o.name for o in fgraph.output]:
        raise ValueError(f"the float and int8 files have other outputs: {outputs} vs "
                         f"{[o.name for o in fgraph.output]}")
    x = graph.input[0].name

    # the int8 network's outputs become o/int8
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name in outputs:
                node.output[i] = f"{name}/int8"
        for i, name in enumerate(node.input):
            if name in outputs:
                node.input[i] = f"{name}/int8"
    p8 = f"{outputs[MARGIN_OUTPUT]}/int8"
    const = lambda name, value: numpy_helper.from_array(np.asarray(value), name)  # noqa: E731
    graph.initializer.extend([const("fallback/k", np.array([2], np.int64)),
                              const("fallback/margin", np.array(margin, np.float32)),
                              const("fallback/first", np.array([0], np.int64)),
                              const("fallback/second", np.array([1], np.int64)),
                              const("fallback/flat", np.array([-1], np.int64)),
                              const("fallback/last", np.array([-1], np.int64))])
    make = helper.make_node
    graph.node.extend([
        make("TopK", [p8, "fallback/k"], ["fallback/top2", "fallback/top2_index"], axis=-1, name="fallback/TopK"),
        make("Gather", ["fallback/top2", "fallback/first"], ["fallback/p1"], axis=1, name="fallback/p1"),
        make("Gather", ["fallback/top2", "fallback/second"], ["fallback/p2"], axis=1, name="fallback/p2"),
        make("Sub", ["fallback/p1", "fallback/p2"], ["fallback/gap"], name="fallback/gap"),
        make("Less", ["fallback/gap", "fallback/margin"], ["fallback/close2d"], name="fallback/Less"),
        make("Reshape", ["fallback/close2d", "fallback/flat"], ["fallback/close"], name="fallback/close"),
        make("Cast", ["fallback/close"], ["fallback/close_f"], to=TensorProto.FLOAT, name="fallback/Cast"),
        make("ReduceMax", ["fallback/close_f"], ["fallback/any_f"], keepdims=0, name="fallback/ReduceMax"),
        make("Cast", ["fallback/any_f"], ["fallback/any"], to=TensorProto.BOOL, name="fallback/any"),
    ])

    fnodes, finits = _prefixed(fgraph, x)
    graph.initializer.extend(finits)           # outer scope: the branch reads them from the main graph
    then_nodes = [
        make("NonZero", ["fallback/close"], ["fallback/rows_2d"], name="fallback/NonZero"),   # [1, k]
        make("Reshape", ["fallback/rows_2d", "fallback/flat"], ["fallback/rows"], name="fallback/rows"),
        make("Gather", [x, "fallback/rows"], ["fallback/x"], axis=0, name="fallback/x"),
        make("Unsqueeze", ["fallback/rows", "fallback/last"], ["fallback/rows_nd"], name="fallback/rows_nd"),
    ]
    for n in fnodes:
        for i, name in enumerate(n.input):
            if name == x:
                n.input[i] = "fallback/x"
    then_nodes += fnodes
    then_outputs, else_nodes, else_outputs = [], [], []
    for o in outputs:
        then_nodes.append(make("ScatterND", [f"{o}/int8", "fallback/rows_nd", PREFIX + o], [f"{o}/then"],
                               name=f"fallback/ScatterND/{o}"))
        then_outputs.append(helper.make_tensor_value_info(f"{o}/then", TensorProto.FLOAT, None))
        else_nodes.append(make("Identity", [f"{o}/int8"], [f"{o}/else"], name=f"fallback/Identity/{o}"))
        else_outputs.append(helper.make_tensor_value_info(f"{o}/else", TensorProto.FLOAT, None))
    then_graph = helper.make_graph(then_nodes, "float_fallback", [], then_outputs)
    else_graph = helper.make_graph(else_nodes, "int8_only", [], else_outputs)
    graph.node.append(make("If", ["fallback/any"], outputs, then_branch=then_graph, else_branch=else_graph,
                           name="fallback/If"))
    for entry in list(graph.value_info):
        if entry.name in outputs:
            graph.value_info.remove(entry)
    return int8_model


def margin_of(model) -> Optional[float]:
    """The fallback margin stored in a model built by `build`, or None for a plain int8 model."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == "fallback/margin":
            return float(numpy_helper.to_array(init))
    return None
