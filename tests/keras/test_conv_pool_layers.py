"""Conv2D and the pooling layers against real Keras: forward on the fixtures' weights and
inputs, the fixtures' gradients through the autodiff pass, the seed's summary, configs
and error messages."""
import numpy as np
import pytest

from keras_fixtures import cases, indexed, load, make_layer, make_sequential
from kcompiler import keras
from kcompiler.errors import ShapeError, UnsupportedError
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend
from kcompiler.keras.tensor import SymbolicTensor
from kcompiler.passes.autodiff import gradients

CONV_POOL = {"Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D"}


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def built_layer(case):
    layer = make_layer(case["spec"])
    layer.build(case["x"].shape)
    layer.built = True
    weights = indexed(case, "w")
    if weights:
        layer.set_weights(weights)
    return layer


def traced_gradients(layer, case, call_kwargs=None):
    """d sum(layer(x) * r) / d(x, *layer.weights), by the autodiff pass and the references."""
    b = backend.new_trace_builder(name=layer.name)
    x = b.input("x", TensorType(case["x"].shape))
    y = layer(SymbolicTensor(b, x), **(call_kwargs or {}))
    r = b.input("r", TensorType(case["r"].shape))
    total = b.op("sum", b.op("mul", y.node, r), axes=None, keepdims=False)
    b.g.graph["outputs"] = gradients(b, total, [x] + [b.variable(w) for w in layer.weights])
    grads, _ = run_reference(b.g, {"x": case["x"], "r": case["r"]})
    return grads


def test_every_class_has_fixtures():
    found = {load("layers", n)["spec"]["class_name"] for n in cases("layers", CONV_POOL)}
    assert found == CONV_POOL


@pytest.mark.parametrize("name", cases("layers", CONV_POOL))
def test_layer_forward_matches_keras(name):
    case = load("layers", name)
    layer = built_layer(case)
    y = layer(case["x"], **case["spec"].get("call", {}))
    assert y.shape == case["y"].shape
    assert_close(y.numpy(), case["y"])


@pytest.mark.parametrize("name", cases("layers", CONV_POOL))
def test_layer_gradients_match_keras(name):
    case = load("layers", name)
    layer = built_layer(case)
    grads = traced_gradients(layer, case, case["spec"].get("call", {}))
    expected = [case["grad_x"]] + indexed(case, "grad_w")
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected):
        assert_close(got, want)


def summary_lines(model):
    lines = []
    model.summary(print_fn=lines.append)
    return [line.rstrip() for line in lines]


def test_seed_conv2d_summary():
    backend.clear_session()
    model = keras.Sequential()
    model.add(keras.layers.Conv2D(32, (3, 3), activation="relu", input_shape=(32, 32, 3)))
    model.add(keras.layers.MaxPooling2D((2, 2)))
    model.add(keras.layers.Conv2D(64, (3, 3), (2, 2), activation="relu"))
    model.add(keras.layers.MaxPooling2D((2, 2)))
    shapes = [(None, 30, 30, 32), (None, 15, 15, 32), (None, 7, 7, 64), (None, 3, 3, 64)]
    params = [896, 0, 18496, 0]
    assert [layer.count_params() for layer in model.layers] == params
    assert [layer.name for layer in model.layers] == ["conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1"]
    assert [w.shape for w in model.layers[0].weights] == [(3, 3, 3, 32), (32,)]
    assert [w.shape for w in model.layers[2].weights] == [(3, 3, 32, 64), (64,)]
    lines = summary_lines(model)
    assert lines[4:12] == [
        "conv2d (Conv2D)              (None, 30, 30, 32)        896",
        "_________________________________________________________________",
        "max_pooling2d (MaxPooling2D) (None, 15, 15, 32)        0",
        "_________________________________________________________________",
        "conv2d_1 (Conv2D)            (None, 7, 7, 64)          18496",
        "_________________________________________________________________",
        "max_pooling2d_1 (MaxPooling2 (None, 3, 3, 64)          0",
        "=================================================================",
    ]
    assert "Total params: 19,392" in lines
    shape = (None, 32, 32, 3)
    for layer, expected in zip(model.layers, shapes):
        shape = layer.compute_output_shape(shape)
        assert shape == expected
    x = np.zeros((2, 32, 32, 3), dtype=np.float32)
    assert model(x).shape == (2, 3, 3, 64)


def test_aliases_and_names():
    backend.clear_session()
    assert keras.layers.MaxPool2D is keras.layers.MaxPooling2D
    assert keras.layers.AvgPool2D is keras.layers.AveragePooling2D
    assert keras.layers.MaxPool2D().name == "max_pooling2d"
    assert keras.layers.AvgPool2D().name == "average_pooling2d"
    assert keras.layers.GlobalAveragePooling2D().name == "global_average_pooling2d"
    assert keras.layers.GlobalMaxPooling2D().name == "global_max_pooling2d"


