"""The progress bar prints tf.keras 2's text byte for byte (the expected bytes below are what
tf_keras's own Progbar writes for the same updates and clock)."""
import io
import itertools
import sys

import numpy as np
import pytest

from kcompiler import keras
from kcompiler.keras import backend
from kcompiler.runtime.progbar import Progbar, format_duration

from .test_callbacks import render


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(Progbar, "clock", staticmethod(lambda: now[0]))
    return now


@pytest.fixture
def terminal(monkeypatch):
    """A fake terminal as stdout, installed by the test itself: pytest's capture replaces sys.stdout
    between a fixture's setup and the test's call."""
    def install():
        out = Terminal()
        monkeypatch.setattr(sys, "stdout", out)
        return out
    return install


# The seed's first epoch: (seconds since the bar started, step, loss, accuracy), then the final update.
SEED_EPOCH = [(1.8, 1, 2.3017, 0.1182), (3.0, 2, 2.2929, 0.1495), (4.3, 3, 2.2843, 0.1794), (5.1, 4, 2.2756, 0.2042),
              (6.2, 5, 2.2664, 0.2265), (7.3, 6, 2.2562, 0.2468), (8.4, 7, 2.2452, 0.2644), (9.5, 8, 2.2331, 0.2803)]
SEED_LINES = [
    "1/8 [==>...........................] - ETA: 12s - loss: 2.3017 - accuracy: 0.1182train batch end ...",
    "2/8 [======>.......................] - ETA: 7s - loss: 2.2929 - accuracy: 0.1495 train batch end ...",
    "3/8 [==========>...................] - ETA: 6s - loss: 2.2843 - accuracy: 0.1794train batch end ...",
    "4/8 [==============>...............] - ETA: 4s - loss: 2.2756 - accuracy: 0.2042train batch end ...",
    "5/8 [=================>............] - ETA: 3s - loss: 2.2664 - accuracy: 0.2265train batch end ...",
    "6/8 [=====================>........] - ETA: 2s - loss: 2.2562 - accuracy: 0.2468train batch end ...",
    "7/8 [=========================>....] - ETA: 1s - loss: 2.2452 - accuracy: 0.2644train batch end ...",
    "8/8 [==============================] - ETA: 0s - loss: 2.2331 - accuracy: 0.2803train batch end ...",
    "8/8 [==============================] - 12s 1s/step - loss: 2.2236 - accuracy: 0.2927 - val_loss: 1.8295 - "
    "val_accuracy: 0.6315",
]


def test_an_epoch_renders_as_the_seeds_lines(clock, terminal):
    terminal = terminal()
    bar = Progbar(8, stateful_metrics={"loss", "accuracy"})
    for seconds, step, loss, accuracy in SEED_EPOCH:
        clock[0] = 1000.0 + seconds
        bar.update(step, [("loss", loss), ("accuracy", accuracy)], finalize=False)
        print("train batch end ...")  # what the seed's callback prints after the bar
    clock[0] = 1012.0
    bar.update(8, [("loss", 2.2236), ("accuracy", 0.2927), ("val_loss", 1.8295), ("val_accuracy", 0.6315)],
               finalize=True)
    assert render(terminal.getvalue()) == SEED_LINES + [""]


def test_interactive_updates_rewrite_the_line(clock, terminal):
    terminal = terminal()
    bar = Progbar(8, stateful_metrics={"loss"})
    clock[0] = 1001.8
    bar.update(1, [("loss", 2.3017)])
    clock[0] = 1003.0
    bar.update(2, [("loss", 2.2929)])
    clock[0] += 0.01  # within the 0.05 s interval: not shown
    bar.update(3, [("loss", 2.2843)])
    clock[0] = 1012.0
    bar.update(8, [("loss", 2.2236)])
    first = "1/8 [==>...........................] - ETA: 12s - loss: 2.3017"
    second = "2/8 [======>.......................] - ETA: 7s - loss: 2.2929 "  # padded over the longer line
    final = "8/8 [==============================] - 12s 1s/step - loss: 2.2236"
    # the backspaces undo the previous line's width, its padding not counted (as tf.keras counts)
    assert terminal.getvalue() == ("\r" + first + "\b" * len(first) + "\r" + second
                                   + "\b" * len(second.rstrip()) + "\r" + final + "\n")


