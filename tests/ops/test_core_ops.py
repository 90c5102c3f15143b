"""Every core op: the reference's VJP against float64 finite differences, and shape rules."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kcompiler.errors import IndexRangeError, ShapeError
from kcompiler.ir.registry import all_ops
from kcompiler.ops.elementwise import UNARY
from op_check import check_vjp, run_op

RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.standard_normal(shape)


from test_core_ops_inputs import UNARY_INPUTS, away_from_zero


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_vjp(name):
    x = UNARY_INPUTS.get(name, lambda: away_from_zero(normal(3, 4)))()
    check_vjp(name, [x], dict(UNARY[name]))


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
def test_binary_vjp_with_broadcasting(name):
    x = RNG.uniform(0.5, 2.0, (2, 3, 4))
    y = RNG.uniform(0.5, 2.0, (3, 1)) + 0.05  # no ties for maximum/minimum
    check_vjp(name, [x, y])
    check_vjp(name, [y, x])


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axes,keepdims", [(None, False), ((1,), False), ((0, 2), True), ((-1,), True)])
def test_reduction_vjp(name, axes, keepdims):
    check_vjp(name, [normal(2, 3, 4)], {"axes": axes, "keepdims": keepdims})


def test_max_splits_the_gradient_between_ties():
    x = np.array([[1.0, 3.0, 3.0]])
    b_out = run_op("max", [x], {"axes": (1,), "keepdims": False})[0]
    assert b_out.tolist() == [3.0]


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), batch=st.integers(0, 2),
       ta=st.booleans(), tb=st.booleans())
def test_matmul_vjp(m, k, n, batch, ta, tb):
    a = normal(*((2,) * batch), *((k, m) if ta else (m, k)))
    b = normal(*((k, n) if not tb else (n, k)))
    check_vjp("matmul", [a, b], {"transpose_a": ta, "transpose_b": tb})


def test_bias_add_and_softmax_vjps():
    check_vjp("bias_add", [normal(2, 3, 4), normal(4)])
    check_vjp("softmax", [normal(3, 5)], {"axis": -1})
    check_vjp("softmax", [normal(3, 5)], {"axis": 0})
    check_vjp("log_softmax", [normal(3, 5)], {"axis": -1})


def test_data_movement_vjps():
    check_vjp("reshape", [normal(2, 3, 4)], {"shape": (0, -1)})
    check_vjp("transpose", [normal(2, 3, 4)], {"perm": (2, 0, 1)})
    check_vjp("broadcast_to", [normal(3, 1)], {"shape": (2, 3, 4)})
    check_vjp("concatenate", [normal(2, 3), normal(2, 1), normal(2, 2)], {"axis": 1})
    check_vjp("slice", [normal(4, 5)], {"begin": (1, 2), "size": (2, -1)})
    check_vjp("pad", [normal(2, 3)], {"pads": ((1, 0), (2, 1)), "value": 0.0})


def test_select_cast_clip_gather_dropout_vjps():
    c = RNG.random((3, 4)) > 0.5
    check_vjp("where", [c, normal(3, 4), normal(1, 4)], wrt=[1, 2])
    check_vjp("clip", [RNG.uniform(-2, 2, (3, 4)) + 0.013], {"lo": -1.0, "hi": 1.0})
    check_vjp("gather", [normal(5, 3), np.array([[0, 4, 4], [2, 1, 0]], dtype=np.int32)])
    check_vjp("dropout", [normal(4, 6), np.array(5, dtype=np.int64)], {"rate": 0.3, "seed": 11})


def test_dropout_keeps_the_expected_fraction_and_scales():
    x = np.ones((200, 50), dtype=np.float32)
    (y,) = run_op("dropout", [x, np.array(0, dtype=np.int64)], {"rate": 0.25, "seed": 3})
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    (y2,) = run_op("dropout", [x, np.array(1, dtype=np.int64)], {"rate": 0.25, "seed": 3})
    assert (y2 != y).any()  # another step, another mask


def test_shape_rules_reject_bad_operands():
    with pytest.raises(ShapeError, match="cannot broadcast"):
        run_op("add", [np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ShapeError, match="contraction dimensions differ"):
        run_op("matmul", [np.zeros((2, 3)), np.zeros((4, 5))])
    with pytest.raises(ShapeError, match="cannot reshape"):
        run_op("reshape", [np.zeros((2, 3))], {"shape": (4, -1)})


def test_an_index_out_of_range_names_the_index_and_the_range():
    with pytest.raises(IndexRangeError, match=re.escape("gather: id 3 is outside [0, 3) (input_dim=3)")):
        run_op("gather", [np.zeros((3, 2)), np.array([1, 3, -1], dtype=np.int32)])
    labels = np.array([[0, 4], [2, 1]], dtype=np.int32)
    (same,) = run_op("check_index", [labels], {"limit": 5, "what": "my_loss"})
    assert np.array_equal(same, labels)
    labels[1, 0] = -2
    with pytest.raises(IndexRangeError, match=re.escape("my_loss: label 4 is outside [0, 4) (num_classes=4)")):
        run_op("check_index", [labels], {"limit": 4, "what": "my_loss"})


def test_every_op_has_a_reference_and_a_declared_kind():
    for name, op in all_ops().items():
        if op.kind != "parameter" and name != "tuple_item":
            assert op.reference is not None, name
