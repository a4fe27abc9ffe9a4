"""Builds the small ONNX models the tests run, and runs them with onnxruntime
as the reference the agent's scores are checked against.

  onnx_models.py make KIND WINDOW OUT.onnx [--symbolic-batch]
      KIND: score  (a two-layer network ending in a sigmoid: one value)
            recon  (a linear autoencoder: the window reconstructed)
            jump   (sigmoid(40 * (mean of the last 3 - mean of the first 5) - 4))
  onnx_models.py run MODEL.onnx SERIES.json
      SERIES.json: {"window": W, "values": [...]}; prints a JSON list: for
      each full window, in order, the model's first output, flattened.
"""

import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def make(kind, window, out, symbolic):
    batch = "N" if symbolic else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, window])
    rng = np.random.default_rng(15)
    if kind == "score":
        nodes = [
            helper.make_node("MatMul", ["x", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Tanh", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
            helper.make_node("Add", ["h3", "b2"], ["h4"]),
            helper.make_node("Sigmoid", ["h4"], ["score"]),
        ]
        inits = [
            const("w1", rng.normal(0, 0.5, (window, 8))),
            const("b1", rng.normal(0, 0.1, (8,))),
            const("w2", rng.normal(0, 0.5, (8, 1))),
            const("b2", [0.1]),
        ]
        y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 1])
    elif kind == "recon":
        nodes = [
            helper.make_node("MatMul", ["x", "enc"], ["code0"]),
            helper.make_node("Relu", ["code0"], ["code"]),
            helper.make_node("MatMul", ["code", "dec"], ["recon"]),
        ]
        inits = [
            const("enc", rng.normal(0, 0.3, (window, 4))),
            const("dec", rng.normal(0, 0.3, (4, window))),
        ]
        y = helper.make_tensor_value_info("recon", TensorProto.FLOAT, [batch, window])
    elif kind == "jump":
        if window < 8:
            raise SystemExit("jump needs a window of at least 8")
        w = np.zeros((window, 1))
        w[:5, 0] = -40.0 / 5
        w[-3:, 0] = 40.0 / 3
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["d"]),
            helper.make_node("Add", ["d", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["score"]),
        ]
        inits = [const("w", w), const("b", [-4.0])]
        y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 1])
    else:
        raise SystemExit(f"unknown model kind {kind}")
    graph = helper.make_graph(nodes, kind, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


def run(model, series):
    import onnxruntime as ort

    with open(series) as f:
        spec = json.load(f)
    window = spec["window"]
    values = np.asarray(spec["values"], dtype=np.float32)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for end in range(window, len(values) + 1):
        x = values[end - window : end].reshape(1, window)
        y = session.run(None, {name: x})[0]
        out.append([float(v) for v in np.asarray(y).ravel()])
    json.dump(out, sys.stdout)


def main(argv):
    if len(argv) >= 4 and argv[0] == "make":
        make(argv[1], int(argv[2]), argv[3], "--symbolic-batch" in argv[4:])
    elif len(argv) == 3 and argv[0] == "run":
        run(argv[1], argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
