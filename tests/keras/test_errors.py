"""Bad input gets one clear Python exception naming the layer, the shape and what was expected."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.errors import ShapeError, UnsupportedError
from kcompiler.keras import backend, layers


@pytest.fixture(autouse=True)
def fresh_names():
    backend.clear_session()


def test_wrong_input_size_names_the_layer_and_both_sizes():
    model = keras.Sequential([layers.Dense(3, input_shape=(4,)), layers.Dense(2)])
    with pytest.raises(ShapeError, match=r"Dense 'dense' expects input last dimension 4, got 5"):
        model(np.ones((2, 5)))


def test_mismatched_layer_stack_fails_at_add_naming_the_layer():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    model.layers[0]  # built
    second = layers.Dense(2, name="dense_1")
    second.build((None, 4))
    with pytest.raises(ShapeError, match=r"Dense 'dense_1' expects input last dimension 4, got 3"):
        model.add(second)


def test_wrong_input_rank_names_the_layer():
    layer = layers.BatchNormalization(axis=1)
    layer.build((None, 3, 4))
    with pytest.raises(ShapeError, match=r"BatchNormalization 'batch_normalization' expects input of rank 3"):
        layer(np.ones((2, 3)))


def test_unknown_activation_names_the_layer():
    with pytest.raises(ValueError, match=r"Dense 'dense': unknown activation 'relux'"):
        layers.Dense(3, activation="relux")


def test_unknown_constructor_argument_is_rejected():
    with pytest.raises(TypeError, match=r"Dense: unexpected keyword argument\(s\) \['unitz'\]"):
        layers.Dense(3, unitz=4)


def test_a_foreign_layer_is_listed_as_unsupported():
    class NotALayer:
        name = "mystery"

    model = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    model._stack.append(NotALayer())
    with pytest.raises(UnsupportedError, match=r"mystery \(NotALayer\)"):
        kcompiler.compile(model)


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match="add\\(\\) takes Layer instances"):
        keras.Sequential([keras.Input((4,)), "dense"])


def test_shape_error_inside_a_custom_layer_names_it():
    class Broken(layers.Layer):
        def call(self, x):
            return keras.ops.matmul(x, np.ones((7, 2), np.float32))

    with pytest.raises(ShapeError, match=r"Broken 'broken': matmul: contraction dimensions differ"):
        keras.Sequential([keras.Input((4,)), Broken()])


def test_strings_do_not_convert_to_tensors():
    with pytest.raises(TypeError, match="cannot convert data of dtype"):
        layers.Dense(2)(np.array([["a", "b"]]))


def test_compile_rejects_an_unknown_target():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        kcompiler.compile(model, target="tpu")
