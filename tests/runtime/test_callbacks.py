"""Callbacks: the seed's hook order and progress-bar trace, LambdaCallback, EarlyStopping,
LearningRateScheduler, ModelCheckpoint (TensorBoard: test_tensorboard.py)."""
import io
import itertools
import os
import re
import sys

import h5py
import numpy as np
import pytest

from kcompiler import keras
from kcompiler.keras import backend
from kcompiler.runtime.progbar import Progbar

# The seed document's trace (section "Callback"): a CustomCallback printing each hook, fit for
# 3 epochs of 8 batches with 2 validation batches, then evaluate(verbose=2) with 5 batches.
# The progress bar prints before the other callbacks' output.
SEED_TRACE = """\
train begin ...
Epoch 1/3
epoch begin ...
train batch begin ...
1/8 [==>...........................] - ETA: 12s - loss: 2.3017 - accuracy: 0.1182train batch end ...
train batch begin ...
2/8 [======>.......................] - ETA: 7s - loss: 2.2929 - accuracy: 0.1495 train batch end ...
train batch begin ...
3/8 [==========>...................] - ETA: 6s - loss: 2.2843 - accuracy: 0.1794train batch end ...
train batch begin ...
4/8 [==============>...............] - ETA: 4s - loss: 2.2756 - accuracy: 0.2042train batch end ...
train batch begin ...
5/8 [=================>............] - ETA: 3s - loss: 2.2664 - accuracy: 0.2265train batch end ...
train batch begin ...
6/8 [=====================>........] - ETA: 2s - loss: 2.2562 - accuracy: 0.2468train batch end ...
train batch begin ...
7/8 [=========================>....] - ETA: 1s - loss: 2.2452 - accuracy: 0.2644train batch end ...
train batch begin ...
8/8 [==============================] - ETA: 0s - loss: 2.2331 - accuracy: 0.2803train batch end ...
test begin ...
test batch begin ...
test batch end ...
test batch begin ...
test batch end ...
test end ...
8/8 [==============================] - 12s 1s/step - loss: 2.2236 - accuracy: 0.2927 - val_loss: 1.8295 - val_accuracy: 0.6315
epoch end ...
Epoch 2/3
epoch begin ...
train batch begin ...
1/8 [==>...........................] - ETA: 8s - loss: 1.8353 - accuracy: 0.6113train batch end ...
train batch begin ...
2/8 [======>.......................] - ETA: 7s - loss: 1.8067 - accuracy: 0.6215train batch end ...
train batch begin ...
3/8 [==========>...................] - ETA: 6s - loss: 1.7765 - accuracy: 0.6298train batch end ...
train batch begin ...
4/8 [==============>...............] - ETA: 4s - loss: 1.7455 - accuracy: 0.6375train batch end ...
train batch begin ...
5/8 [=================>............] - ETA: 3s - loss: 1.7140 - accuracy: 0.6449train batch end ...
train batch begin ...
6/8 [=====================>........] - ETA: 2s - loss: 1.6818 - accuracy: 0.6521train batch end ...
train batch begin ...
7/8 [=========================>....] - ETA: 1s - loss: 1.6495 - accuracy: 0.6591train batch end ...
train batch begin ...
8/8 [==============================] - ETA: 0s - loss: 1.6169 - accuracy: 0.6656train batch end ...
test begin ...
test batch begin ...
test batch end ...
test batch begin ...
test batch end ...
test end ...
8/8 [==============================] - 10s 1s/step - loss: 1.5917 - accuracy: 0.6706 - val_loss: 0.7942 - val_accuracy: 0.8156
epoch end ...
Epoch 3/3
epoch begin ...
train batch begin ...
1/8 [==>...........................] - ETA: 8s - loss: 0.8264 - accuracy: 0.7970train batch end ...
train batch begin ...
2/8 [======>.......................] - ETA: 7s - loss: 0.8112 - accuracy: 0.7965train batch end ...
train batch begin ...
3/8 [==========>...................] - ETA: 5s - loss: 0.7943 - accuracy: 0.7967train batch end ...
train batch begin ...
4/8 [==============>...............] - ETA: 4s - loss: 0.7791 - accuracy: 0.7979train batch end ...
train batch begin ...
5/8 [=================>............] - ETA: 3s - loss: 0.7640 - accuracy: 0.7996train batch end ...
train batch begin ...
6/8 [=====================>........] - ETA: 2s - loss: 0.7498 - accuracy: 0.8014train batch end ...
train batch begin ...
7/8 [=========================>....] - ETA: 1s - loss: 0.7368 - accuracy: 0.8030train batch end ...
train batch begin ...
8/8 [==============================] - ETA: 0s - loss: 0.7247 - accuracy: 0.8048train batch end ...
test begin ...
test batch begin ...
test batch end ...
test batch begin ...
test batch end ...
test end ...
8/8 [==============================] - 10s 1s/step - loss: 0.7152 - accuracy: 0.8062 - val_loss: 0.4754 - val_accuracy: 0.8480
epoch end ...
train end ...
test begin ...
test batch begin ...
test batch end ...
test batch begin ...
test batch end ...
test batch begin ...
test batch end ...
test batch begin ...
test batch end ...
test batch begin ...
test batch end ...
5/5 - 1s - loss: 0.4729 - accuracy: 0.8462
test end ...
"""

