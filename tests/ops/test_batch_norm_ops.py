"""batch_norm_stats, batch_norm_apply and batch_norm_grad: references against plain numpy,
the gradient of stats-then-apply (one batch_norm_grad) against float64 finite differences,
the compiled kernels (every backend, through the `target` fixture) against the references,
and the errors: shapes, an apply whose statistics are not those of its x, second order."""
import numpy as np
import pytest

from kcompiler.errors import ShapeError, UnsupportedError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.passes.autodiff import gradients
from op_check import assert_close32, check_compiled, check_vjp, run_compiled, run_op

RNG = np.random.default_rng(0)

# (x shape, channel axis): NHWC with odd sizes, one position, channels first, rank 2, one channel
CASES = [((2, 3, 5, 3), -1), ((3, 1, 1, 4), 3), ((2, 3, 2, 5), 1), ((7, 3), -1), ((5, 1), -1)]


def normal(*shape):
    return RNG.standard_normal(shape)


def stats_shape(shape, axis):
    axis %= len(shape)
    return tuple(d if i == axis else 1 for i, d in enumerate(shape))


def batch_norm_graph(x, axis, scale, center, epsilon=1e-3, dtype="float64"):
    """x, gamma, beta -> stats -> apply; the sum of y * r and its gradient w.r.t. x, gamma and
    beta by the autodiff pass. Inputs x, [gamma], [beta], r."""
    b = GraphBuilder(name="bn")
    xi = b.input("x", TensorType(x.shape, dtype))
    vector = TensorType(stats_shape(x.shape, axis), dtype)
    params = ([b.input("gamma", vector)] if scale else []) + ([b.input("beta", vector)] if center else [])
    stats = b.add("batch_norm_stats", [xi], {"axis": axis})
    mean, var = b.tuple_item(stats, 0), b.tuple_item(stats, 1)
    y = b.add("batch_norm_apply", [xi, mean, var, *params],
              {"axis": axis, "epsilon": epsilon, "scale": scale, "center": center})
    r = b.input("r", TensorType(x.shape, dtype))
    total = b.op("sum", b.op("mul", y, r), axes=None, keepdims=False)
    b.g.graph["outputs"] = [total, y] + gradients(b, total, [xi, *params])
    return b


def feeds_for(x, axis, scale, center):
    shape = stats_shape(x.shape, axis)
    feeds = {"x": x, "r": normal(*x.shape)}
    if scale:
        feeds["gamma"] = 1.0 + 0.5 * normal(*shape)
    if center:
        feeds["beta"] = normal(*shape)
    return feeds


@pytest.mark.parametrize("shape,axis", CASES)
def test_stats_and_apply_references_are_batch_normalization(shape, axis):
    x = 3.0 + normal(*shape)
    reduced = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    mean, var = run_op("batch_norm_stats", [x], {"axis": axis})
    np.testing.assert_allclose(mean, x.mean(axis=reduced, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=reduced, keepdims=True), rtol=1e-12)
    gamma, beta = normal(*mean.shape), normal(*mean.shape)
    (y,) = run_op("batch_norm_apply", [x, mean, var, gamma, beta], {"axis": axis, "epsilon": 0.01})
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 0.01) * gamma + beta, rtol=1e-12)


@pytest.mark.parametrize("shape,axis", CASES[:4])
def test_stats_vjp(shape, axis):
    check_vjp("batch_norm_stats", [normal(*shape)], {"axis": axis})


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False), (False, False)])
def test_gradient_of_stats_then_apply_is_batch_norm_grad_and_matches_finite_differences(shape, axis, scale, center):
    x = normal(*shape)
    b = batch_norm_graph(x, axis, scale, center)
    assert [b.g.nodes[n]["op"] for n in b.g.nodes].count("batch_norm_grad") == 1
    feeds = feeds_for(x, axis, scale, center)
    values, _ = run_reference(b.g, feeds)
    names = ["x"] + (["gamma"] if scale else []) + (["beta"] if center else [])
    eps = 1e-6
    for name, analytic in zip(names, values[2:]):
        numeric = np.zeros_like(feeds[name])
        for j in range(numeric.size):
            plus, minus = dict(feeds), dict(feeds)
            plus[name], minus[name] = feeds[name].copy(), feeds[name].copy()
            plus[name].flat[j] += eps
            minus[name].flat[j] -= eps
            numeric.flat[j] = (run_reference(b.g, plus)[0][0] - run_reference(b.g, minus)[0][0]) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7 * max(1.0, np.abs(numeric).max()),
                                   err_msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("shape,axis", CASES)
