"""conv2d, its two gradients and the pooling ops: VJPs against float64 finite differences,
'same' padding placement, shape rules, and the seed's four MaxPool2D examples."""
import numpy as np
import pytest

from kcompiler import keras
from kcompiler.errors import ShapeError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.registry import get_op
from kcompiler.ir.types import TensorType
from op_check import check_vjp, run_op

RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.standard_normal(shape)


def distinct(*shape):
    """Values far apart from each other, so no pooling window has a tie near a kink."""
    return RNG.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1


# (input shape, kernel shape, attrs): valid/same, strides 1 and 2, dilation 2, non-square
# kernels, odd sizes, and same-padding that overhangs only on the bottom/right.
CONV_CASES = [
    ((2, 5, 5, 2), (3, 3, 2, 3), dict(strides=(1, 1), padding="valid", dilation=(1, 1))),
    ((1, 5, 6, 2), (3, 3, 2, 2), dict(strides=(1, 1), padding="same", dilation=(1, 1))),
    ((2, 7, 5, 1), (3, 2, 1, 2), dict(strides=(2, 2), padding="valid", dilation=(1, 1))),
    ((1, 6, 7, 2), (3, 3, 2, 2), dict(strides=(2, 2), padding="same", dilation=(1, 1))),
    ((1, 5, 5, 2), (2, 2, 2, 3), dict(strides=(1, 1), padding="same", dilation=(1, 1))),
    ((1, 7, 6, 2), (3, 2, 2, 2), dict(strides=(1, 1), padding="valid", dilation=(2, 2))),
    ((1, 6, 5, 1), (2, 3, 1, 2), dict(strides=(1, 1), padding="same", dilation=(2, 1))),
    ((1, 6, 7, 2), (2, 3, 2, 2), dict(strides=(2, 3), padding="same", dilation=(1, 1))),
]


