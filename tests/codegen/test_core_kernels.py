"""Every core primitive compiled to LLVM kernels: float32 forward and backward equal the
numpy reference (DESIGN §6 tolerances), fused and unfused."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kcompiler.ir.registry import all_ops
from kcompiler.ops.elementwise import UNARY
from op_check import build_op_graph, check_compiled, run_compiled, assert_close32
from kcompiler.ir.interpreter_reference import run_reference
from test_core_ops_inputs import UNARY_INPUTS, away_from_zero

RNG = np.random.default_rng(1)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_kernels(name):
    x = UNARY_INPUTS.get(name, lambda: away_from_zero(RNG.standard_normal((3, 5))))()
    check_compiled(name, [x], dict(UNARY[name]))


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
def test_binary_kernels_with_broadcasting(name):
    x = RNG.uniform(0.5, 2.0, (2, 3, 4))
    y = RNG.uniform(0.5, 2.0, (3, 1)) + 0.05
    check_compiled(name, [x, y])
    check_compiled(name, [y, x])


@settings(max_examples=8, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       name=st.sampled_from(["sum", "mean", "max", "min"]), keepdims=st.booleans(), data=st.data())
def test_reduction_kernels(shape, name, keepdims, data):
    axes = data.draw(st.one_of(st.none(), st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True)))
    check_compiled(name, [RNG.standard_normal(shape)], {"axes": None if axes is None else tuple(axes),
                                                         "keepdims": keepdims})


@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), batch=st.integers(0, 2),
       ta=st.booleans(), tb=st.booleans())
def test_matmul_kernels(m, k, n, batch, ta, tb):
    a = RNG.standard_normal(((2,) * batch) + ((k, m) if ta else (m, k)))
    b = RNG.standard_normal((n, k) if tb else (k, n))
    check_compiled("matmul", [a, b], {"transpose_a": ta, "transpose_b": tb})


def test_batched_matmul_with_batched_rhs():
    check_compiled("matmul", [normal(3, 4, 5), normal(3, 5, 2)])


@pytest.mark.parametrize("a_shape,b_shape,ta,tb", [
    ((2, 1, 4, 5), (1, 3, 5, 2), False, False),   # batch axes broadcast against each other
    ((3, 1, 5, 4), (2, 2, 5), True, True),
    ((4, 5), (3, 5, 2), False, False),            # one matrix against a batch
    ((2, 3, 4, 5), (2, 3, 2, 5), False, True),
])
def test_matmul_broadcast_batches(a_shape, b_shape, ta, tb):
    check_compiled("matmul", [normal(*a_shape), normal(*b_shape)], {"transpose_a": ta, "transpose_b": tb})


def test_batched_matmul_dealt_to_the_cores():
    # 64 products of 48 x 48 x 64: each alone stays on one core, together they are enough work
    # for the batched GEMM to deal them out to the cores (the attention layers' case)
    check_compiled("matmul", [normal(64, 48, 64), normal(64, 48, 64)], {"transpose_b": True})


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_kernels(axis):
    check_compiled("softmax", [normal(3, 4, 5)], {"axis": axis})
    check_compiled("log_softmax", [normal(3, 4, 5)], {"axis": axis})


@pytest.mark.parametrize("shape,axis", [((3, 70), -1), ((64, 2), 0), ((2, 48, 3), 1)])
def test_softmax_kernels_on_rows_reduced_in_lanes(shape, axis):
    # rows of 32 and more are reduced in 16 lanes (kernel.lane_reduction): whole groups and a rest,
    # contiguous and strided rows
    check_compiled("softmax", [normal(*shape) * 4], {"axis": axis})
    check_compiled("log_softmax", [normal(*shape) * 4], {"axis": axis})


def test_data_movement_kernels():
    check_compiled("reshape", [normal(2, 3, 4)], {"shape": (0, -1)})
    check_compiled("transpose", [normal(2, 3, 4)], {"perm": (2, 0, 1)})
    check_compiled("broadcast_to", [normal(3, 1)], {"shape": (2, 3, 4)})
    check_compiled("concatenate", [normal(2, 3), normal(2, 1), normal(2, 2)], {"axis": 1})
    check_compiled("concatenate", [normal(1, 3), normal(2, 3)], {"axis": 0})
    check_compiled("slice", [normal(4, 5)], {"begin": (1, 2), "size": (2, -1)})
    check_compiled("pad", [normal(2, 3)], {"pads": ((1, 0), (2, 1)), "value": 0.0})


def test_select_cast_clip_bias_kernels():
    c = RNG.random((3, 4)) > 0.5
    check_compiled("where", [c, normal(3, 4), normal(1, 4)], wrt=[1, 2])
    check_compiled("clip", [RNG.uniform(-2, 2, (3, 4)) + 0.013], {"lo": -1.0, "hi": 1.0})
    check_compiled("bias_add", [normal(2, 3, 4), normal(4)])
    x = normal(3, 4) * 5
    b, _, outs = build_op_graph("cast", [x], {"dtype": "int32"})
    b.g.graph["outputs"] = outs
    np.testing.assert_array_equal(run_compiled(b.g, {"x0": x})[0], x.astype(np.int32))


def test_gather_dropout_argmax_kernels():
    check_compiled("gather", [normal(5, 3), np.array([[0, 4, 4], [2, 1, 0]], dtype=np.int32)])
    check_compiled("dropout", [normal(40, 6), np.array(5, dtype=np.int64)], {"rate": 0.3, "seed": 11})
    for op in ("argmax", "argmin"):
        b, _, outs = build_op_graph(op, [normal(3, 7)], {"axis": 1})
        x = normal(3, 7)
        b.g.graph["outputs"] = outs
        expected, _ = run_reference(b.g, {"x0": x})
        np.testing.assert_array_equal(run_compiled(b.g, {"x0": x})[0], expected[0])


def test_comparisons_and_logic_kernels():
    x, y = normal(3, 4), normal(3, 4)
    for op in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
        b, _, outs = build_op_graph(op, [x, y], {})
        b.g.graph["outputs"] = outs
        expected, _ = run_reference(b.g, {"x0": x, "x1": y})
        np.testing.assert_array_equal(run_compiled(b.g, {"x0": x, "x1": y})[0], expected[0])


def test_gather_out_of_range_index_is_a_python_error_not_a_crash():
    from kcompiler.errors import KCompilerError
    b, _, outs = build_op_graph("gather", [normal(5, 3), np.array([7], dtype=np.int32)], {})
    b.g.graph["outputs"] = outs
    with pytest.raises(KCompilerError, match=r"gather: id 7 is outside \[0, 5\)"):
        run_compiled(b.g, {"x0": normal(5, 3), "x1": np.array([7], dtype=np.int32)})


def test_every_op_has_a_description_or_an_llvm_lowering_except_views_and_parameters():
    import kcompiler.codegen.llvm.module  # noqa: F401  (registers the lowerings)
    # all_reduce has no kernel either: the runtime reduces its operands in place (ops/collective.py)
    views = {"input", "variable", "constant", "fill", "reshape", "tuple_item", "all_reduce"}
    missing = sorted(n for n, op in all_ops().items()
                     if n not in views and op.describe is None and "llvm" not in op.lowerings)
    assert missing == [], missing


def test_argmax_of_integers():
    b, _, outs = build_op_graph("argmax", [np.array([[3, 9, 2], [7, 1, 7]], np.int32)], {"axis": 1})
    b.g.graph["outputs"] = outs
    got = run_compiled(b.g, {"x0": np.array([[3, 9, 2], [7, 1, 7]], np.int32)})[0]
    assert got.tolist() == [1, 0]


@pytest.mark.parametrize("op", ["sign", "floor", "round", "ceil"])
def test_piecewise_constant_kernels(op):
    x = np.array([[-2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 3.7]], np.float32)
    b, _, outs = build_op_graph(op, [x], {})
    b.g.graph["outputs"] = outs
    expected, _ = run_reference(b.g, {"x0": x})
    np.testing.assert_array_equal(run_compiled(b.g, {"x0": x})[0], expected[0])


def test_logical_and_scatter_add_kernels():
    a, c = RNG.random((3, 4)) > 0.5, RNG.random((3, 4)) > 0.5
    for op, inputs in (("logical_and", [a, c]), ("logical_or", [a, c]), ("logical_not", [a])):
        b, _, outs = build_op_graph(op, inputs, {})
        b.g.graph["outputs"] = outs
        feeds = {f"x{i}": v for i, v in enumerate(inputs)}
        np.testing.assert_array_equal(run_compiled(b.g, feeds)[0], run_reference(b.g, feeds)[0][0])
    idx, upd = np.array([[0, 3], [3, 1]], np.int32), normal(2, 2, 5)
    b, _, outs = build_op_graph("scatter_add", [idx, upd], {"rows": 4})
    b.g.graph["outputs"] = outs
    assert_close32(run_compiled(b.g, {"x0": idx, "x1": upd})[0], run_reference(b.g, {"x0": idx, "x1": upd})[0][0])
