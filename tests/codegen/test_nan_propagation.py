"""Generated code propagates NaN (and keeps ±inf) exactly as the numpy reference does
(issue 6, item 5): every min/max/compare-based lowering — element-wise activations and their
gradients, maximum/minimum, clip, reductions and the softmax max-shift, argmax/argmin,
max pooling and its gradient, the matmul epilogue — on inputs holding NaN and ±inf, forward
and backward; and a model whose weights became NaN reports a NaN loss, compiled as eagerly."""
import numpy as np
import pytest

from kcompiler import keras
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend
from kcompiler.ops.elementwise import UNARY
from op_check import build_op_graph, run_compiled, vjp_graph

NAN, INF = np.nan, np.inf
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's invalid-value warnings


def specials(*shape, seed=0):
    """Normal values with NaN, +inf, -inf, 0 and -0 planted at fixed places."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    for i, v in zip(range(0, flat.size, 3), [NAN, INF, -INF, 0.0, -0.0, NAN]):
        flat[i] = v
    return x


def assert_same(got, expected, what):
    """Same NaN and ±inf positions, finite values within DESIGN §6's float32 tolerance."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, what
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(got, expected, err_msg=what)
        return
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        np.testing.assert_array_equal(test(got), test(expected), err_msg=f"{what}: {name} positions")
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def check_op(op, inputs, attrs=None, backward=True):
    """Compiled forward (and autodiff backward, cotangents of ones) == reference, fused and unfused."""
    attrs = attrs or {}
    fb, _, outs = build_op_graph(op, inputs, attrs)
    fb.g.graph["outputs"] = outs
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    expected = run_reference(fb.g, feeds)[0]
    graphs = [(fb.g, feeds, expected, "forward")]
    if backward:
        wrt = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"]
        bb = vjp_graph(op, inputs, attrs, wrt)
        bfeeds = dict(feeds)
        for nid in bb.g.graph["inputs"]:
            name = bb.g.nodes[nid]["attrs"]["name"]
            if name.startswith("r"):
                bfeeds[name] = np.ones(bb.g.nodes[nid]["type"].shape, np.float32)
        graphs.append((bb.g, bfeeds, run_reference(bb.g, bfeeds)[0][1:], "backward"))
    for fuse in (True, False):
        for g, f, want, direction in graphs:
            got = run_compiled(g, f, fuse=fuse)
            got = got[1:] if direction == "backward" else got
            for k, (a, e) in enumerate(zip(got, want)):
                assert_same(a, e, f"{op} {direction} output {k} (fuse={fuse})")


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_ops_and_their_gradients(op):
    check_op(op, [specials(4, 6)], dict(UNARY[op]))


@pytest.mark.parametrize("op", ["sign", "floor", "ceil", "round"])
def test_unary_ops_without_gradient(op):
    check_op(op, [specials(4, 6)], backward=False)


@pytest.mark.parametrize("op", ["maximum", "minimum", "add", "mul", "div", "pow"])
def test_binary_ops(op):
    y = specials(4, 6, seed=1)
    y.reshape(-1)[[1, 4, 7]] = [NAN, 2.0, NAN]  # NaN on one side only, on both, and against inf
    check_op(op, [specials(4, 6), y], backward=op in ("maximum", "minimum", "add", "mul"))


@pytest.mark.parametrize("op", ["greater", "greater_equal", "less", "less_equal", "equal", "not_equal"])
def test_comparisons(op):
    check_op(op, [specials(4, 6), specials(4, 6, seed=1)], backward=False)


def test_clip():
    check_op("clip", [specials(4, 6)], {"lo": -0.5, "hi": 0.5})


@pytest.mark.parametrize("op", ["max", "min", "sum", "mean"])
@pytest.mark.parametrize("axes", [(1,), (0, 1), None], ids=str)
def test_reductions(op, axes):
    x = specials(4, 6)
    x[2] = np.arange(6)  # a row without NaN
    check_op(op, [x], {"axes": axes, "keepdims": False})