@pytest.mark.parametrize("x_shape,k_shape,attrs", CONV_CASES)
def test_conv2d_vjp(x_shape, k_shape, attrs):
    check_vjp("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)


@pytest.mark.parametrize("x_shape,k_shape,attrs", CONV_CASES[2:5])
def test_conv2d_backward_ops_vjps(x_shape, k_shape, attrs):
    (y,) = run_op("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)
    check_vjp("conv2d_backward_input", [normal(*y.shape), normal(*k_shape)],
              dict(attrs, input_hw=x_shape[1:3]))
    check_vjp("conv2d_backward_kernel", [normal(*x_shape), normal(*y.shape)],
              dict(attrs, kernel_shape=k_shape))


def test_conv2d_matches_a_direct_sum():
    x, k = normal(2, 6, 5, 3), normal(3, 2, 3, 4)
    (y,) = run_op("conv2d", [x, k], dict(strides=(2, 1), padding="same", dilation=(1, 1)))
    # 'same' on 6 rows with stride 2 and a 3-row kernel: total pad 1, after only;
    # 5 columns, stride 1, 2-column kernel: total pad 1, after only.
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    expected = np.zeros((2, 3, 5, 4))
    for oh in range(3):
        for ow in range(5):
            window = xp[:, 2 * oh:2 * oh + 3, ow:ow + 2, :]
            expected[:, oh, ow, :] = np.einsum("nijc,ijcf->nf", window, k)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_conv2d_same_padding_puts_the_odd_row_before_and_after():
    # A 4-row kernel on 5 rows pads 3 rows: 1 before, 2 after (TensorFlow's rule).
    x = np.arange(1.0, 6.0).reshape(1, 5, 1, 1)
    (y,) = run_op("conv2d", [x, np.ones((4, 1, 1, 1))], dict(strides=(1, 1), padding="same", dilation=(1, 1)))
    assert y.ravel().tolist() == [1 + 2 + 3, 1 + 2 + 3 + 4, 2 + 3 + 4 + 5, 3 + 4 + 5, 4 + 5]


POOL_CASES = [
    ((2, 5, 5, 2), dict(pool=(2, 2), strides=(2, 2), padding="valid")),
    ((1, 5, 5, 2), dict(pool=(2, 2), strides=(2, 2), padding="same")),
    ((1, 5, 4, 2), dict(pool=(2, 2), strides=(1, 1), padding="same")),
    ((1, 5, 5, 1), dict(pool=(3, 3), strides=(1, 1), padding="valid")),
    ((1, 6, 7, 2), dict(pool=(3, 3), strides=(2, 2), padding="same")),
    ((1, 7, 6, 1), dict(pool=(3, 2), strides=(2, 1), padding="same")),
    ((1, 4, 4, 1), dict(pool=(4, 4), strides=(1, 1), padding="same")),
]


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("x_shape,attrs", POOL_CASES)
def test_pool_vjp(op, x_shape, attrs):
    check_vjp(op, [distinct(*x_shape)], attrs)


@pytest.mark.parametrize("x_shape,attrs", POOL_CASES[1:4])
def test_avg_pool2d_grad_vjp(x_shape, attrs):
    (y,) = run_op("avg_pool2d", [normal(*x_shape)], attrs)
    check_vjp("avg_pool2d_grad", [normal(*y.shape)], dict(attrs, input_hw=x_shape[1:3]))


def test_max_pool2d_grad_routes_ties_to_the_first_maximum_and_accumulates():
    # TensorFlow gives this input the gradient [[0, 2, 0], [1, 0, 0], [0, 1, 0]].
    x = np.array([[1.0, 3, 3], [3, 2, 1], [0, 3, 0]]).reshape(1, 3, 3, 1)
    attrs = dict(pool=(2, 2), strides=(1, 1), padding="valid")
    (dx,) = run_op("max_pool2d_grad", [x, np.ones((1, 2, 2, 1))], attrs)
    assert dx[0, :, :, 0].tolist() == [[0, 2, 0], [1, 0, 0], [0, 1, 0]]


def test_max_pool2d_same_padding_is_never_the_maximum():
    x = -np.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # all negative: zero padding would win
    (y,) = run_op("max_pool2d", [x], dict(pool=(2, 2), strides=(2, 2), padding="same"))
    assert y[0, :, :, 0].tolist() == [[-1, -3], [-7, -9]]


def test_avg_pool2d_same_divides_by_the_valid_elements_only():
    x = np.arange(1.0, 7.0).reshape(1, 1, 6, 1)
    # A 4-wide window on 6 columns pads 1 before and 2 after.
    (y,) = run_op("avg_pool2d", [x], dict(pool=(1, 4), strides=(1, 1), padding="same"))
    np.testing.assert_allclose(y.ravel(), [6 / 3, 10 / 4, 14 / 4, 18 / 4, 15 / 3, 11 / 2])


def infer(op, in_types, attrs):
    b = GraphBuilder()
    ids = [b.input(f"x{i}", t) for i, t in enumerate(in_types)]
    return b.type(b.add(op, ids, attrs))


def test_shape_rules_keep_the_symbolic_batch():
    x = TensorType((None, 9, 8, 3))
    conv = dict(strides=(2, 2), padding="same", dilation=(1, 1))
    assert infer("conv2d", [x, TensorType((3, 3, 3, 5))], conv).shape == (None, 5, 4, 5)
    pool = dict(pool=(2, 2), strides=(2, 2), padding="valid")
    assert infer("max_pool2d", [x], pool).shape == (None, 4, 4, 3)
    assert infer("avg_pool2d", [x], pool).shape == (None, 4, 4, 3)
    assert infer("avg_pool2d_grad", [TensorType((None, 4, 4, 3))], dict(pool, input_hw=(9, 8))).shape == \
        (None, 9, 8, 3)
    dy = TensorType((None, 5, 4, 5))
    assert infer("conv2d_backward_input", [dy, TensorType((3, 3, 3, 5))], dict(conv, input_hw=(9, 8))).shape == \
        (None, 9, 8, 3)
    assert infer("conv2d_backward_kernel", [x, dy], dict(conv, kernel_shape=(3, 3, 3, 5))).shape == (3, 3, 3, 5)


def test_shape_rules_reject_bad_operands():
    conv = dict(strides=(1, 1), padding="valid", dilation=(1, 1))
    with pytest.raises(ShapeError, match=r"conv2d: expects an operand of rank 4, got shape \(2, 5, 5\)"):
        infer("conv2d", [TensorType((2, 5, 5)), TensorType((3, 3, 5, 4))], conv)
    with pytest.raises(ShapeError, match=r"\(None, 5, 5, 2\) has 2 channels .* kernel of shape \(3, 3, 3, 4\)"):
        infer("conv2d", [TensorType((None, 5, 5, 2)), TensorType((3, 3, 3, 4))], conv)
    with pytest.raises(ShapeError, match="too small"):
        infer("conv2d", [TensorType((1, 2, 5, 3)), TensorType((3, 3, 3, 4))], conv)
    with pytest.raises(ShapeError, match="too small"):
        infer("conv2d", [TensorType((1, 3, 5, 3)), TensorType((2, 2, 3, 4))], dict(conv, dilation=(3, 1)))
    with pytest.raises(ShapeError, match="padding must be 'valid' or 'same'"):
        infer("conv2d", [TensorType((1, 4, 4, 3)), TensorType((2, 2, 3, 4))], dict(conv, padding="full"))
    with pytest.raises(ShapeError, match="strides must be a pair of positive integers"):
        infer("conv2d", [TensorType((1, 4, 4, 3)), TensorType((2, 2, 3, 4))], dict(conv, strides=(0, 1)))
    with pytest.raises(ShapeError, match=r"max_pool2d: expects an operand of rank 4"):
        infer("max_pool2d", [TensorType((4, 4, 3))], dict(pool=(2, 2), strides=(2, 2)))
    with pytest.raises(ShapeError, match="too small for a 3x3 pool"):
        infer("avg_pool2d", [TensorType((1, 2, 4, 3))], dict(pool=(3, 3), strides=(1, 1), padding="valid"))
    with pytest.raises(ShapeError, match=r"output gradient has shape \(1, 3, 3, 1\), expected \(1, 2, 2, 1\)"):
        infer("max_pool2d_grad", [TensorType((1, 4, 4, 1)), TensorType((1, 3, 3, 1))],
              dict(pool=(2, 2), strides=(2, 2), padding="valid"))
    with pytest.raises(ShapeError, match="output gradient has shape"):
        infer("conv2d_backward_input", [TensorType((1, 3, 3, 4)), TensorType((3, 3, 2, 4))],
              dict(conv, input_hw=(6, 6)))


def test_fusion_kinds():
    for name in ("conv2d", "conv2d_backward_input", "conv2d_backward_kernel"):
        assert get_op(name).kind == "contraction"
    for name in ("max_pool2d", "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad"):
        assert get_op(name).kind == "reduction"


SEED_MAXPOOL = [
    (3, 3, (1, 1), "valid", [[5, 6], [8, 9]]),
    (3, 4, (2, 2), "valid", [[6, 8]]),
    (3, 4, (1, 1), "same", [[6, 7, 8, 8], [10, 11, 12, 12], [10, 11, 12, 12]]),
    (3, 4, (2, 2), "same", [[6, 8], [10, 12]]),
]


@pytest.mark.parametrize("rows,cols,strides,padding,expected", SEED_MAXPOOL)
def test_seed_maxpool2d_examples(rows, cols, strides, padding, expected):
    x = np.arange(1.0, rows * cols + 1, dtype=np.float32).reshape(1, rows, cols, 1)
    y = keras.layers.MaxPool2D(pool_size=(2, 2), strides=strides, padding=padding)(x)
    assert y.shape == (1, len(expected), len(expected[0]), 1)
    assert y.dtype == "float32"
    np.testing.assert_array_equal(y.numpy()[0, :, :, 0], np.array(expected, dtype=np.float32))
