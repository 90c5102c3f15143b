"""train_on_batch's fast path (keras/loops.py): a batch like the last one (same steps, shapes,
dtypes; no weights) skips the conversions and checks it already passed, and computes exactly
what the full path computes; anything else takes the full path."""
import numpy as np
import pytest

from kcompiler import keras
from kcompiler.keras import loops

RNG = np.random.default_rng(5)
X = RNG.standard_normal((6, 4)).astype(np.float32)


def _model(loss="mse", units=1):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(units)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    return model


@pytest.fixture
def checks(monkeypatch):
    """Counts the full path's input checks."""
    calls = []
    real = loops.input_arrays
    monkeypatch.setattr(loops, "input_arrays", lambda *a: calls.append(1) or real(*a))
    return calls


def test_the_fast_path_computes_what_the_full_path_computes(checks):
    y = RNG.standard_normal((6, 1)).astype(np.float32)
    fast, full = _model(), _model()
    fast_losses = [fast.train_on_batch(X, y) for _ in range(4)]
    assert len(checks) == 1  # only the first batch was checked in full
    full_losses = []
    for _ in range(4):
        full.__dict__.pop("_train_batch_seen", None)  # forget the last batch: the full path every time
        full_losses.append(full.train_on_batch(X, y))
    assert fast_losses == full_losses
    for a, b in zip(fast.get_weights(), full.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_batch_unlike_the_last_takes_the_full_path(checks):
    y = RNG.standard_normal((6, 1)).astype(np.float32)
    model = _model()
    model.train_on_batch(X, y)
    model.train_on_batch(X.astype(np.float64), y)               # another dtype: converted
    model.train_on_batch(X[:3], y[:3])                          # another batch size
    model.train_on_batch(X, y, sample_weight=np.ones(6))        # weights
    model.train_on_batch(np.asfortranarray(X), y)               # not C-contiguous
    assert len(checks) == 5
    model.compile(optimizer="adam", loss="mse")                 # new steps
    model.train_on_batch(X, y)
    assert len(checks) == 6
    with pytest.raises(ValueError, match="expects input"):
        model.train_on_batch(np.zeros((6, 5), np.float32), y)  # a wrong shape never reaches the step


def test_class_ids_out_of_range_are_refused_on_the_fast_path_too(checks):
    model = _model(keras.losses.SparseCategoricalCrossentropy(from_logits=True), units=3)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    model.train_on_batch(X, labels)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="received a label value of 3 which is outside the valid range of"):
        model.train_on_batch(X, np.array([0, 1, 3, 0, 1, 2], np.int32))
    assert len(checks) == 1  # refused on the fast path, with the full path's message
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
