"""layer_norm (layer and group normalization) and upsample_bilinear: shape rules, the references
against direct formulas, and their VJPs against float64 finite differences; the Gaussian noise
ops' generator (mean, spread, independence of the two keys) and their VJPs."""
import numpy as np
import pytest

from kcompiler.errors import ShapeError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.types import TensorType
from kcompiler.ops.nn_reference import philox_normal, philox_uniform
from op_check import check_vjp, run_op

RNG = np.random.default_rng(3)

# (x shape, attrs): layer norm over the last axis of ranks 2 and 3 (every other axis a sample),
# groups over positions (group norm over 1 and 2 position axes), without gamma or beta, one
# channel per group, groups without positions.
NORM_CASES = [
    ((3, 5), {"epsilon": 1e-3}),
    ((2, 3, 4), {"groups": 2, "positions": 1, "epsilon": 0.01}),
    ((2, 2, 3), {"scale": False}),
    ((2, 6), {"groups": 3, "center": False}),
    ((1, 4, 3), {"groups": 3, "positions": 1, "scale": False, "center": False}),
    ((2, 2, 3, 4), {"groups": 2, "positions": 2}),
]


def norm_inputs(shape, attrs):
    channels = shape[-1]
    inputs = [RNG.standard_normal(shape) * 2 + 0.5]
    inputs += [RNG.standard_normal(channels) for flag in ("scale", "center") if attrs.get(flag, True)]
    return inputs


@pytest.mark.parametrize("shape,attrs", NORM_CASES)
def test_layer_norm_vjp(shape, attrs):
    check_vjp("layer_norm", norm_inputs(shape, attrs), attrs)


def test_layer_norm_is_the_direct_formula_per_sample_and_group():
    x, gamma, beta = RNG.standard_normal((2, 3, 4)), RNG.standard_normal(4), RNG.standard_normal(4)
    (y,) = run_op("layer_norm", [x, gamma, beta], {"groups": 2, "positions": 1, "epsilon": 0.1})
    for n in range(2):
        for g in range(2):
            part = x[n, :, 2 * g:2 * g + 2]
            expected = (part - part.mean()) / np.sqrt(part.var() + 0.1) * gamma[2 * g:2 * g + 2] + beta[2 * g:2 * g + 2]
            np.testing.assert_allclose(y[n, :, 2 * g:2 * g + 2], expected, rtol=1e-12)


def test_layer_norm_grad_outputs_the_row_statistics():
    x, dy = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 3, 4))
    dx, dgamma, dbeta, mean, rstd = run_op("layer_norm_grad", [x, np.ones(4), dy],
                                           {"groups": 2, "positions": 1, "center": False, "epsilon": 0.1})
    np.testing.assert_allclose(mean[1, 0], x[1, :, :2].mean(), rtol=1e-12)
    np.testing.assert_allclose(rstd[0, 1], 1 / np.sqrt(x[0, :, 2:].var() + 0.1), rtol=1e-12)
    assert dbeta.tolist() == [0.0] * 4  # no beta: its gradient is zeros


def _shape_of(op, shapes, attrs):
    b = GraphBuilder(name="t")
    ids = [b.input(f"x{i}", TensorType(s)) for i, s in enumerate(shapes)]
    return b.type(b.add(op, ids, attrs))


def test_layer_norm_shape_rule_errors():
    with pytest.raises(ShapeError, match="do not split into 3 groups"):
        _shape_of("layer_norm", [(2, 1, 4), (4,), (4,)], {"groups": 3})
    with pytest.raises(ShapeError, match="expects operands \\(x, gamma\\)"):
        _shape_of("layer_norm", [(2, 1, 4), (4,), (4,)], {"center": False})
    with pytest.raises(ShapeError, match="gamma must be a float32 vector of 4 channels"):
        _shape_of("layer_norm", [(2, 1, 4), (3,), (4,)], {})
    with pytest.raises(ShapeError, match="rank >= 2"):
        _shape_of("layer_norm", [(4,), (4,), (4,)], {})
    with pytest.raises(ShapeError, match="positions must be an axis count in \\[0, 1\\]"):
        _shape_of("layer_norm", [(2, 3, 4), (4,), (4,)], {"positions": 2})
    grad_types = _shape_of("layer_norm_grad", [(5, 2, 3, 4), (4,), (5, 2, 3, 4)], {"groups": 2, "positions": 1})
    assert [t.shape for t in grad_types] == [(5, 2, 3, 4), (4,), (4,), (5, 2, 2), (5, 2, 2)]


UPSAMPLE_CASES = [((1, 3, 4, 2), (2, 2)), ((2, 2, 3, 1), (3, 2)), ((1, 2, 2, 3), (1, 3)), ((1, 1, 1, 2), (2, 4))]


@pytest.mark.parametrize("shape,size", UPSAMPLE_CASES)
def test_upsample_bilinear_vjp(shape, size):
    check_vjp("upsample_bilinear", [RNG.standard_normal(shape)], {"size": size})


def test_upsample_bilinear_grad_vjp():
    check_vjp("upsample_bilinear_grad", [RNG.standard_normal((1, 6, 4, 2))], {"size": (3, 2), "input_hw": (2, 2)})


def test_upsample_bilinear_by_two_interpolates_quarter_pixels_and_clamps_the_borders():
    x = np.array([1.0, 3.0, 7.0]).reshape(1, 1, 3, 1)
    (y,) = run_op("upsample_bilinear", [x], {"size": (1, 2)})
    # half-pixel centres: outputs at input positions -0.25, 0.25, 0.75, 1.25, 1.75, 2.25
    np.testing.assert_allclose(y.ravel(), [1.0, 1.5, 2.5, 4.0, 6.0, 7.0])


def test_upsample_shape_rule():
    assert _shape_of("upsample_bilinear", [(None, 3, 5, 2)], {"size": (2, 3)}).shape == (None, 6, 15, 2)
    with pytest.raises(ShapeError, match="pair of positive integers"):
        _shape_of("upsample_bilinear", [(1, 3, 5, 2)], {"size": (0, 2)})
    with pytest.raises(ShapeError, match="not an input of 2x2 upsampled"):
        _shape_of("upsample_bilinear_grad", [(1, 4, 5, 2)], {"size": (2, 2), "input_hw": (2, 2)})


def test_philox_normal_is_standard_normal_and_independent_of_other_streams():
    z = philox_normal(1234, 7, 200_000).astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(z ** 3)) < 0.03 and abs(np.mean(z ** 4) - 3) < 0.06   # symmetric, normal tails
    others = [philox_normal(1234, 8, 200_000), philox_normal(1235, 7, 200_000),
              philox_uniform(1234, 7, 200_000), philox_uniform(1235, 7, 200_000)]  # dropout's streams
    for other in others:
        assert abs(np.corrcoef(z, other)[0, 1]) < 0.01
        assert abs(np.corrcoef(z ** 2, other ** 2)[0, 1]) < 0.01


@pytest.mark.parametrize("op", ["gaussian_noise", "gaussian_dropout"])
def test_gaussian_noise_vjp(op):
    check_vjp(op, [RNG.standard_normal((3, 4)), np.array(2, np.int64)], {"stddev": 0.5, "seed": 11}, wrt=[0])
