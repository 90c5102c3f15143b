"""Strict input checks: data that would silently turn into other numbers, and arguments that
make no sense, raise a clear exception naming the input and the value (issue 6, item 6)."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.keras import backend


def id_model():
    backend.clear_session()
    return keras.Sequential([keras.Input((2,), dtype="int32", name="ids"), keras.layers.Embedding(5, 1)])


def identity_model():
    backend.clear_session()
    model = keras.Sequential([keras.Input((1,), name="x"), keras.layers.Activation("linear")])
    model.compile(optimizer="sgd", loss="mse")
    return model


def classifier(loss=None, metrics=None):
    backend.clear_session()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=metrics)
    return model


def test_values_that_do_not_fit_int32_raise_instead_of_wrapping():
    model = id_model()
    program = kcompiler.compile(model, batch_size=1)
    for ids in (np.array([[2**32 + 1, 0]], np.int64), np.array([[3e9, 0]]), np.array([[np.nan, 0]])):
        bad = repr(ids[0, 0].item())
        with pytest.raises(ValueError, match=rf"input 'ids': value {bad} does not fit in int32"):
            model.predict(ids, verbose=0)
        with pytest.raises(ValueError, match=rf"input 'ids': value {bad} does not fit in int32"):
            program.predict(ids)
    assert model.predict(np.array([[4, 0]], np.int64), verbose=0).shape == (1, 2, 1)  # ids that fit still work

    # A float model takes wide integers as floats: no trip through int32 (3e9 used to come out as -1.29e9).
    model = identity_model()
    for x in (np.array([[3_000_000_000]], np.int64), np.array([[3e9]]), np.array([[2**40]], np.uint64)):
        np.testing.assert_allclose(model.predict(x, verbose=0), x.astype(np.float32))
        np.testing.assert_allclose(kcompiler.compile(model).predict(x), x.astype(np.float32))


def test_complex_inputs_and_labels_are_refused():
    model = identity_model()
    x = np.array([[1 + 2j]])
    with pytest.raises(TypeError, match="input 'x': complex data"):
        model.predict(x, verbose=0)
    with pytest.raises(TypeError, match="input 'x': complex data"):
        kcompiler.compile(model).predict(x)
    with pytest.raises(TypeError, match="labels: complex data"):
        model.fit(np.ones((2, 1)), np.array([[1j], [1]]), verbose=0)
    with pytest.raises(TypeError, match="labels: complex data"):
        kcompiler.compile(model, training=True).train_step(np.ones((2, 1), np.float32), np.array([[1j], [1]]))
    with pytest.raises(TypeError, match="complex data"):
        model.layers[0](x)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_batch_size_must_be_a_positive_integer(batch_size):
    model = identity_model()
    x = y = np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match=rf"batch_size.* got batch_size={batch_size}"):
        model.fit(x, y, batch_size=batch_size, verbose=0)
    with pytest.raises(ValueError, match=rf"validation_batch_size.* got validation_batch_size={batch_size}"):
        model.fit(x, y, validation_split=0.5, validation_batch_size=batch_size, verbose=0)
    with pytest.raises(ValueError, match=rf"got batch_size={batch_size}"):
        model.evaluate(x, y, batch_size=batch_size, verbose=0)
    with pytest.raises(ValueError, match=rf"got batch_size={batch_size}"):
        model.predict(x, batch_size=batch_size, verbose=0)


@pytest.mark.parametrize("split", [-0.5, 1.0, 1.5, float("nan")])
def test_validation_split_must_be_in_0_1(split):
    model = identity_model()
    with pytest.raises(ValueError, match=rf"validation_split.*\[0, 1\).* got validation_split={split}"):
        model.fit(np.ones((4, 1)), np.ones((4, 1)), validation_split=split, verbose=0)


@pytest.mark.parametrize("bad", [3, -1, 2**32 + 1, 3.0])
def test_sparse_labels_outside_the_classes_raise_at_every_entry_point(bad):
    x = np.ones((4, 2), np.float32)
    y = np.array([0, 1, 2, bad])
    message = rf"label value of {bad!r} which is outside the valid range of \[0, 3\)"
    model = classifier()
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.fit(x, np.array([0, 1, 2, 0]), validation_data=(x, y), verbose=0)
    with pytest.raises(ValueError, match=message):
        model.evaluate(x, y, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.train_on_batch(x, y)
    with pytest.raises(ValueError, match=message):
        model.test_on_batch(x, y)
    with pytest.raises(ValueError, match=message):  # a direct call that converts its labels checks them too
        kcompiler.compile(model, training=True).train_step(x, y)
    assert all(np.array_equal(w.numpy(), b) for w, b in zip(model.weights, before))

    model = classifier(loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])
    with pytest.raises(ValueError, match=message):
        model.evaluate(x, y, verbose=0)


def test_sparse_labels_inside_the_classes_or_ignored_are_accepted():
    x = np.ones((4, 2), np.float32)
    classifier().fit(x, np.array([0, 1, 2, 2.5]), verbose=0)  # floats are truncated to class ids, as in Keras
    model = classifier(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1))
    model.fit(x, np.array([0, 1, 2, -1]), verbose=0)
    with pytest.raises(ValueError, match="label value of -2 "):
        model.fit(x, np.array([0, 1, -2, -1]), verbose=0)


def test_a_sequential_that_cannot_be_built_from_its_implied_input_builds_on_data():
    backend.clear_session()
    model = keras.Sequential([keras.layers.Embedding(10, 4), keras.layers.Flatten(), keras.layers.Dense(1)])
    assert not model.built
    with pytest.raises(ValueError, match="not yet been built"):
        model.summary()
    model.compile(optimizer="sgd", loss="mse")
    x = np.arange(56).reshape(8, 7) % 10
    model.fit(x, np.ones((8, 1), np.float32), batch_size=4, verbose=0)
    assert model.input_shape == (None, 7) and model.output_shape == (None, 1)
    assert model.layers[-1].kernel.shape == (28, 1)
    assert model.predict(x, verbose=0).shape == (8, 1)

    # Called on data directly (eagerly) it builds the same way.
    backend.clear_session()
    model = keras.Sequential([keras.layers.Embedding(10, 4), keras.layers.Flatten(), keras.layers.Dense(1)])
    assert model(x).shape == (8, 1)

    # An input the user gave is not second-guessed: the error comes at construction, as in Keras.
    with pytest.raises(ValueError, match="last dimension of the input must be known"):
        keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(10, 4),
                          keras.layers.Flatten(), keras.layers.Dense(1)])