PHRASES = {"on_train_begin": "train begin", "on_epoch_begin": "epoch begin", "on_train_batch_begin": "train batch begin",
           "on_train_batch_end": "train batch end", "on_test_begin": "test begin",
           "on_test_batch_begin": "test batch begin", "on_test_batch_end": "test batch end", "on_test_end": "test end",
           "on_epoch_end": "epoch end", "on_train_end": "train end"}
PHRASE_RE = re.compile("(" + "|".join(sorted(PHRASES.values(), key=len, reverse=True)) + r") \.\.\.")


class PrintingCallback(keras.callbacks.Callback):
    """The seed's CustomCallback: prints '<hook> ...' in each hook."""


for _hook, _phrase in PHRASES.items():
    def _make(phrase):
        return lambda self, *args, **kwargs: print(f"{phrase} ...")
    setattr(PrintingCallback, _hook, _make(_phrase))


class RecordingCallback(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []


for _hook in list(PHRASES) + ["on_predict_begin", "on_predict_batch_begin", "on_predict_batch_end", "on_predict_end"]:
    def _record(name):
        return lambda self, *args, **kwargs: self.calls.append((name, args))
    setattr(RecordingCallback, _hook, _record(_hook))


def small_model(seed=0):
    backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def seed_run(callback, verbose=1, eval_verbose=2):
    """The seed's run: 3 epochs of 8 training and 2 validation batches, then 5 evaluation batches."""
    model = small_model()
    x, y = data(64)
    xv, yv = data(16, seed=1)
    model.fit(x, y, batch_size=8, epochs=3, validation_data=(xv, yv), callbacks=[callback], verbose=verbose)
    xt, yt = data(40, seed=2)
    model.evaluate(xt, yt, batch_size=8, callbacks=[callback], verbose=eval_verbose)
    return model


def test_hooks_fire_in_the_seeds_order():
    recorder = RecordingCallback()
    seed_run(recorder, verbose=0, eval_verbose=0)
    got = [PHRASES[name] for name, _ in recorder.calls]
    assert got == PHRASE_RE.findall(SEED_TRACE)
    epochs = [args[0] for name, args in recorder.calls if name == "on_epoch_begin"]
    train_batches = [args[0] for name, args in recorder.calls if name == "on_train_batch_end"]
    assert epochs == [0, 1, 2] and train_batches == list(range(8)) * 3  # zero-based, as in Keras


class Terminal(io.StringIO):
    def isatty(self):
        return True


def render(text):
    """What a terminal shows for ``text``: carriage returns and backspaces move the cursor back."""
    lines, col = [[]], 0
    for ch in text:
        if ch == "\n":
            lines.append([])
            col = 0
        elif ch == "\r":
            col = 0
        elif ch == "\b":
            col = max(col - 1, 0)
        else:
            line = lines[-1]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    return ["".join(line) for line in lines]


def mask(line):
    """Hide what differs between runs: values, times (ETA, epoch time, time per step)."""
    line = re.sub(r"-?\d+\.\d{4}(e[-+]\d+)?", "V", line)
    line = re.sub(r"ETA: [\d:]+s?", "ETA: T", line)
    line = re.sub(r" - \d+s \d+[mu]?s/step", " - T T/step", line)
    line = re.sub(r"^(\d+/\d+) - \d+s", r"\1 - T", line)
    return re.sub(r" +(train batch end)", r"\1", line)  # padding over a longer previous line


def test_the_trace_with_the_progress_bar_renders_as_the_seeds(monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(Progbar, "clock", staticmethod(lambda: 1000.0 + next(ticks)))  # 1 s per update
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    seed_run(PrintingCallback())
    monkeypatch.undo()
    got = [mask(line) for line in render(terminal.getvalue())]
    assert got[-1] == ""
    assert got[:-1] == [mask(line) for line in SEED_TRACE.splitlines()]


def test_lambda_callback_batch_logs_are_running_means():
    model = small_model()
    x, y = data(10)
    printed, epochs = io.StringIO(), []
    callback = keras.callbacks.LambdaCallback(
        on_batch_end=lambda batch, logs: print(batch, logs, file=printed),  # the seed's example
        on_epoch_end=lambda epoch, logs: epochs.append(dict(logs)))
    history = model.fit(x, y, batch_size=4, epochs=2, validation_split=0.2, callbacks=[callback], verbose=0)
    lines = printed.getvalue().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["0", "1"] * 2  # 8 training samples, batches of 4
    assert all(re.fullmatch(r"\d \{'loss': [\d.e-]+, 'accuracy': [\d.e-]+\}", line) for line in lines)
    last = eval(lines[-1].split(" ", 1)[1])  # the last batch's logs are the epoch's means
    assert last["loss"] == history.history["loss"][-1] and last["accuracy"] == history.history["accuracy"][-1]
    assert epochs == [{k: v[i] for k, v in history.history.items()} for i in range(2)]
    assert list(epochs[0]) == ["loss", "accuracy", "val_loss", "val_accuracy"]


class StubModel:
    """EarlyStopping's view of a model: weights (here the epoch number) and stop_training."""

    def __init__(self):
        self.w, self.stop_training, self.compiled_metrics = 0, False, []

    def get_weights(self):
        return [np.array(self.w)]

    def set_weights(self, weights):
        self.w = int(weights[0])


# (monitored values, EarlyStopping arguments, (epoch it stopped at, weights at the end, best, wait)),
# the outcomes real Keras 3.15's EarlyStopping gives for the same sequence.
EARLY_STOPPING_CASES = [
    ([3, 2, 2.5, 2.4, 2.6, 1, 0.5], dict(patience=0), (2, 2, 2, 1)),
    ([3, 2, 2.5, 2.4, 2.6, 1, 0.5], dict(patience=2), (3, 3, 2, 2)),
    ([3, 2, 2.5, 2.4, 2.6, 1, 0.5], dict(patience=2, restore_best_weights=True), (3, 1, 2, 2)),
    ([3, 2, 2.5, 2.4, 2.6, 1, 0.5], dict(patience=1, min_delta=0.3), (2, 2, 2, 1)),
    ([3, 2, 2.5, 2.4, 2.6, 1, 0.5], dict(patience=2, baseline=1.8), (2, 2, 2, 3)),
    ([3, 2, 2.5, 2.4, 2.6, 1, 0.5], dict(patience=1, start_from_epoch=2, restore_best_weights=True), (4, 3, 2.4, 1)),
    ([3, 2, 2.5, 2.4, 2.6, 1, 0.5], dict(monitor="val_acc", mode="max", patience=1, restore_best_weights=True),
     (2, 1, -2, 1)),
    ([1, 1, 1, 1], dict(patience=2, restore_best_weights=True), (2, 0, 1, 2)),
    ([1, 1, 1, 1], dict(patience=1, start_from_epoch=2, restore_best_weights=True), (3, 2, 1, 1)),
    ([2, 3, 1.5, 1.6, 1.7, 1.8], dict(patience=2, restore_best_weights=True), (4, 2, 1.5, 2)),
]


@pytest.mark.parametrize("values, kwargs, expected", EARLY_STOPPING_CASES)
def test_early_stopping_rules_match_keras(values, kwargs, expected):
    callback, model = keras.callbacks.EarlyStopping(**kwargs), StubModel()
    callback.set_model(model)
    callback.on_train_begin()
    stopped = None
    for epoch, value in enumerate(values):
        model.w = epoch
        callback.on_epoch_end(epoch, {"val_loss": value, "loss": value, "val_acc": -value})
        if model.stop_training:
            stopped = epoch
            break
    callback.on_train_end()
    assert (stopped, model.w, callback.best, callback.wait) == expected


def test_early_stopping_in_fit_restores_the_best_weights():
    model = small_model()
    x, y = data(12)
    snapshots = []
    rates = [0.1, 0.1, -2.0, -2.0, -2.0, -2.0]  # gradient ascent from epoch 2: the loss gets worse
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
    history = model.fit(x, y, batch_size=4, epochs=6, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.LearningRateScheduler(lambda epoch: rates[epoch]), stopper,
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))])
    assert model.stop_training and len(history.epoch) < 6
    assert stopper.stopped_epoch == history.epoch[-1] and stopper.best_epoch < stopper.stopped_epoch
    assert stopper.best == min(history.history["loss"])
    for got, expected in zip(model.get_weights(), snapshots[stopper.best_epoch]):
        np.testing.assert_array_equal(got, expected)


