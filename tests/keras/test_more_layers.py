"""The layers of issue 10's first batch against real Keras 3 (tests/fixtures/keras/layers/, the
cases that store Keras's config): forward on generated kernels, output masks, configs equal to
Keras's; then what a fixture cannot hold: training-mode noise (statistics, reproducibility,
gradients that see the same noise), Lambda tracing and safe mode, Normalization.adapt on
batches, traced models with symbolic batch and time, errors. (Gradients of every case:
test_gradients_vs_keras.py; the reference interpreter: test_compiled_vs_keras.py.)"""
import json

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.errors import ConfigError, ShapeError, UnsupportedError
from kcompiler.keras import backend, ops
from kcompiler.keras.serialization import safe_mode_scope
from keras_fixtures import cases, indexed, layer_case, load
from tests.keras.test_configs import MODELS, TEXT_FIXTURES, _comparable

L = keras.layers
BATCH_A = sorted(n for n in cases("layers") if "config" in load("layers", n))
CLASSES = {"Softmax", "ReLU", "LeakyReLU", "PReLU", "ELU", "RepeatVector", "Permute", "ZeroPadding2D", "Cropping2D",
           "UpSampling2D", "Masking", "Identity", "Dot", "Rescaling", "Normalization", "GaussianNoise",
           "GaussianDropout", "SpatialDropout1D", "SpatialDropout2D", "MaxPooling1D", "AveragePooling1D",
           "GlobalMaxPooling1D", "GlobalAveragePooling1D", "LayerNormalization", "GroupNormalization",
           "TimeDistributed", "Conv1D", "Conv2DTranspose"}


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_every_class_has_fixtures():
    assert {load("layers", n)["spec"]["class_name"] for n in BATCH_A} == CLASSES


@pytest.mark.parametrize("name", BATCH_A)
def test_forward_on_generated_kernels_matches_keras(name):
    case = load("layers", name)
    layer, xs, kwargs = layer_case(case)
    y = layer(xs if len(xs) > 1 else xs[0], **kwargs)
    assert y.shape == case["y"].shape
    assert_close(y.numpy(), case["y"])
    assert (getattr(y, "_keras_mask", None) is None) == ("y_mask" not in case)
    if "y_mask" in case:
        np.testing.assert_array_equal(y._keras_mask.numpy(), case["y_mask"])


def _without_names(config):
    """The documented differences taken out (test_configs._comparable), and the names."""
    config = _comparable(json.loads(json.dumps(config)))
    config.pop("name")
    if config.get("layer"):  # a wrapped layer: Keras also writes the build_config it had
        config["layer"]["config"].pop("name")
        config["layer"].pop("build_config", None)
    return config


@pytest.mark.parametrize("name", BATCH_A)
def test_config_equals_keras(name):
    case = load("layers", name)
    layer, _, _ = layer_case(case)
    keras_config, ours = _without_names(json.loads(str(case["config"]))), _without_names(layer.get_config())
    assert ours == keras_config
    # and Keras's config builds the same layer here
    rebuilt = keras.saving.deserialize_keras_object({"module": "keras.layers", "class_name": case["spec"]["class_name"],
                                                     "config": json.loads(str(case["config"]))})
    assert _without_names(rebuilt.get_config()) == ours


# ---- training-mode noise -------------------------------------------------------------------

def _train_call(layer, x):
    return layer(x, training=True).numpy()


def test_gaussian_noise_in_training_adds_normal_noise_of_stddev_and_its_gradient_is_one():
    backend.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((200, 100)).astype(np.float32)
    layer = L.GaussianNoise(0.3, seed=5)
    first, second = _train_call(layer, x), _train_call(layer, x)
    noise = (first - x).astype(np.float64)
    assert abs(noise.mean()) < 0.005 and abs(noise.std() - 0.3) < 0.005
    assert not np.allclose(first, second)                                 # a new draw per call
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)     # identity outside training
    xt = ops.convert_to_tensor(x[:3])
    with kcompiler.GradientTape() as tape:
        tape.watch(xt)
        total = ops.sum(layer(xt, training=True))
    np.testing.assert_array_equal(tape.gradient(total, xt).numpy(), np.ones((3, 100), np.float32))