def test_conv2d_config_and_int_arguments():
    backend.clear_session()
    layer = keras.layers.Conv2D(8, 3, strides=2, padding="SAME", activation="relu")
    config = layer.get_config()
    assert list(config)[:3] == ["name", "trainable", "dtype"]
    assert list(config)[3:] == ["filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                                "groups", "activation", "use_bias", "kernel_initializer", "bias_initializer",
                                "kernel_regularizer", "bias_regularizer", "activity_regularizer",
                                "kernel_constraint", "bias_constraint"]
    assert config["kernel_size"] == (3, 3) and config["strides"] == (2, 2) and config["padding"] == "same"
    assert config["dilation_rate"] == (1, 1) and config["data_format"] == "channels_last"
    assert config["kernel_initializer"]["class_name"] == "GlorotUniform"
    clone = keras.layers.Conv2D.from_config(config)
    assert clone.get_config() == config


def test_pooling_configs():
    config = keras.layers.MaxPooling2D(3).get_config()
    assert {k: config[k] for k in ("pool_size", "padding", "strides", "data_format")} == \
        {"pool_size": (3, 3), "padding": "valid", "strides": (3, 3), "data_format": "channels_last"}
    assert keras.layers.AveragePooling2D((2, 3), strides=1).get_config()["strides"] == (1, 1)
    config = keras.layers.GlobalAveragePooling2D(keepdims=True).get_config()
    assert config["keepdims"] is True and config["data_format"] == "channels_last"


def test_global_pooling_keepdims_and_max():
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(keras.layers.GlobalAveragePooling2D(keepdims=True)(x).numpy(),
                               x.mean(axis=(1, 2), keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(keras.layers.GlobalMaxPooling2D()(x).numpy(), x.max(axis=(1, 2)))


def test_conv2d_emits_primitives_only():
    backend.clear_session()
    inputs = keras.Input(shape=(6, 6, 2))
    layer = keras.layers.Conv2D(3, 3, activation="relu")
    out = layer(inputs)
    g = out.builder.g
    ops = [g.nodes[n]["op"] for n in g.nodes if g.nodes[n].get("layer") == "Conv2D 'conv2d'"]
    assert [op for op in ops if op not in ("variable",)] == ["conv2d", "bias_add", "relu"]
    assert tuple(out.shape) == (None, 4, 4, 3)


def test_conv2d_argument_errors():
    with pytest.raises(ValueError, match="Conv2D 'conv2d.*data_format must be 'channels_last' or 'channels_first'"):
        keras.layers.Conv2D(4, 3, data_format="NCHW")
    with pytest.raises(UnsupportedError, match="Conv2D .*groups=2"):
        keras.layers.Conv2D(4, 3, groups=2)
    with pytest.raises(ValueError, match="`strides > 1` not supported in conjunction with `dilation_rate > 1`"):
        keras.layers.Conv2D(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="kernel_size must be an integer or a tuple of 2 integers"):
        keras.layers.Conv2D(4, (3, 3, 3))
    with pytest.raises(ValueError, match="filters must be a positive integer"):
        keras.layers.Conv2D(0, 3)
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        keras.layers.MaxPooling2D(padding="causal")
    with pytest.raises(ValueError, match="MaxPooling2D .*data_format must be"):
        keras.layers.MaxPooling2D(data_format="channels_middle")


def test_input_shape_errors_name_the_layer():
    backend.clear_session()
    with pytest.raises(ShapeError, match=r"Conv2D 'conv2d' expects input of rank 4, got shape \(None, 28, 28\)"):
        keras.layers.Conv2D(4, 3)(keras.Input(shape=(28, 28)))
    layer = keras.layers.Conv2D(4, 3)
    layer(np.zeros((1, 5, 5, 3), dtype=np.float32))
    with pytest.raises(ShapeError, match=r"Conv2D 'conv2d_1' expects input last dimension 3, got 2"):
        layer(np.zeros((1, 5, 5, 2), dtype=np.float32))
    with pytest.raises(ShapeError, match=r"Conv2D 'conv2d_2'.*too small"):
        keras.layers.Conv2D(4, 3)(np.zeros((1, 2, 5, 3), dtype=np.float32))
    with pytest.raises(ShapeError, match=r"MaxPooling2D 'max_pooling2d' expects input of rank 4"):
        keras.layers.MaxPooling2D()(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ShapeError, match=r"GlobalAveragePooling2D .* expects input of rank 4"):
        keras.layers.GlobalAveragePooling2D()(np.zeros((4, 4, 3), dtype=np.float32))


@pytest.mark.parametrize("name", [n for n in cases("models") if "cnn" in n])
def test_cnn_model_matches_keras(name):
    """The seed's MNIST CNN (shrunk): forward and every gradient against Keras."""
    backend.clear_session()
    case = load("models", name)
    model = make_sequential(case["spec"])
    model.set_weights(indexed(case, "w"))
    assert_close(model(case["x"]).numpy(), case["y"])
    grads = traced_gradients(model, case)
    expected = [case["grad_x"]] + indexed(case, "grad_w")
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected):
        assert_close(got, want)