def test_non_interactive_output_starts_a_line_per_update(clock, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    bar = Progbar(2)
    clock[0] += 1
    bar.update(1, [("loss", 0.5)])
    clock[0] += 1
    bar.update(2, [("loss", 0.25)])
    assert out.getvalue() == ("\n1/2 [==============>...............] - ETA: 1s - loss: 0.5000"
                              "\n2/2 [==============================] - 2s 1s/step - loss: 0.3750\n")


def test_values_not_marked_stateful_are_averaged_and_small_values_use_exponents(clock, terminal):
    terminal = terminal()
    bar = Progbar(1000)
    clock[0] += 100
    bar.update(1, [("loss", 0.5), ("tiny", 0.00042)])
    clock[0] += 3900
    bar.update(2, [("loss", 0.25), ("tiny", 0.00042)])
    clock[0] += 1000
    bar.update(1000, [("loss", 0.1), ("tiny", 0.00042)])
    lines = render(terminal.getvalue())
    assert lines == ["1000/1000 [==============================] - 5000s 5s/step - loss: 0.1006 - tiny: 4.2000e-04  ",
                     ""]
    assert "ETA: 27:45:00" in terminal.getvalue() and "ETA: 1081:10:00" in terminal.getvalue()


def test_eta_in_minutes_and_durations():
    bar = Progbar(100, dynamic_display=True)
    assert bar._estimate_step_duration(0, bar._start) == 0
    from kcompiler.runtime.progbar import format_eta
    assert (format_eta(198.0), format_eta(59.9), format_eta(3725.0)) == ("3:18", "59s", "1:02:05")
    assert [format_duration(t, "step") for t in (0, 1.6, 0.0123, 0.0000456)] == [
        " 0s/step", " 2s/step", " 12ms/step", " 46us/step"]


def test_verbose_2_prints_one_line_when_done(clock, terminal):
    terminal = terminal()
    bar = Progbar(5, verbose=2, stateful_metrics={"loss", "accuracy"})
    for step in range(1, 5):
        clock[0] += 0.25
        bar.update(step, [("loss", 0.5), ("accuracy", 0.8)], finalize=False)
    assert terminal.getvalue() == ""
    clock[0] = 1001.2
    bar.update(5, [("loss", 0.4729), ("accuracy", 0.8462)], finalize=True)
    assert terminal.getvalue() == "5/5 - 1s - loss: 0.4729 - accuracy: 0.8462\n"


def small_model():
    backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_fit_and_evaluate_print_the_values_they_return(monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(Progbar, "clock", staticmethod(lambda: 1000.0 + next(ticks)))
    model = small_model()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20)
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    history = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.2, verbose=2)
    loss, accuracy = model.evaluate(x, y, batch_size=8, verbose=2)
    model.predict(x, batch_size=8, verbose=1)
    monkeypatch.undo()
    h = {k: v[-1] for k, v in history.history.items()}
    lines = render(out.getvalue())
    assert lines[:2] == ["Epoch 1/2", lines[1]] and lines[2] == "Epoch 2/2"
    assert lines[3] == (f"2/2 - 1s - loss: {h['loss']:.4f} - accuracy: {h['accuracy']:.4f} - val_loss: "
                        f"{h['val_loss']:.4f} - val_accuracy: {h['val_accuracy']:.4f}")
    assert lines[4] == f"3/3 - 1s - loss: {loss:.4f} - accuracy: {accuracy:.4f}"
    # predict, verbose=1: the clock reads 1 s more at each of 3 steps and at the end (after the first
    # step, 3 s for 2 steps)
    assert lines[5] == "3/3 [==============================] - 4s 2s/step"
    assert lines[6:] == [""]


def test_verbose_0_prints_nothing(capsys):
    model = small_model()
    x, y = np.zeros((4, 4), np.float32), np.zeros(4, np.int32)
    model.fit(x, y, epochs=2, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""