def test_gaussian_dropout_multiplies_by_one_plus_noise_and_the_gradient_sees_the_same_noise():
    x = np.full((300, 100), 2.0, np.float32)
    layer = L.GaussianDropout(0.2, seed=9)
    factor = (_train_call(layer, x) / 2.0).astype(np.float64)
    assert abs(factor.mean() - 1) < 0.005 and abs(factor.std() - np.sqrt(0.2 / 0.8)) < 0.005
    # a compiled training step: the backward pass regenerates the forward's noise from (seed, step, index)
    model = keras.Sequential([keras.Input((6,)), L.GaussianDropout(0.4, seed=3), L.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    program = kcompiler.compile(model, training=True, batch_size=4)
    ones = np.ones((4, 6), np.float32)
    losses = [program.train_step(ones, np.zeros((4, 2), np.float32))["loss"] for _ in range(3)]
    assert len(set(losses)) == 3     # a new draw per step


@pytest.mark.parametrize("cls,shape", [(L.SpatialDropout1D, (8, 50, 16)), (L.SpatialDropout2D, (8, 6, 7, 16))])
def test_spatial_dropout_drops_whole_channels(cls, shape):
    x = np.random.default_rng(1).uniform(1, 2, shape).astype(np.float32)
    layer = cls(0.25, seed=4)
    y = _train_call(layer, x)
    ratio = (y / x).reshape(shape[0], -1, shape[-1])
    per_channel = ratio[:, :1, :]
    np.testing.assert_allclose(ratio, np.broadcast_to(per_channel, ratio.shape), rtol=1e-6)  # one draw per channel
    values = np.unique(per_channel)
    assert np.all(np.isclose(values, 0.0) | np.isclose(values, 1 / 0.75, rtol=1e-5)), values
    dropped = (per_channel == 0).mean()
    assert 0.1 < dropped < 0.4
    xt = ops.convert_to_tensor(x)
    with kcompiler.GradientTape() as tape:
        tape.watch(xt)
        y2 = layer(xt, training=True)
        total = ops.sum(y2)
    grad = tape.gradient(total, xt).numpy()
    np.testing.assert_allclose(grad, (y2.numpy() / x), rtol=1e-5)     # the gradient is the same mask


def test_noise_layers_are_reproducible_for_a_seed():
    x = np.ones((4, 5), np.float32)

    def run():
        model = keras.Sequential([keras.Input((5,)), L.GaussianNoise(0.5, seed=1), L.Dense(2)])
        model.layers[1].set_weights([np.ones((5, 2), np.float32), np.zeros(2, np.float32)])
        model.compile(optimizer="sgd", loss="mse")
        program = kcompiler.compile(model, training=True, batch_size=4)
        return [program.train_step(x, np.zeros((4, 2), np.float32))["loss"] for _ in range(3)]
    assert run() == run()


# ---- Lambda ------------------------------------------------------------------------------------

def test_lambda_traces_keras_ops_and_passes_mask_and_training():
    seen = {}

    def fn(x, mask=None, training=None, scale=1.0):
        seen.update(mask=mask is not None, training=training)
        return ops.tanh(x) * scale

    layer = L.Lambda(fn, arguments={"scale": 3.0})
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(layer(x).numpy(), np.tanh(x) * 3, rtol=1e-5)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2)(L.Lambda(lambda t: t * 2.0 + 1.0)(inputs)))
    assert model.predict(x, verbose=0).shape == (3, 2)
    assert seen == {"mask": False, "training": False}


def test_lambda_configs_refuse_python_code_in_safe_mode():
    model = keras.Sequential([keras.Input((3,)), L.Lambda(lambda t: t * 2.0), L.Dense(1)])
    text = model.to_json()
    with pytest.raises(ConfigError, match="Requested the deserialization of a `Lambda` layer"):
        keras.models.model_from_json(text)
    with safe_mode_scope(False):
        rebuilt = keras.models.model_from_json(text)
    rebuilt.set_weights(model.get_weights())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    named = keras.Sequential([keras.Input((3,)), L.Lambda(keras.activations.relu)])
    assert isinstance(keras.models.model_from_json(named.to_json()).layers[0], L.Lambda)  # a name is no code


