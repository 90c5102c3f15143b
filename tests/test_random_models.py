"""Property test: small random models, compiled (fused) against the numpy reference interpreter,
for the forward pass and a training step."""
import numpy as np
from hypothesis import given, settings, strategies as st

import kcompiler
from kcompiler import keras
from kcompiler.keras import backend, layers
from kcompiler.runtime import executor

ACTIVATIONS = ["relu", "tanh", "sigmoid", "elu", "softplus", "linear", "gelu"]


@st.composite
def random_model(draw):
    backend.clear_session()
    keras.utils.set_random_seed(draw(st.integers(0, 1000)))
    image = draw(st.booleans())
    model = keras.Sequential()
    if image:
        size = draw(st.integers(6, 9))
        model.add(keras.Input((size, size, draw(st.integers(1, 3)))))
        for _ in range(draw(st.integers(1, 2))):
            model.add(layers.Conv2D(draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 3])),
                                    padding=draw(st.sampled_from(["valid", "same"])),
                                    activation=draw(st.sampled_from(ACTIVATIONS))))
        if draw(st.booleans()):
            model.add(layers.MaxPooling2D(2, padding="same"))
        model.add(layers.Flatten())
    else:
        model.add(keras.Input((draw(st.integers(1, 6)),)))
    for _ in range(draw(st.integers(1, 3))):
        model.add(layers.Dense(draw(st.integers(1, 7)), activation=draw(st.sampled_from(ACTIVATIONS))))
        if draw(st.booleans()):
            model.add(layers.BatchNormalization())
    model.add(layers.Dense(draw(st.integers(1, 4))))
    return model


def _reference(fn):
    executor.use_reference(True)
    try:
        return fn()
    finally:
        executor.use_reference(False)


@settings(max_examples=12, deadline=None)
@given(model=random_model(), batch=st.integers(1, 5), seed=st.integers(0, 100))
def test_random_model_forward_compiled_equals_reference(model, batch, seed):
    x = np.random.default_rng(seed).standard_normal((batch,) + model.input_shape[1:]).astype(np.float32)
    compiled = kcompiler.compile(model, batch_size=batch).predict(x)
    expected = _reference(lambda: model(x).numpy())
    np.testing.assert_allclose(compiled, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@settings(max_examples=8, deadline=None)
@given(model=random_model(), seed=st.integers(0, 100))
def test_random_model_training_step_compiled_equals_reference(model, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4,) + model.input_shape[1:]).astype(np.float32)
    y = rng.standard_normal((4,) + model.output_shape[1:]).astype(np.float32)
    weights = model.get_weights()
    results = {}
    for eager in (False, True):
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", run_eagerly=eager)
        program = kcompiler.compile(model, training=True, batch_size=4)
        results[eager] = (program.train_step(x, y)["loss"], [w.copy() for w in model.get_weights()])
    (loss_c, w_c), (loss_r, w_r) = results[False], results[True]
    np.testing.assert_allclose(loss_c, loss_r, rtol=1e-4, atol=1e-6)
    for a, b in zip(w_c, w_r):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))