def test_learning_rate_scheduler_changes_the_compiled_step_without_recompiling(monkeypatch):
    import kcompiler
    from kcompiler import pipeline
    compiles = []
    lower_graph = pipeline.lower_graph
    monkeypatch.setattr(pipeline, "lower_graph", lambda *a, **k: compiles.append(1) or lower_graph(*a, **k))
    model, twin, constant = small_model(), small_model(), small_model()
    x, y = data(12)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[schedule])
    assert len(compiles) == 1  # one specialisation (batch 4), reused while the rate changes
    np.testing.assert_allclose(history.history["learning_rate"], [0.1, 0.05, 0.025], rtol=1e-7)
    np.testing.assert_allclose(float(model.optimizer.learning_rate.numpy()), 0.025, rtol=1e-7)
    program = kcompiler.compile(twin, training=True)
    for epoch in range(3):
        twin.optimizer.learning_rate = 0.1 * 0.5 ** epoch
        for start in range(0, 12, 4):
            program.train_step(x[start:start + 4], y[start:start + 4])
    for got, expected in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    unscheduled = constant.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    assert unscheduled.history["loss"][0] == history.history["loss"][0]
    assert unscheduled.history["loss"][2] != history.history["loss"][2]
    with pytest.raises(ValueError, match="should be a float"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.LearningRateScheduler(lambda e: "fast")])


