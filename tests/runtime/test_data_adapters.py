"""fit/evaluate/predict on data beyond arrays: Python generators, keras.utils.Sequence,
keras.utils.PyDataset (with and without background workers), lists and dicts of arrays for
several inputs, nested Python lists. A generator, a Sequence and a PyDataset train the seed's
tiny model to the same weights as the same batches given as arrays (shuffle off)."""
import warnings

import numpy as np
import pytest

from examples.seed_models import tiny_mlp
from kcompiler import keras
from kcompiler.keras import data_adapters

N, BATCH = 10, 4  # batches of 4, 4 and 2: a batch of another size gets its own specialisation


def _data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32) + 0.3).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=N).astype(np.float32)
    return x, y, w


def _model(initial=None):
    model = tiny_mlp()
    if initial is not None:
        model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    return model


def _batches(with_weights):
    x, y, w = _data()
    out = []
    for i in range(0, N, BATCH):
        out.append((x[i:i + BATCH], y[i:i + BATCH]) + ((w[i:i + BATCH],) if with_weights else ()))
    return out


class ListSequence(keras.utils.Sequence):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.epochs_ended = 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]

    def on_epoch_end(self):
        self.epochs_ended += 1


class ListDataset(keras.utils.PyDataset):
    def __init__(self, batches, **kwargs):
        super().__init__(**kwargs)
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _reference(epochs, with_weights):
    x, y, w = _data()
    model = _model()
    initial = model.get_weights()
    history = model.fit(x, y, sample_weight=w if with_weights else None, batch_size=BATCH, epochs=epochs,
                        shuffle=False, verbose=0).history
    return initial, model.get_weights(), history


def _endless(batches):
    while True:
        yield from batches


@pytest.mark.parametrize("with_weights", [False, True])
@pytest.mark.parametrize("kind", ["generator", "sequence", "pydataset", "pydataset_threads", "sequence_threads",
                                  "sequence_processes", "generator_thread"])