def test_compiled_stats_match_the_reference(shape, axis):
    check_compiled("batch_norm_stats", [2.0 + normal(*shape)], {"axis": axis})


@pytest.mark.parametrize("shape,axis,scale,center", [((2, 3, 5, 3), -1, True, True), ((2, 3, 2, 5), 1, True, False),
                                                     ((7, 3), -1, False, True), ((5, 1), -1, False, False)])
def test_compiled_training_forward_and_backward_match_the_reference(shape, axis, scale, center):
    x = (2.0 + normal(*shape)).astype(np.float32)
    b = batch_norm_graph(x, axis, scale, center, epsilon=1e-3, dtype="float32")
    feeds = {k: v.astype(np.float32) for k, v in feeds_for(x, axis, scale, center).items()}
    expected, _ = run_reference(b.g, feeds)
    for fuse in (True, False):
        got = run_compiled(b.g, feeds, fuse=fuse)
        for k, (g_, e_) in enumerate(zip(got, expected)):
            assert_close32(g_, e_, f"output {k} (fuse={fuse}; 0 = <y, r>, 1 = y, then the gradients)")


@pytest.mark.parametrize("shape,axis,with_gamma", [((2, 3, 5, 3), -1, True), ((2, 3, 2, 5), 1, False),
                                                   ((1, 1), -1, True)])
def test_compiled_grad_op_matches_its_reference(shape, axis, with_gamma):
    x = normal(*shape).astype(np.float32)
    vector = stats_shape(shape, axis)
    operands = [normal(*shape), x, x.mean(axis=tuple(i for i in range(len(shape)) if i != axis % len(shape)),
                                         keepdims=True), 0.5 + np.abs(normal(*vector))]
    if with_gamma:
        operands.append(normal(*vector))
    operands = [np.asarray(a, np.float32) for a in operands]
    b = GraphBuilder(name="grad")
    ids = [b.input(f"x{i}", TensorType(a.shape, "float32")) for i, a in enumerate(operands)]
    nid = b.add("batch_norm_grad", ids, {"axis": axis, "epsilon": 1e-3})
    b.g.graph["outputs"] = [b.tuple_item(nid, k) for k in range(4)]
    feeds = {f"x{i}": a for i, a in enumerate(operands)}
    expected, _ = run_reference(b.g, feeds)
    for k, (g_, e_) in enumerate(zip(run_compiled(b.g, feeds), expected)):
        assert_close32(g_, e_, f"batch_norm_grad output {k}")


def test_shape_errors_name_the_op_and_the_operand():
    b = GraphBuilder(name="bad")
    x = b.input("x", TensorType((2, 3, 4), "float32"))
    wrong = b.input("v", TensorType((1, 1, 5), "float32"))
    with pytest.raises(ShapeError, match=r"batch_norm_apply: mean must be a float32 vector of 4 channels"):
        b.add("batch_norm_apply", [x, wrong, wrong], {"scale": False, "center": False})
    right = b.input("w", TensorType((4,), "float32"))
    with pytest.raises(ShapeError, match=r"batch_norm_apply: expects operands \(x, mean, var, gamma, beta\)"):
        b.add("batch_norm_apply", [x, right, right], {})
    with pytest.raises(ShapeError, match=r"batch_norm_stats: expects a float"):
        b.add("batch_norm_stats", [b.input("i", TensorType((2, 3), "int32"))], {})


def test_apply_on_statistics_of_another_tensor_has_no_gradient():
    b = GraphBuilder(name="other")
    x = b.input("x", TensorType((4, 3), "float64"))
    mean, var = b.input("m", TensorType((1, 3), "float64")), b.input("v", TensorType((1, 3), "float64"))
    y = b.add("batch_norm_apply", [x, mean, var], {"scale": False, "center": False})
    with pytest.raises(UnsupportedError, match="batch_norm_apply: the gradient is defined only when"):
        gradients(b, b.op("sum", y, axes=None, keepdims=False), [x])


def test_second_order_gradient_is_refused():
    b = batch_norm_graph(normal(4, 3), -1, True, True)
    grad_x = b.g.graph["outputs"][2]
    with pytest.raises(UnsupportedError, match="batch_norm_grad: second-order gradients"):
        gradients(b, b.op("sum", grad_x, axes=None, keepdims=False), [b.g.graph["inputs"][0]])