def test_model_checkpoint_writes_keras3_weight_files(tmp_path):
    model = small_model()
    x, y = data(12)
    snapshots = []
    path = str(tmp_path / "ckpt" / "w.{epoch:02d}.weights.h5")
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(path, save_weights_only=True),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))])
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["w.01.weights.h5", "w.02.weights.h5", "w.03.weights.h5"]
    with h5py.File(tmp_path / "ckpt" / "w.02.weights.h5", "r") as f:  # Keras 3's layout
        assert sorted(f) == ["layers", "optimizer", "vars"] and f["vars"].attrs["name"] == model.name
        assert sorted(f["layers"]) == ["dense", "dense_1"]
        assert f["layers/dense/vars"].attrs["name"] == model.layers[0].name
        np.testing.assert_array_equal(f["layers/dense_1/vars/0"][()], snapshots[1][2])
        assert len(f["optimizer/vars"]) == len(model.optimizer.variables)
    fresh = small_model(seed=5)
    fresh.load_weights(str(tmp_path / "ckpt" / "w.02.weights.h5"))
    for got, expected in zip(fresh.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(got, expected)


def test_model_checkpoint_save_best_only(tmp_path):
    model = small_model()
    x, y = data(12)
    snapshots = []
    path = str(tmp_path / "best.weights.h5")
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(path, monitor="loss", mode="max", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))])
    best = int(np.argmax(history.history["loss"]))
    fresh = small_model(seed=5)
    fresh.load_weights(path)
    for got, expected in zip(fresh.get_weights(), snapshots[best]):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="weights.h5"):
        keras.callbacks.ModelCheckpoint(str(tmp_path / "w.ckpt"), save_weights_only=True)


