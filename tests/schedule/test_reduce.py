"""The reduction family's kernel descriptions (kcompiler/schedule/reduce.py), rendered by the
LLVM backend, against the numpy references: sum/mean/max/min over every axes combination of a
rank-3 tensor (with and without keepdims), argmax/argmin and the softmax family along every
axis, on odd shapes (size-1 axes, primes, scalars), NaN and ±inf inputs and integer inputs;
and the descriptions' text dumps (their loop order is the point)."""
import itertools

import numpy as np
import pytest

from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.printer import to_text
from op_check import assert_close32, build_op_graph, lower

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference on NaN/inf inputs

RANK3_AXES = [None] + [axes for k in range(4) for axes in itertools.combinations(range(3), k)]


def compile_op(op, inputs, attrs):
    """(compiled one-op graph, its scheduled graph, the op's node id)."""
    b, _, outs = build_op_graph(op, inputs, attrs)
    b.g.graph["outputs"] = outs
    compiled, stages = lower(b.g, fuse=False)
    scheduled = stages["scheduled"]
    (nid,) = [n for n in scheduled.nodes if scheduled.nodes[n]["op"] == op]
    return compiled, scheduled, nid


def check(op, inputs, attrs):
    """The op's kernel comes from its description and matches the reference: the same NaN and
    ±inf positions, finite values within DESIGN §6's float32 tolerance, integers exactly."""
    compiled, scheduled, nid = compile_op(op, inputs, attrs)
    assert "kernel" in scheduled.nodes[nid], f"{op} was not described"
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    b, _, outs = build_op_graph(op, inputs, attrs)
    b.g.graph["outputs"] = outs
    (expected,) = run_reference(b.g, feeds)[0]
    (got,) = compiled.run(feeds)
    what = f"{op}{[a.shape for a in inputs]} {attrs}"
    assert got.shape == expected.shape and got.dtype == expected.dtype, what
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(got, expected, err_msg=what)
        return
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        np.testing.assert_array_equal(test(got), test(expected), err_msg=f"{what}: {name} positions")
    finite = np.isfinite(expected)
    assert_close32(got[finite], expected[finite], what)


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def with_specials(x):
    """x with NaN, +inf and -inf planted at fixed places (not in every row)."""
    flat = x.reshape(-1)
    for i, v in zip(range(0, flat.size, 7), [np.nan, np.inf, -np.inf, np.nan]):
        flat[i] = v
    return x


# ---- sum, mean, max, min ------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axes", RANK3_AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_every_axes_combination_of_a_rank3_tensor(op, axes, keepdims):
    check(op, [normal(3, 5, 7)], {"axes": axes, "keepdims": keepdims})


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("shape, axes", [((), None), ((1,), None), ((7,), (0,)), ((1, 1), (1,)), ((13, 1), (0,)),
                                         ((1, 11), (1,)), ((5, 1, 3), (0, 2)), ((5, 1, 3), (1,)),
                                         ((2, 3, 5, 7), (0, 2)), ((2, 3, 5, 7), (1, 3)), ((2, 3, 5, 7), (0, 1, 2))],
                         ids=str)
def test_odd_shapes(op, shape, axes):
    check(op, [normal(*shape)], {"axes": axes, "keepdims": False})


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1), None], ids=str)
def test_nan_and_inf_propagate_as_in_numpy(op, axes):
    check(op, [with_specials(normal(3, 5, 7))], {"axes": axes, "keepdims": False})


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axes", [(0,), (1,), None], ids=str)
def test_integer_inputs(op, axes):
    x = np.random.default_rng(1).integers(-50, 50, (5, 7)).astype(np.int32)
    check(op, [x], {"axes": axes, "keepdims": False})


# ---- argmax, argmin ------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("shape, axis", [((1,), 0), ((7,), 0), ((1, 5), 0), ((3, 5, 7), 0), ((3, 5, 7), 1),
                                         ((3, 5, 7), 2), ((3, 5, 7), -1)], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_arg_extrema(op, shape, axis, keepdims):
    x = normal(*shape)
    x.reshape(-1)[1::4] = 0.5  # ties: the first one wins
    check(op, [x], {"axis": axis, "keepdims": keepdims})


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_arg_extrema_pick_the_first_nan(op, axis):
    check(op, [with_specials(normal(3, 5, 7))], {"axis": axis})