@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_arg_extrema_pick_the_first_nan(op):
    x = np.array([[1, 3, NAN, 5, NAN], [NAN, 2, 1, 0, 9], [4, 1, 7, -INF, INF], [2, 2, 1, 2, 1]], np.float32)
    check_op(op, [x], {"axis": 1}, backward=False)
    check_op(op, [x], {"axis": 0}, backward=False)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("width", [5, 40])  # 40: the row maximum in 16 lanes and a rest
def test_softmax_rows_with_nan_or_inf(op, width):
    x = np.random.default_rng(2).standard_normal((4, width)).astype(np.float32)
    x[0, 2], x[1, 0], x[2, 4] = NAN, INF, -INF
    x[3, width - 1] = NAN
    check_op(op, [x], {"axis": -1})


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_max_pooling_and_its_gradient(padding):
    x = np.random.default_rng(3).standard_normal((2, 5, 5, 3)).astype(np.float32)
    x[0, 1, 1, 0], x[0, 3, 4, 2], x[1, 0, 0, 1], x[1, 2, 2, 2] = NAN, NAN, INF, -INF
    x[1, 4, 3, 0] = NAN
    check_op("max_pool2d", [x], {"pool": (2, 2), "strides": (2, 2), "padding": padding})
    check_op("max_pool2d", [x], {"pool": (3, 3), "strides": (1, 1), "padding": padding})


def test_a_window_whose_maximum_is_nan_sends_its_gradient_to_its_first_nan():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    x[0, 0, 1, 0], x[0, 1, 0, 0], x[0, 3, 3, 0] = NAN, NAN, NAN
    b = vjp_graph("max_pool2d", [x], {"pool": (2, 2), "strides": (2, 2), "padding": "valid"}, [0])
    dx = run_compiled(b.g, {"x0": x, "r0": np.ones((1, 2, 2, 1), np.float32)})[1]
    expected = np.zeros_like(x)
    expected[0, 0, 1, 0] = expected[0, 3, 3, 0] = 1  # the first NaN of windows 0 and 3
    expected[0, 1, 3, 0] = expected[0, 3, 1, 0] = 1  # the plain maxima of windows 1 and 2
    np.testing.assert_array_equal(dx, expected)


def test_matmul_bias_relu_epilogue_and_its_gradient():
    b = GraphBuilder(name="dense_relu")
    x, w = b.input("x", TensorType((3, 4))), b.input("w", TensorType((4, 5)))
    bias = b.input("bias", TensorType((5,)))
    y = b.op("relu", b.op("bias_add", b.op("matmul", x, w), bias))
    b.g.graph["outputs"] = [y]
    feeds = {"x": np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32),
             "w": np.random.default_rng(5).standard_normal((4, 5)).astype(np.float32),
             "bias": np.array([NAN, 0, -INF, INF, 1], np.float32)}
    feeds["x"][1, 2] = NAN
    assert_same(run_compiled(b.g, feeds)[0], run_reference(b.g, feeds)[0][0], "dense+relu")


def nan_weight_model(run_eagerly, activation="relu"):
    backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation=activation),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  run_eagerly=run_eagerly)
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([np.full_like(kernel, NAN), bias])
    return model


@pytest.mark.parametrize("activation", ["relu", "relu6", "elu", "leaky_relu", "hard_sigmoid"])
def test_a_model_whose_weights_became_nan_reports_a_nan_loss(activation):
    x = np.random.default_rng(6).standard_normal((8, 4)).astype(np.float32)
    y = np.arange(8, dtype=np.int32) % 3
    for run_eagerly in (False, True):
        model = nan_weight_model(run_eagerly, activation)
        assert np.isnan(model.evaluate(x, y, verbose=0)[0]), f"evaluate, run_eagerly={run_eagerly}"
        assert np.isnan(model.train_on_batch(x, y)[0]), f"train_on_batch, run_eagerly={run_eagerly}"
        assert np.isnan(model.predict(x, verbose=0)).all()
