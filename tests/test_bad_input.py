"""Bad input to compiled programs: a clear Python exception, never a crash."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.errors import KCompilerError, ShapeError
from kcompiler.keras import backend


def model_with(loss, units=3):
    backend.clear_session()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])
    model.compile(optimizer="sgd", loss=loss)
    return model


def test_sparse_labels_of_the_wrong_width_name_the_loss_and_shapes():
    program = kcompiler.compile(model_with(keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                                training=True)
    with pytest.raises((ShapeError, ValueError), match=r"\(4, 3\)|\(None, 3\)"):
        program.train_step(np.zeros((4, 4), np.float32), np.zeros((4, 3), np.int32))


def test_one_hot_labels_of_the_wrong_width_are_rejected():
    program = kcompiler.compile(model_with("categorical_crossentropy"), training=True)
    with pytest.raises((ShapeError, ValueError), match="5"):
        program.train_step(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.float32))


def test_labels_and_inputs_with_different_batch_sizes():
    program = kcompiler.compile(model_with("mse"), training=True)
    with pytest.raises(ShapeError, match="3 samples for 4 inputs"):
        program.train_step(np.zeros((4, 4), np.float32), np.zeros((3, 3), np.float32))


def test_string_labels_are_rejected():
    program = kcompiler.compile(model_with("mse"), training=True)
    with pytest.raises(TypeError, match="cannot convert"):
        program.train_step(np.zeros((2, 4), np.float32), np.array([["a"] * 3] * 2))


def test_wrong_input_width_for_a_compiled_program():
    program = kcompiler.compile(model_with("mse"), batch_size=2)
    with pytest.raises(ShapeError, match=r"expects input 'input_1' of shape \(None, 4\), got \(2, 5\)"):
        program.predict(np.zeros((2, 5), np.float32))


def test_nan_and_inf_inputs_propagate_without_crashing():
    """Documented behaviour: like Keras, NaN/inf are not checked; they propagate to the loss
    (and into the weights a step updates). Nothing crashes."""
    model = model_with("mse")
    program = kcompiler.compile(model, training=True, batch_size=2)
    x = np.array([[np.nan, 0, 0, 0], [np.inf, 1, 1, 1]], np.float32)
    logs = program.train_step(x, np.zeros((2, 3), np.float32))
    assert np.isnan(logs["loss"])
    assert np.isnan(model.layers[0].kernel.numpy()).any()


def test_out_of_range_embedding_index_in_a_compiled_program():
    backend.clear_session()
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(5, 2)])
    program = kcompiler.compile(model, batch_size=1)
    with pytest.raises(KCompilerError, match=r"Embedding 'embedding': id 7 is outside \[0, 5\) \(input_dim=5\)"):
        program.predict(np.array([[1, 2, 7]], np.int32))


def test_unknown_loss_optimizer_and_metric_names_raise_at_compile():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="sgd", loss="msee")
    with pytest.raises(ValueError):
        model.compile(optimizer="sgdd", loss="mse")
    with pytest.raises(ValueError):
        model.compile(optimizer="sgd", loss="mse", metrics=["acuracy"])