@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_arg_extrema_of_integers(op):
    x = np.random.default_rng(2).integers(-3, 3, (5, 7)).astype(np.int32)  # many ties
    check(op, [x], {"axis": 1})
    check(op, [x], {"axis": 0})


# ---- the softmax family --------------------------------------------------------------------------

SOFTMAX_CASES = [((1, 1), -1), ((7,), 0), ((1, 5), 0), ((13, 10), -1), ((3, 5, 7), 0), ((3, 5, 7), 1), ((3, 5, 7), 2)]


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, axis", SOFTMAX_CASES, ids=str)
def test_softmax(op, shape, axis):
    check(op, [normal(*shape) * 4], {"axis": axis})


@pytest.mark.parametrize("op", ["softmax_grad", "log_softmax_grad"])
@pytest.mark.parametrize("shape, axis", SOFTMAX_CASES, ids=str)
def test_softmax_gradients(op, shape, axis):
    y = normal(*shape)
    y = np.exp(y) / np.exp(y).sum(axis=axis, keepdims=True) if op == "softmax_grad" else y - 2
    check(op, [y.astype(np.float32), normal(*shape, seed=1)], {"axis": axis})


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax_rows_with_nan_or_inf(op, axis):
    check(op, [with_specials(normal(3, 5, 7))], {"axis": axis})


# ---- the descriptions ----------------------------------------------------------------------------

def kernel_text(op, shape, attrs):
    """The kernel's body as the scheduled stage's text dump shows it."""
    _, scheduled, nid = compile_op(op, [normal(*shape)], attrs)
    text = str(scheduled.nodes[nid]["kernel"])
    assert "\n".join("      " + line for line in text.splitlines()) in to_text(scheduled)
    return text.split("\n", 1)[1]


def test_a_reduction_over_a_leading_axis_accumulates_contiguous_output_rows():
    # the bias gradient: the kept axis is innermost, so its loop vectorises with no reassociation
    assert kernel_text("sum", (4, 6), {"axes": (0,)}) == (
        "  for i1 in 0..6 parallel:\n"
        "    out0[i1] = 0.0\n"
        "  for i0 in 0..4:\n"
        "    for i1 in 0..6:\n"
        "      out0[i1] = (out0[i1] + in0[((i0 * 6) + i1)])")


def test_a_reduction_over_the_innermost_axes_uses_a_local_accumulator():
    # size-1 axes vanish, neighbouring reduced axes merge into one loop
    assert kernel_text("mean", (3, 1, 4, 5), {"axes": (2, 3)}) == (
        "  for i0 in 0..3 parallel:\n"
        "    float32 acc = 0.0\n"
        "    for i1 in 0..20:\n"
        "      acc = (acc + in0[((i0 * 20) + i1)])\n"
        "    out0[i0] = (acc * 0.05)")


def test_a_reduction_between_kept_axes_keeps_the_outer_one_parallel():
    text = kernel_text("max", (2, 3, 4), {"axes": (1,)})
    assert text.splitlines()[:2] == ["  for i0 in 0..2 parallel:", "    for i2 in 0..4 parallel:"]
    assert "max(out0[((i0 * 4) + i2)], in0[(((i0 * 12) + (i1 * 4)) + i2)])" in text


def test_argmax_and_softmax_work_row_by_row():
    assert kernel_text("argmax", (2, 3), {"axis": 1}) == (
        "  for o in 0..2 parallel:\n"
        "    float32 best = in0[(o * 3)]\n"
        "    int64 best_at = 0\n"
        "    for a in 0..2:\n"
        "      if (not((in0[((o * 3) + (a + 1))] <= best)) && not(isnan(best))):\n"
        "        best = in0[((o * 3) + (a + 1))]\n"
        "        best_at = (a + 1)\n"
        "    out0[o] = cast<int32>(best_at)")
    text = kernel_text("softmax", (2, 3), {"axis": -1})
    assert [line.strip() for line in text.splitlines() if not line.startswith("      ")] == [
        "for o in 0..2 parallel:", "float32 top = -inf", "for r in 0..3:", "for r in 0..3:",
        "float32 total = 0.0", "for r in 0..3:", "float32 scale = (1.0 / total)", "for r in 0..3:"]
