"""Gradients of every layer, computed with kcompiler.GradientTape on generated kernels,
equal Keras's (fixtures: d sum(y * r) / d inputs and / d each weight)."""
import numpy as np
import pytest

import kcompiler
from kcompiler.keras import ops
from keras_fixtures import cases, indexed, layer_case, load, make_sequential


def assert_close(got, expected, what):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())),
                               err_msg=what)


def _objective(outputs, case):
    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    rs = indexed(case, "r") or [case["r"]]
    total = None
    for o, r in zip(outs, rs):
        term = ops.sum(o * r)
        total = term if total is None else total + term
    return total


def _check(case, model_or_layer, inputs, call_kwargs):
    xs = [ops.convert_to_tensor(x) for x in inputs]
    weights = model_or_layer.weights
    with kcompiler.GradientTape() as tape:
        for x in xs:
            if x.dtype.startswith("float"):
                tape.watch(x)
        y = model_or_layer(xs if len(xs) > 1 else xs[0], **call_kwargs)
        loss = _objective(y, case)
    float_xs = [x for x in xs if x.dtype.startswith("float")]
    grads = tape.gradient(loss, float_xs + weights)
    expected_x = indexed(case, "grad_x") or ([case["grad_x"]] if "grad_x" in case else [])
    for g, e in zip(grads[:len(float_xs)], expected_x):
        assert_close(g.numpy(), e, "grad x")
    for i, (w, g, e) in enumerate(zip(weights, grads[len(float_xs):], indexed(case, "grad_w"))):
        if not w.trainable:  # the fixtures store zeros for non-trainable weights
            continue
        assert_close(np.zeros_like(e) if g is None else g.numpy(), e, f"grad w_{i}")


@pytest.mark.parametrize("name", cases("layers"))
def test_layer_gradients_match_keras(name):
    case = load("layers", name)
    if "grad_w_0" not in case and "grad_x" not in case and "grad_x_0" not in case:
        pytest.skip("no gradient in this fixture")
    layer, xs, kwargs = layer_case(case)
    _check(case, layer, xs, kwargs)


@pytest.mark.parametrize("name", cases("models"))
def test_model_gradients_match_keras(name):
    case = load("models", name)
    model = make_sequential(case["spec"])
    model.set_weights(indexed(case, "w"))
    _check(case, model, [case["x"]], {})


def test_minimize_with_a_tape_runs_a_compiled_update():
    from kcompiler import keras
    var = keras.Variable(np.array([1.0, -2.0], np.float32))
    opt = keras.optimizers.SGD(learning_rate=0.5)
    with kcompiler.GradientTape() as tape:
        loss = ops.sum(var * var)
    opt.minimize(loss, [var], tape=tape)
    np.testing.assert_allclose(var.numpy(), [0.0, 0.0], atol=1e-7)


def test_a_non_persistent_tape_gives_gradients_once():
    x = ops.convert_to_tensor(np.ones(3, np.float32))
    with kcompiler.GradientTape() as tape:
        tape.watch(x)
        y = ops.sum(x * x)
    assert tape.gradient(y, x).numpy().tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match="only be used to compute one set"):
        tape.gradient(y, x)


def test_gradient_cache_tells_apart_recordings_with_different_wiring():
    x = ops.convert_to_tensor(np.array([1.0, 2.0], np.float32))
    results = []
    for use_second in (False, True):
        with kcompiler.GradientTape() as tape:
            tape.watch(x)
            a, b = x * 3.0, x * 5.0
            picked = b if use_second else a
            y = ops.sum(picked * picked)
        results.append(tape.gradient(y, x).numpy())
    np.testing.assert_allclose(results[0], 18.0 * np.array([1, 2]))   # d sum(9x^2)
    np.testing.assert_allclose(results[1], 50.0 * np.array([1, 2]))   # d sum(25x^2)
