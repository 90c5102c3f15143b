"""fit / evaluate / predict on compiled programs: Keras 3's numbers (History, running means,
exact sample averages with a partial last batch, sample and class weights, validation split)."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.errors import ShapeError
from kcompiler.keras import backend
from keras_fixtures import indexed, load
from test_training_vs_keras import build


def small_model(seed=0, run_eagerly=False, dropout=0.0):
    backend.clear_session()
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4,)), keras.layers.Dense(5, activation="tanh")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    model = keras.Sequential(layers + [keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  run_eagerly=run_eagerly)
    return model


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def per_sample_loss(model, x, y):
    """Sparse crossentropy from logits of each sample, in float64 numpy."""
    logits = model.predict(x, verbose=0).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y]


@pytest.mark.parametrize("name", ["tiny_mlp_sgd_mse", "tiny_mlp_sgd_mse_mae"])
def test_fit_history_and_weights_match_keras(name):
    case = load("training", name)
    model = build(case)
    history = model.fit(case["x"], case["y"], batch_size=4, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], case["history_loss"], rtol=1e-3)
    if "history_mae" in case:
        np.testing.assert_allclose(history.history["mae"], case["history_mae"], rtol=1e-3)
    assert history.epoch == [0, 1] and model.history is history
    for got, expected in zip(model.get_weights(), indexed(case, "fit_w_final")):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_fit_is_train_steps_with_running_means_and_a_partial_last_batch():
    model, twin = small_model(), small_model()
    twin.set_weights(model.get_weights())
    x, y = data(10)
    batch_logs = []
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batch_logs.append((batch, dict(logs))))])
    program = kcompiler.compile(twin, training=True)
    expected_logs, epoch_means = [], []
    for _ in range(2):
        totals, seen = {"loss": 0.0, "accuracy": 0.0}, 0
        for step, start in enumerate(range(0, 10, 4)):  # batches of 4, 4 and 2
            values = program.train_step(x[start:start + 4], y[start:start + 4])
            size = len(x[start:start + 4])
            seen += size
            for k in totals:
                totals[k] += values[k] * size
            expected_logs.append((step, {k: v / seen for k, v in totals.items()}))
        epoch_means.append(expected_logs[-1][1])
    assert [b for b, _ in batch_logs] == [b for b, _ in expected_logs]
    for (_, got), (_, expected) in zip(batch_logs, expected_logs):
        assert list(got) == ["loss", "accuracy"]
        np.testing.assert_allclose([got["loss"], got["accuracy"]], [expected["loss"], expected["accuracy"]],
                                   rtol=1e-6)
    np.testing.assert_allclose(history.history["loss"], [m["loss"] for m in epoch_means], rtol=1e-6)
    np.testing.assert_allclose(history.history["accuracy"], [m["accuracy"] for m in epoch_means], rtol=1e-6)
    for got, expected in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_evaluate_averages_over_samples_exactly():
    model = small_model()
    x, y = data(11)
    losses = per_sample_loss(model, x, y)
    accuracy = np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y)
    loss, acc = model.evaluate(x, y, batch_size=4, verbose=0)  # batches of 4, 4 and 3
    np.testing.assert_allclose(loss, losses.mean(), rtol=1e-5)
    np.testing.assert_allclose(acc, accuracy, rtol=1e-6)
    # Keras 3: a batch's weighted loss is sum(w * l) / batch size, averaged over samples
    w = np.linspace(0.5, 2.0, 11).astype(np.float32)
    logs = model.evaluate(x, y, batch_size=4, sample_weight=w, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "accuracy"]
    np.testing.assert_allclose(logs["loss"], (w * losses).sum() / 11, rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], accuracy, rtol=1e-6)  # compile metrics are unweighted


def test_evaluate_runs_in_inference_mode():
    model = small_model(dropout=0.5)
    x, y = data(9)
    first = model.evaluate(x, y, batch_size=4, verbose=0)
    assert model.evaluate(x, y, batch_size=4, verbose=0) == first  # no dropout: deterministic
    np.testing.assert_allclose(first[0], per_sample_loss(model, x, y).mean(), rtol=1e-5)


def test_loss_only_models_return_a_scalar():
    case = load("training", "tiny_mlp_sgd_mse")
    model = build(case)
    result = model.evaluate(case["x"], case["y"], batch_size=16, verbose=0)
    assert isinstance(result, float)
    np.testing.assert_allclose(result, np.mean((model.predict(case["x"], verbose=0) - case["y"]) ** 2), rtol=1e-5)


def test_validation_split_takes_the_last_fraction_before_shuffling():
    x, y = data(10)
    model = small_model()
    keras.utils.set_random_seed(7)
    history = model.fit(x, y, batch_size=3, epochs=1, validation_split=0.2, verbose=0)
    twin = small_model()
    keras.utils.set_random_seed(7)
    twin.fit(x[:8], y[:8], batch_size=3, epochs=1, verbose=0)  # the same 8 samples, shuffled the same way
    for got, expected in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    val_loss, val_acc = model.evaluate(x[8:], y[8:], verbose=0)
    np.testing.assert_allclose(history.history["val_loss"], [val_loss], rtol=1e-6)
    np.testing.assert_allclose(history.history["val_accuracy"], [val_acc], rtol=1e-6)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]


def test_validation_data_and_validation_freq():
    x, y = data(12)
    model = small_model()
    history = model.fit(x, y, batch_size=4, epochs=3, validation_data=(x[:5], y[:5]), validation_freq=2,
                        verbose=0)
    assert len(history.history["loss"]) == 3 and len(history.history["val_loss"]) == 1  # only after epoch 2
    np.testing.assert_allclose(history.history["val_loss"][0], per_sample_loss(model, x[:5], y[:5]).mean(),
                               rtol=0.5)  # evaluated one epoch before the end: close, not equal


def test_shuffle_is_seeded_by_set_random_seed():
    x, y = data(12)
    runs = []
    for shuffle in (True, True, False):
        model = small_model()
        keras.utils.set_random_seed(3)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=shuffle, verbose=0)
        runs.append(model.get_weights()[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_sample_weight_and_class_weight():
    x, y = data(8)
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0}
    weights = np.array([class_weight[c] for c in y], np.float32)
    by_class, by_sample, twin = small_model(), small_model(), small_model()
    twin.set_weights(by_class.get_weights())
    h1 = by_class.fit(x, y, batch_size=3, epochs=1, shuffle=False, class_weight=class_weight, verbose=0)
    h2 = by_sample.fit(x, y, batch_size=3, epochs=1, shuffle=False, sample_weight=weights, verbose=0)
    program = kcompiler.compile(twin, training=True)
    for start in range(0, 8, 3):
        program.train_step(x[start:start + 3], y[start:start + 3], weights[start:start + 3])
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)
    for a, b, c in zip(by_class.get_weights(), by_sample.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b, c, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="class_weight"):
        by_class.fit(x, y, class_weight=class_weight, sample_weight=weights, verbose=0)


def test_steps_per_epoch_and_initial_epoch():
    x, y = data(10)
    model = small_model()
    history = model.fit(x, y, batch_size=2, epochs=3, initial_epoch=1, steps_per_epoch=2, shuffle=False, verbose=0)
    assert history.epoch == [1, 2]
    assert int(model.optimizer.iterations.numpy()) == 4


def test_predict_concatenates_batches():
    model = small_model()
    x, _ = data(10)
    np.testing.assert_allclose(model.predict(x, batch_size=4, verbose=0), model(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict_on_batch(x[:3]), model(x[:3]).numpy(), rtol=1e-5, atol=1e-6)


def test_on_batch_methods():
    model, twin = small_model(), small_model()
    twin.set_weights(model.get_weights())
    x, y = data(5)
    loss, acc = model.test_on_batch(x, y)
    np.testing.assert_allclose(loss, per_sample_loss(model, x, y).mean(), rtol=1e-5)
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)  # the loss before this step's update
    expected = kcompiler.compile(twin, training=True).train_step(x, y)
    np.testing.assert_allclose(list(logs.values()), list(expected.values()), rtol=1e-6)


def test_run_eagerly_uses_the_reference_interpreter_and_agrees():
    x, y = data(7)
    compiled, eager = small_model(), small_model(run_eagerly=True)
    h1 = compiled.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0)
    h2 = eager.fit(x, y, batch_size=3, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-5)
    for a, b in zip(compiled.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(eager.evaluate(x, y, verbose=0), compiled.evaluate(x, y, verbose=0), rtol=1e-5)
    np.testing.assert_allclose(eager.predict(x, verbose=0), compiled.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_multi_input_functional_model():
    backend.clear_session()
    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,)), keras.Input((2,))
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([keras.layers.Dense(4)(a), b]))
    model = keras.Model([a, b], out)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    rng = np.random.default_rng(1)
    xa, xb, y = rng.random((9, 3)), rng.random((9, 2)), rng.random((9, 1))
    history = model.fit([xa, xb], y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    np.testing.assert_allclose(model.evaluate([xa, xb], y, verbose=0),
                               np.mean((model.predict([xa, xb], verbose=0) - y) ** 2), rtol=1e-5)


def test_compiling_again_makes_new_programs():
    model = small_model()
    x, y = data(6)
    model.fit(x, y, epochs=1, verbose=0)
    first = model._runtime_steps[1]
    model.fit(x, y, epochs=1, verbose=0)
    assert model._runtime_steps[1] is first
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert model._runtime_steps[1] is not first and "accuracy" not in model.history.history


def test_errors_are_clear():
    backend.clear_session()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x, y = data(4)
    with pytest.raises(ValueError, match="compile"):
        model.fit(x, y)
    model.compile("sgd", "mse")
    with pytest.raises(ShapeError, match=r"expects input '\w+' of shape \(None, 4\), got \(4, 5\)"):
        model.fit(np.zeros((4, 5)), np.zeros((4, 2)), verbose=0)
    with pytest.raises(ShapeError, match="3 labels for 4 input samples"):
        model.fit(x, np.zeros((3, 2)), verbose=0)
    with pytest.raises(ValueError, match="not sufficient to split"):
        model.fit(x[:1], np.zeros((1, 2)), validation_split=0.5, verbose=0)


def test_the_seed_mnist_cnn_trains_with_validation_split():
    """The demo's path: fit(validation_split=0.1) and evaluate on the seed's MNIST CNN."""
    from examples.seed_models import mnist_cnn
    backend.clear_session()
    keras.utils.set_random_seed(0)
    model = mnist_cnn()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 40)
    history = model.fit(x, y, batch_size=16, epochs=2, validation_split=0.1, verbose=0)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(np.isfinite(v).all() for v in history.history.values())
    loss, accuracy = model.evaluate(x[:16], y[:16], batch_size=16, verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0


def test_fit_on_variable_length_sequences_specialises_the_sequence_length():
    from kcompiler import keras
    from kcompiler.keras import layers
    rng = np.random.default_rng(0)
    model = keras.Sequential([layers.Embedding(50, 8, mask_zero=True), layers.LSTM(4), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    for length in (5, 7):  # the traced time dimension is None; each length gets its own program
        x = rng.integers(1, 50, (6, length))
        history = model.fit(x, rng.standard_normal((6, 1)).astype(np.float32), batch_size=3, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert model.predict(x, verbose=0).shape == (6, 1)
        assert len(model.evaluate(x, np.zeros((6, 1), np.float32), verbose=0, return_dict=True)) == 1


def test_stateful_metrics_accumulate_over_the_epoch_inside_the_compiled_step():
    from kcompiler import keras
    from kcompiler.keras import backend
    backend.clear_session()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (rng.random((40, 1)) > 0.4).astype(np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    precision, recall = keras.metrics.Precision(), keras.metrics.Recall()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy", metrics=[precision, recall])
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    predicted = model.predict(x, verbose=0) > 0.5  # the weights never change (learning rate 0)
    tp = float(np.sum(predicted & (y > 0.5)))
    expected_precision = tp / max(float(predicted.sum()), 1e-7)
    expected_recall = tp / float((y > 0.5).sum())
    for epoch in range(2):  # over each whole epoch, not a mean of batch values; reset between epochs
        assert history.history["precision"][epoch] == pytest.approx(expected_precision, rel=1e-5)
        assert history.history["recall"][epoch] == pytest.approx(expected_recall, rel=1e-5)
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs["precision"] == pytest.approx(expected_precision, rel=1e-5)


def test_training_on_outputs_of_higher_rank_weights_each_sample_over_its_elements():
    """mse on an image output (batch, h, w, c): the batch's sample weights (ones when fit is given
    none) broadcast over each sample's elements; the loss is the mean over every element, as Keras."""
    from examples.seed_models import cifar_convs
    rng = np.random.default_rng(3)
    model = cifar_convs()
    model.compile(optimizer="sgd", loss="mse")
    x = rng.random((4, 32, 32, 3), dtype=np.float32)
    y = rng.random(model.predict(x, verbose=0).shape, dtype=np.float32)
    expected = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
    np.testing.assert_allclose(model.train_on_batch(x, y), expected, rtol=1e-5)
    weights = np.array([1.0, 0.0, 2.0, 1.0], np.float32)
    per_sample = np.mean((model.predict(x, verbose=0) - y) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(model.test_on_batch(x, y, sample_weight=weights),
                               float(np.sum(per_sample * weights) / 4), rtol=1e-5)