def test_weight_files_of_recurrent_models(tmp_path):
    def build():
        backend.clear_session()
        layers = keras.layers
        return keras.Sequential([keras.Input((5,), dtype="int32"), layers.Embedding(10, 3),
                                 layers.LSTM(4, return_sequences=True), layers.Bidirectional(layers.GRU(2)),
                                 layers.Dense(1)])
    model = build()
    model.save_weights(str(tmp_path / "rnn.weights.h5"))
    with h5py.File(tmp_path / "rnn.weights.h5", "r") as f:  # as Keras 3 writes them (checked against it)
        assert f["layers/lstm/cell/vars"].attrs["name"] == "lstm_cell"
        np.testing.assert_array_equal(f["layers/lstm/cell/vars/1"][()], model.layers[1].get_weights()[1])
        assert f["layers/bidirectional/backward_layer/cell/vars/2"].shape == (2, 6)
        assert len(f["layers/bidirectional/vars"]) == 0
    model.save_weights(str(tmp_path / "rnn.h5"))  # tf.keras 2's layout
    with h5py.File(tmp_path / "rnn.h5", "r") as f:
        assert list(f.attrs["layer_names"]) == [layer.name for layer in model.layers]
        assert "lstm/lstm_cell/kernel:0" in list(f["lstm"].attrs["weight_names"])
    for name in ("rnn.weights.h5", "rnn.h5"):
        fresh = build()
        keras.utils.set_random_seed(9)
        fresh.load_weights(str(tmp_path / name))
        for got, expected in zip(fresh.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(got, expected)


def test_params_model_and_stopping_mid_epoch():
    class StopAfterTwoBatches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.seen = (self.params, self.model)
            if batch == 1:
                self.model.stop_training = True
    model = small_model()
    x, y = data(12)
    stopper, recorder = StopAfterTwoBatches(), RecordingCallback()
    history = model.fit(x, y, batch_size=4, epochs=3, validation_split=0.25, verbose=0, callbacks=[stopper, recorder])
    assert stopper.seen == ({"verbose": 0, "epochs": 3, "steps": 3}, model)
    names = [name for name, _ in recorder.calls]
    assert names.count("on_train_batch_end") == 2 and names.count("on_epoch_end") == 1
    assert names[-4:] == ["on_test_batch_end", "on_test_end", "on_epoch_end", "on_train_end"]  # still validated
    assert history.epoch == [0] and int(model.optimizer.iterations.numpy()) == 2


def test_batch_aliases_and_predict_hooks():
    class Old(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = []

        def on_batch_begin(self, batch, logs=None):
            self.batches.append(("begin", batch))

        def on_batch_end(self, batch, logs=None):
            self.batches.append(("end", batch, sorted(logs)))
    model, old, recorder = small_model(), Old(), RecordingCallback()
    x, y = data(6)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[old])
    keys = ["accuracy", "loss"]
    assert old.batches == [("begin", 0), ("end", 0, keys), ("begin", 1), ("end", 1, keys)]
    predictions = model.predict(x, batch_size=4, verbose=0, callbacks=[recorder])
    names = [name for name, _ in recorder.calls]
    assert names == ["on_predict_begin", "on_predict_batch_begin", "on_predict_batch_end", "on_predict_batch_begin",
                     "on_predict_batch_end", "on_predict_end"]
    outputs = [args[1]["outputs"] for name, args in recorder.calls if name == "on_predict_batch_end"]
    np.testing.assert_array_equal(np.concatenate(outputs), predictions)
