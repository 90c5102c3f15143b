"""Initialisers follow Keras's definitions (limits, standard deviations, orthogonality)."""
import numpy as np
import pytest

from kcompiler.keras import initializers, layers


def test_glorot_uniform_limit_and_variance():
    w = initializers.GlorotUniform(seed=1)((300, 200))
    limit = np.sqrt(6 / 500)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    assert w.var() == pytest.approx(limit ** 2 / 3, rel=0.05)


def test_he_normal_is_truncated_with_the_keras_stddev():
    w = initializers.HeNormal(seed=2)((400, 300))
    stddev = np.sqrt(2 / 400)
    assert np.abs(w).max() <= 2 * stddev / 0.87962566103423978 + 1e-6
    assert w.std() == pytest.approx(stddev, rel=0.05)


def test_conv_kernel_fans_count_the_receptive_field():
    assert initializers.compute_fans((3, 3, 8, 16)) == (72, 144)


def test_orthogonal_rows_or_columns_are_orthonormal():
    w = initializers.Orthogonal(seed=3)((6, 12))
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-5)


def test_lstm_forget_gate_bias_starts_at_one():
    layer = layers.LSTM(4)
    layer.build((None, 5, 3))
    bias = layer.get_weights()[2]
    np.testing.assert_array_equal(bias[4:8], 1.0)
    np.testing.assert_array_equal(np.delete(bias, range(4, 8)), 0.0)


def test_dense_defaults_are_glorot_uniform_kernel_and_zero_bias():
    layer = layers.Dense(7)
    layer.build((None, 5))
    kernel, bias = layer.get_weights()
    assert np.abs(kernel).max() <= np.sqrt(6 / 12)
    np.testing.assert_array_equal(bias, 0.0)


def test_unknown_initializer_name_is_rejected():
    with pytest.raises(ValueError, match="unknown initializer 'glorot'"):
        initializers.get("glorot")
