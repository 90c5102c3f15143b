"""The same Keras fixtures on both engines: the numpy reference interpreter (the oracle, and
what run_eagerly=True uses) and generated kernels. Loss gradients through GradientTape run
compiled; custom losses/metrics and dropout train compiled and reproducibly."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.keras import backend, losses, ops
from kcompiler.runtime import executor
from keras_fixtures import cases, indexed, layer_case, load, make_sequential


def assert_close(got, expected, rtol=1e-4):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.fixture
def reference_engine():
    executor.use_reference(True)
    yield
    executor.use_reference(False)


@pytest.mark.parametrize("name", cases("layers"))
def test_reference_interpreter_layer_outputs_match_keras(name, reference_engine):
    case = load("layers", name)
    layer, xs, kwargs = layer_case(case)
    y = layer(xs if len(xs) > 1 else xs[0], **kwargs)
    outs = y if isinstance(y, (list, tuple)) else [y]
    for got, expected in zip(outs, indexed(case, "y") or [case["y"]]):
        assert_close(got.numpy(), expected)
    for var, after in zip(layer.weights, indexed(case, "w_after")):
        assert_close(var.numpy(), after)


@pytest.mark.parametrize("name", cases("models"))
def test_reference_interpreter_model_outputs_match_keras(name, reference_engine):
    case = load("models", name)
    model = make_sequential(case["spec"])
    model.set_weights(indexed(case, "w"))
    assert_close(model(case["x"]).numpy(), case["y"])


@pytest.mark.parametrize("name", cases("losses"))
def test_compiled_loss_gradient_through_gradient_tape(name):
    case = load("losses", name)
    loss_obj = getattr(losses, case["spec"]["class_name"])(**case["spec"].get("kwargs", {}))
    y_pred = ops.convert_to_tensor(case["y_pred"])
    with kcompiler.GradientTape() as tape:
        tape.watch(y_pred)
        args = [case["y_true"], y_pred] + ([case["sample_weight"]] if "sample_weight" in case else [])
        total = ops.sum(loss_obj(*args))
    assert_close(tape.gradient(total, y_pred).numpy(), case["grad"], rtol=1e-4)


def _mlp(seed):
    backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.5, seed=3), keras.layers.Dense(3)])
    return model


def test_custom_loss_and_metric_functions_train_like_builtins():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)

    def my_mse(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred), axis=-1)

    def my_mae(y_true, y_pred):
        return ops.mean(ops.abs(y_true - y_pred), axis=-1)

    runs = []
    for loss, metric in ((my_mse, my_mae), ("mse", "mae")):
        model = _mlp(1)
        model.layers[1].rate = 0.0  # no dropout: the two runs must agree exactly
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=[metric])
        program = kcompiler.compile(model, training=True, batch_size=8)
        runs.append([program.train_step(x, y) for _ in range(5)])
    for custom, builtin in zip(*runs):
        assert custom["loss"] == pytest.approx(builtin["loss"], rel=1e-6)
        assert custom["my_mae"] == pytest.approx(builtin["mae"], rel=1e-6)


def test_dropout_training_is_reproducible_for_a_seed_and_differs_per_step():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    trajectories = []
    for _ in range(2):
        model = _mlp(7)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        program = kcompiler.compile(model, training=True, batch_size=8)
        trajectories.append([program.train_step(x, y)["loss"] for _ in range(4)])
    assert trajectories[0] == trajectories[1]
    without = _mlp(7)
    without.layers[1].rate = 0.0
    without.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    plain = kcompiler.compile(without, training=True, batch_size=8).train_step(x, y)["loss"]
    assert plain != trajectories[0][0]  # the mask really applies in training
