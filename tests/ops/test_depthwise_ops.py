"""depthwise_conv2d and its gradients: the reference against a direct per-channel formula
(conv2d of each channel alone), shape errors, and the VJPs of all three ops against float64
finite differences."""
import numpy as np
import pytest

from kcompiler.errors import ShapeError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.types import TensorType
from op_check import check_vjp, run_op

RNG = np.random.default_rng(5)

# (x shape, kernel shape, attrs): valid and same padding, strides, dilation, multipliers,
# a kernel larger than the stride, a non-square input
DEPTHWISE_CASES = [
    ((2, 5, 5, 3), (3, 3, 3, 1), {}),
    ((1, 6, 5, 2), (3, 3, 2, 2), {"padding": "same"}),
    ((2, 7, 6, 2), (3, 2, 2, 1), {"strides": (2, 2), "padding": "same"}),
    ((1, 7, 7, 3), (3, 3, 3, 2), {"dilation": (2, 2), "padding": "same"}),
    ((1, 6, 7, 1), (2, 3, 1, 3), {"strides": (2, 3)}),
]


def depthwise_inputs(x_shape, k_shape):
    return [RNG.standard_normal(x_shape), RNG.standard_normal(k_shape)]


@pytest.mark.parametrize("x_shape,k_shape,attrs", DEPTHWISE_CASES)
def test_depthwise_conv2d_vjp(x_shape, k_shape, attrs):
    check_vjp("depthwise_conv2d", depthwise_inputs(x_shape, k_shape), attrs)


@pytest.mark.parametrize("x_shape,k_shape,attrs", DEPTHWISE_CASES[1:3])
def test_depthwise_gradients_vjp(x_shape, k_shape, attrs):
    x, k = depthwise_inputs(x_shape, k_shape)
    (y,) = run_op("depthwise_conv2d", [x, k], attrs)
    dy = RNG.standard_normal(y.shape)
    check_vjp("depthwise_conv2d_backward_input", [dy, k], dict(attrs, input_hw=x_shape[1:3]))
    check_vjp("depthwise_conv2d_backward_kernel", [x, dy], dict(attrs, kernel_shape=k_shape))


@pytest.mark.parametrize("x_shape,k_shape,attrs", DEPTHWISE_CASES)
def test_depthwise_is_conv2d_of_each_channel(x_shape, k_shape, attrs):
    x, k = depthwise_inputs(x_shape, k_shape)
    (y,) = run_op("depthwise_conv2d", [x, k], attrs)
    multiplier = k_shape[3]
    for c in range(x_shape[3]):
        (alone,) = run_op("conv2d", [x[..., c:c + 1], k[:, :, c:c + 1, :]], attrs)
        np.testing.assert_allclose(y[..., c * multiplier:(c + 1) * multiplier], alone, rtol=1e-12, atol=1e-12)


def _shape_of(op, shapes, attrs):
    b = GraphBuilder(name="t")
    ids = [b.input(f"x{i}", TensorType(s, "float32")) for i, s in enumerate(shapes)]
    return b.type(b.add(op, ids, attrs)).shape


def test_shape_rules_and_errors():
    assert _shape_of("depthwise_conv2d", [(None, 8, 8, 3), (3, 3, 3, 2)], {"strides": (2, 2), "padding": "same"}) \
        == (None, 4, 4, 6)
    with pytest.raises(ShapeError, match="has 4 channels but the depthwise kernel"):
        _shape_of("depthwise_conv2d", [(1, 8, 8, 4), (3, 3, 3, 1)], {})
    with pytest.raises(ShapeError, match="too small"):
        _shape_of("depthwise_conv2d", [(1, 2, 8, 3), (3, 3, 3, 1)], {})
    with pytest.raises(ShapeError, match="output gradient has shape"):
        _shape_of("depthwise_conv2d_backward_input", [(1, 5, 5, 3), (3, 3, 3, 1)], {"input_hw": (8, 8)})