def test_streamed_data_trains_to_the_weights_of_arrays(kind, with_weights):
    epochs = 3
    initial, expected_weights, expected_history = _reference(epochs, with_weights)
    batches = _batches(with_weights)
    model = _model(initial)
    fit = dict(epochs=epochs, verbose=0, shuffle=False)
    if kind == "generator":
        data, fit["steps_per_epoch"] = _endless(batches), len(batches)
    elif kind == "generator_thread":
        data, fit["steps_per_epoch"], fit["workers"] = _endless(batches), len(batches), 2
    elif kind == "sequence":
        data = ListSequence(batches)
    elif kind == "sequence_threads":
        data, fit["workers"], fit["max_queue_size"] = ListSequence(batches), 3, 2
    elif kind == "sequence_processes":
        data, fit["workers"], fit["use_multiprocessing"] = ListSequence(batches), 2, True
    elif kind == "pydataset":
        data = ListDataset(batches)
    else:
        data = ListDataset(batches, workers=3, max_queue_size=2)
    history = model.fit(data, **fit).history
    for got, want in zip(model.get_weights(), expected_weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for key in ("loss", "mae"):
        np.testing.assert_allclose(history[key], expected_history[key], rtol=1e-5)
    if kind == "sequence":
        assert data.epochs_ended == epochs


def test_sequence_evaluate_and_predict_equal_arrays():
    x, y, _ = _data()
    model = _model()
    sequence = ListSequence(_batches(False))
    expected = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert model.evaluate(sequence, verbose=0, return_dict=True) == pytest.approx(expected, rel=1e-6)
    predictions = model.predict(ListDataset([(x[i:i + BATCH],) for i in range(0, N, BATCH)]), verbose=0)
    np.testing.assert_allclose(predictions, model.predict(x, batch_size=BATCH, verbose=0), rtol=1e-6)


def test_generator_validation_data_and_validation_steps():
    x, y, _ = _data()
    model = _model()
    expected = model.evaluate(x[:8], y[:8], batch_size=BATCH, verbose=0, return_dict=True)
    history = model.fit(x, y, epochs=1, verbose=0, shuffle=False, batch_size=N,
                        validation_data=_endless(_batches(False)), validation_steps=2).history
    weights = model.get_weights()
    # the step on all ten samples happened before the validation: evaluate with those weights
    again = _model(weights).evaluate(x[:8], y[:8], batch_size=BATCH, verbose=0, return_dict=True)
    assert history["val_loss"][0] == pytest.approx(again["loss"], rel=1e-5)
    assert again["loss"] != pytest.approx(expected["loss"], rel=1e-3)


def test_finite_generator_without_steps_runs_until_exhausted():
    model = _model()
    seen = []

    def batches():
        for b in _batches(False):
            seen.append(len(b[0]))
            yield b

    history = model.fit(batches(), epochs=1, shuffle=False, verbose=0)
    assert seen == [4, 4, 2] and len(history.history["loss"]) == 1
    with pytest.warns(UserWarning, match="ran out of data"):
        history = model.fit(batches(), epochs=1, steps_per_epoch=5, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 1
    with pytest.warns(UserWarning, match="ran out of data"):  # nothing left for a second epoch: training ends
        history = model.fit(batches(), epochs=3, shuffle=False, verbose=0)
    assert history.epoch == [0] and len(history.history["loss"]) == 1


class FailingSequence(ListSequence):
    def __getitem__(self, index):
        if index == 1:
            raise KeyError(f"no batch {index} here")
        return super().__getitem__(index)


@pytest.mark.parametrize("workers, processes", [(1, False), (2, False), (2, True)])
def test_an_error_in_a_worker_surfaces_in_the_caller(workers, processes):
    model = _model()
    with pytest.raises(KeyError, match="no batch 1 here"):
        model.fit(FailingSequence(_batches(False)), epochs=1, verbose=0, workers=workers,
                  use_multiprocessing=processes)


def test_generator_errors_name_the_problem():
    model = _model()
    x, y, _ = _data()
    with pytest.raises(ValueError, match="`y` argument is not supported"):
        model.fit(_endless(_batches(False)), y, steps_per_epoch=1, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(ListSequence(_batches(False)), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="hold no labels"):
        model.fit(iter([x[:4]]), shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=r"\(x, y\) or \(x, y, sample_weight\)"):
        model.fit(iter([(x, y, None, None)]), shuffle=False, verbose=0)


def test_nested_python_lists_and_several_inputs():
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    out = keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(1)
    xa, xb = rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    y = rng.normal(size=(6, 1)).astype(np.float32)
    initial = model.get_weights()
    as_arrays = model.fit([xa, xb], y, epochs=2, shuffle=False, verbose=0).history["loss"]
    weights = model.get_weights()
    model.set_weights(initial)
    as_lists = model.fit([xa.tolist(), xb.tolist()], y.tolist(), epochs=2, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(as_lists, as_arrays, rtol=1e-6)
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    model.set_weights(initial)
    as_dict = model.fit({"a": xa, "b": xb}, y, epochs=2, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(as_dict, as_arrays, rtol=1e-6)


def test_pydataset_keeps_its_constructor_settings():
    data = ListDataset([], workers=4, use_multiprocessing=True, max_queue_size=3)
    assert (data.workers, data.use_multiprocessing, data.max_queue_size) == (4, True, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (ListSequence([]).workers, ListSequence([]).use_multiprocessing) == (1, False)


def test_shuffled_sequence_sees_every_batch_once_per_epoch_and_generators_warn():
    keras.utils.set_random_seed(3)
    order = []

    class Recording(ListSequence):
        def __getitem__(self, index):
            order.append(index)
            return super().__getitem__(index)

    batches = _batches(False) * 3  # nine batches: a fixed order is unlikely to come out of a shuffle
    model = _model()
    model.fit(Recording(batches), epochs=2, shuffle=True, verbose=0)
    first, second = order[:9], order[9:]
    assert sorted(first) == sorted(second) == list(range(9))
    assert first != list(range(9)) or second != list(range(9))
    with pytest.warns(UserWarning, match="`shuffle=True` was passed, but will be ignored"):
        model.fit(iter(_batches(False)), epochs=1, shuffle=True, verbose=0)


def test_a_generator_error_in_its_background_thread_keeps_its_traceback():
    def failing():
        yield _batches(False)[0]
        raise RuntimeError("the generator broke")

    with pytest.raises(RuntimeError, match="the generator broke") as raised:
        _model().fit(failing(), epochs=1, shuffle=False, verbose=0, workers=2)
    assert any(entry.name == "failing" for entry in raised.traceback)


def test_batches_of_many_sizes_each_get_their_specialisation():
    """A generator whose batches all differ in size trains as train_on_batch on the same batches."""
    x, y, _ = _data()
    sizes = [1, 3, 2, 4]
    starts = np.cumsum([0] + sizes)
    batches = [(x[a:b], y[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    streamed = _model()
    initial = streamed.get_weights()
    streamed.fit(iter(batches), epochs=1, shuffle=False, verbose=0)
    stepped = _model(initial)
    for bx, by in batches:
        stepped.train_on_batch(bx, by)
    for got, want in zip(streamed.get_weights(), stepped.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


class ReorderingSequence(ListSequence):
    """Reverses its batch order at each epoch end: worker processes must see the new order."""

    def __getitem__(self, index):
        return self.batches[index], index

    def on_epoch_end(self):
        super().on_epoch_end()
        self.batches = self.batches[::-1]


def test_worker_processes_see_the_sequence_as_on_epoch_end_left_it():
    sequence = ReorderingSequence(["a", "b", "c"])
    adapter = data_adapters.SequenceAdapter(sequence, workers=2, use_multiprocessing=True)
    try:
        seen = []
        for _ in range(2):
            seen.append([(x, y) for _, (x, y, _) in adapter.epoch()])
            adapter.on_epoch_end()
    finally:
        adapter.close()
    assert seen == [[("a", 0), ("b", 1), ("c", 2)], [("c", 0), ("b", 1), ("a", 2)]]


def test_an_endless_generator_thread_ends_with_fit():
    import threading
    _model().fit(_endless(_batches(False)), steps_per_epoch=2, epochs=1, shuffle=False, verbose=0, workers=2,
                 max_queue_size=1)
    for thread in threading.enumerate():
        if thread.name == "kcompiler-generator":
            thread.join(timeout=30)
            assert not thread.is_alive()
