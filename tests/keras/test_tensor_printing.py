"""Eager tensors print as TensorFlow prints them (the seed's REPL lines, with kcompiler's class
name), and ``.numpy()`` of a scalar is a numpy scalar. The expected lines are the seed
document's (../shared/seed/, the losses section), with ``tf.Tensor`` read as ``kcompiler.Tensor``."""
import numpy as np
import pytest

from kcompiler import keras

SEED_LOSS_LINES = [  # (loss, y_true, y_pred, the seed's line)
    (lambda: keras.losses.BinaryCrossentropy(from_logits=True), [0, 1, 0, 0], [-18.6, 0.51, 2.94, -12.8],
     "<tf.Tensor: shape=(), dtype=float32, numpy=0.865458>"),
    (keras.losses.CategoricalCrossentropy, [[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]],
     "<tf.Tensor: shape=(), dtype=float32, numpy=1.1769392>"),
    (keras.losses.CosineSimilarity, [1., 1.], [2., 2.], "<tf.Tensor: shape=(), dtype=float32, numpy=-0.99999994>"),
    (keras.losses.CosineSimilarity, [1., 1.], [2., -2.], "<tf.Tensor: shape=(), dtype=float32, numpy=-0.0>"),
    (keras.losses.MeanAbsoluteError, [0., 1.], [0.1, 0.8], "<tf.Tensor: shape=(), dtype=float32, numpy=0.14999999>"),
    (keras.losses.MeanSquaredError, [0., 1.], [0.1, 0.8], "<tf.Tensor: shape=(), dtype=float32, numpy=0.024999999>"),
    (keras.losses.SparseCategoricalCrossentropy, [1, 2], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]],
     "<tf.Tensor: shape=(), dtype=float32, numpy=1.1769392>"),
]


@pytest.mark.parametrize("make, y_true, y_pred, seed_line", SEED_LOSS_LINES)
def test_scalar_prints_as_the_seed_shows(make, y_true, y_pred, seed_line):
    value = make()(y_true, y_pred)
    assert repr(value) == seed_line.replace("tf.Tensor", "kcompiler.Tensor")
    scalar = value.numpy()
    assert isinstance(scalar, np.float32) and np.ndim(scalar) == 0
    assert str(value) == f"kcompiler.Tensor({str(scalar)}, shape=(), dtype=float32)"


def test_arrays_print_as_tensorflow_does():
    x = keras.ops.reshape(keras.ops.convert_to_tensor([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]]), [1, 3, 3, 1])
    pooled = keras.layers.MaxPool2D(pool_size=(2, 2), strides=(1, 1), padding="valid")(x)
    text = repr(pooled)
    # TensorFlow: the header, then numpy's repr of the array on lines of its own
    assert text.startswith("<kcompiler.Tensor: shape=(1, 2, 2, 1), dtype=float32, numpy=\narray([[[[5.],")
    assert text.endswith("dtype=float32)>")
    assert text == f"<kcompiler.Tensor: shape=(1, 2, 2, 1), dtype=float32, numpy=\n{pooled.numpy()!r}>"
    short = keras.ops.convert_to_tensor([1.0, 2.0])
    assert repr(short) == "<kcompiler.Tensor: shape=(2,), dtype=float32, numpy=array([1., 2.], dtype=float32)>"
    assert isinstance(short.numpy(), np.ndarray)


def test_weights_print_as_the_seed_shows_them():
    from examples.seed_models import tiny_mlp
    kernel, bias = tiny_mlp().layers[0].weights
    # the seed: <tf.Variable 'layer1/kernel:0' shape=(4, 5) dtype=float32, numpy=\narray([[...]],\n dtype=float32)>
    assert repr(kernel) == f"<kcompiler.Variable 'layer1/kernel:0' shape=(4, 5) dtype=float32, numpy=\n" \
                           f"{kernel.numpy()!r}>"
    # the seed: ... 'layer1/bias:0' shape=(5,) dtype=float32, numpy=array([0., 0., 0., 0., 0.], dtype=float32)>
    assert repr(bias) == "<kcompiler.Variable 'layer1/bias:0' shape=(5,) dtype=float32, " \
                         "numpy=array([0., 0., 0., 0., 0.], dtype=float32)>"