# ---- Normalization.adapt, models with symbolic sizes, errors -------------------------------------

def test_normalization_adapt_matches_keras_weights():
    for name in ("normalization_adapt", "normalization_adapt_batches"):
        case = load("layers", name)
        layer, _, _ = layer_case(case)
        for got, want in zip(layer.get_weights(), indexed(case, "w_adapted")):
            assert_close(got, want)


def test_layers_trace_with_symbolic_batch_and_time_and_compile():
    backend.clear_session()
    ids = keras.Input((None,), dtype="int32")
    h = L.Embedding(30, 8)(ids)
    h = L.Conv1D(6, 3, padding="causal", activation="relu")(h)
    h = L.LayerNormalization()(h)
    h = L.Masking()(h)
    h = L.GlobalAveragePooling1D()(h)
    out = L.Dense(2)(L.RepeatVector(1)(h))
    model = keras.Model(ids, out)
    x = np.random.default_rng(0).integers(0, 30, (3, 7)).astype(np.int32)
    y = model.predict(x, verbose=0)
    assert y.shape == (3, 1, 2) and np.isfinite(y).all()
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, np.zeros((3, 1, 2), np.float32), epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_layer_norm_is_one_kernel_each_way_in_a_training_step():
    model = keras.Sequential([keras.Input((5, 8)), L.LayerNormalization()])
    model.compile(optimizer="sgd", loss="mse")
    program = kcompiler.compile(model, training=True, batch_size=2)
    ops_run = [program.graph.nodes[n]["op"] for n in program.graph.nodes]
    assert ops_run.count("layer_norm") == 1 and ops_run.count("layer_norm_grad") == 1
    assert not {"sqrt", "rsqrt"} & set(ops_run)   # no statistics composed of smaller ops


def test_errors_name_the_layer():
    with pytest.raises(ValueError, match="Number of groups \\(3\\) must be a multiple"):
        L.GroupNormalization(groups=3)(keras.Input((4, 4)))
    with pytest.raises(ValueError, match="`output_padding` must be strictly less than `strides`"):
        L.Conv2DTranspose(2, 3, strides=2, output_padding=2)
    with pytest.raises(ValueError, match="Values in `cropping` argument should be smaller"):
        L.Cropping2D(2)(keras.Input((4, 5, 1)))
    with pytest.raises(UnsupportedError, match="interpolation='bicubic' is not supported"):
        L.UpSampling2D(interpolation="bicubic")
    with pytest.raises(ValueError, match="softmax.*the `mask` must be broadcastable"):
        L.Softmax()(np.ones((2, 3), np.float32), mask=np.ones((2, 2), bool))
    with pytest.raises(ShapeError, match="time_distributed.*time and feature sizes"):
        L.TimeDistributed(L.Dense(2))(keras.Input((None, 3)))
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same' or 'causal'"):
        L.Conv1D(2, 3, padding="full")


@pytest.mark.parametrize("name", ["layers_sequence", "layers_image"])
def test_summary_in_the_seed_format(name):
    """The tf.keras 2.4 table (the seed's layout) rendered from tf_keras's model of the same source."""
    backend.clear_session()
    lines = []
    MODELS[f"new_{name}"]().summary(print_fn=lines.append)
    expected = (TEXT_FIXTURES / f"summary_{name}.txt").read_text().splitlines()
    assert [line.rstrip() for line in lines] == [line.rstrip() for line in expected]


@pytest.mark.parametrize("version", ["keras2", "keras3"])
def test_functional_json_of_both_kerases_rebuilds_the_model(version):
    backend.clear_session()
    loaded = keras.models.model_from_json((TEXT_FIXTURES / f"json_{version}_layers_image.json").read_text())
    backend.clear_session()
    ours = MODELS["new_layers_image"]()
    # (Keras 3 names the input input_layer, tf.keras 2 and we input_1: configs.py documents it)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in ours.layers]
    assert [layer.name for layer in loaded.layers][1:] == [layer.name for layer in ours.layers][1:]
    assert [w.shape for w in loaded.weights] == [w.shape for w in ours.weights]
    assert [layer.get_config() for layer in loaded.layers][1:] == [layer.get_config() for layer in ours.layers][1:]

