"""Compiled train_step trajectories equal Keras 3's: the loss of each of 20 steps and the
weights after them, for the same initial weights and data (fixtures from real Keras)."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.keras import backend
from keras_fixtures import cases, indexed, load, make_sequential


def make_optimizer(spec):
    kwargs = dict(spec.get("kwargs", {}))
    lr = kwargs.get("learning_rate")
    if isinstance(lr, dict):
        kwargs["learning_rate"] = getattr(keras.optimizers.schedules, lr["class_name"])(**lr["kwargs"])
    return getattr(keras.optimizers, spec["class_name"])(**kwargs)


def make_loss(spec):
    if isinstance(spec, str):
        return spec
    return getattr(keras.losses, spec["class_name"])(**spec.get("kwargs", {}))


def build(case):
    backend.clear_session()
    spec = case["spec"]
    model = make_sequential(spec["model"])
    model.set_weights(indexed(case, "w_init"))
    compile_spec = spec["compile"]
    model.compile(optimizer=make_optimizer(compile_spec["optimizer"]), loss=make_loss(compile_spec["loss"]),
                  metrics=compile_spec.get("metrics"))
    return model


@pytest.mark.parametrize("name", cases("training"))
def test_twenty_compiled_steps_match_keras(name, target):
    case = load("training", name)
    model = build(case)
    bs = case["spec"]["batch_size"]
    program = kcompiler.compile(model, training=True, batch_size=bs, target=target)
    x, y = case["x"], case["y"]
    losses, metrics = [], []
    for step in range(20):
        logs = program.train_step(x[step * bs:(step + 1) * bs], y[step * bs:(step + 1) * bs])
        losses.append(logs["loss"])
        metrics.append([v for k, v in logs.items() if k != "loss"])
    np.testing.assert_allclose(losses, case["losses"], rtol=1e-3, atol=1e-5)
    assert abs(case["losses"][-1] - case["losses"][0]) > 1e-2  # the fixture really moves
    for got, expected in zip(model.get_weights(), indexed(case, "w_final")):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    for key in [k for k in case if k.startswith("metric_")]:
        got = [m[0] for m in metrics]
        np.testing.assert_allclose(got, case[key], rtol=1e-3, atol=1e-5)


def test_the_whole_step_is_one_native_call(monkeypatch):
    case = load("training", "tiny_mlp_sgd_mse")
    model = build(case)
    program = kcompiler.compile(model, training=True, batch_size=4)
    compiled = program._compiled
    calls = []
    entry = compiled._entry
    monkeypatch.setattr(compiled, "_entry", lambda *a: calls.append(a) or entry(*a))
    program.train_step(case["x"][:4], case["y"][:4])
    assert len(calls) == 1
    ops = [k.op for k in program.kernels] + [op for k in program.kernels for op in k.fused]
    assert "matmul" in ops and any(k.fused for k in program.kernels)
    assert all("define" in k.source for k in program.kernels)
    # forward, backward (transposed products) and the SGD update are all generated kernels
    sources = "\n".join(k.source for k in program.kernels)
    assert "kc_sgemm" in sources and "i32 1" in sources
    assert list(program.stages) == ["traced", "shaped", "differentiated", "fused", "planned", "scheduled"]


def test_train_step_without_a_loss_is_a_clear_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(kcompiler.errors.KCompilerError, match="not compiled with a loss"):
        kcompiler.compile(model, training=True, batch_size=2)


def test_partial_last_batch_is_computed_exactly():
    backend.clear_session()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh")])
    program = kcompiler.compile(model, batch_size=4)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    np.testing.assert_allclose(program.predict(x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_run_eagerly_trains_on_the_reference_interpreter_with_the_same_numbers():
    case = load("training", "mlp_adam_cce")
    model = build(case)
    model.compile(optimizer=make_optimizer(case["spec"]["compile"]["optimizer"]),
                  loss=make_loss(case["spec"]["compile"]["loss"]), run_eagerly=True)
    program = kcompiler.compile(model, training=True, batch_size=4)
    assert program.kernels == []  # nothing generated: the interpreter runs the graph
    losses = [program.train_step(case["x"][i * 4:(i + 1) * 4], case["y"][i * 4:(i + 1) * 4])["loss"]
              for i in range(20)]
    np.testing.assert_allclose(losses, case["losses"], rtol=1e-3, atol=1e-5)


def test_changing_the_learning_rate_takes_effect_without_recompiling():
    backend.clear_session()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    optimizer = keras.optimizers.SGD(0.1)
    model.compile(optimizer=optimizer, loss="mse")
    program = kcompiler.compile(model, training=True, batch_size=2)
    x, y = np.ones((2, 3), np.float32), np.ones((2, 1), np.float32)
    program.train_step(x, y)
    before = model.get_weights()[0].copy()
    optimizer.learning_rate = 0.0
    program.train_step(x, y)
    np.testing.assert_array_equal(model.get_weights()[0], before)
    optimizer.learning_rate = 0.1
    program.train_step(x, y)
    assert not np.array_equal(model.get_weights()[0], before)
    assert len(program._specialized) == 1  # one compiled step served all three
