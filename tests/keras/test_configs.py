"""Layer and model configs: get_config/from_config, to_json/to_yaml, model_from_json/yaml/config.

A model rebuilt from its config must have the same architecture (same summary text,
layer names and weight shapes), fresh weights and no optimizer, as the seed's
``model_from_json`` example shows. Configs written by real Keras (tf.keras 2 and Keras 3,
in tests/fixtures/keras/text/) must load, and our to_json must have Keras 3's structure.
"""
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from kcompiler import keras
from kcompiler.errors import ConfigError
from kcompiler.keras import backend

L = keras.layers
TEXT_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras" / "text"


def summary_text(model):
    lines = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def weight_shapes(model):
    return [(w.path, tuple(w.shape)) for w in model.weights]


# ---- the models of the seed (tests/fixtures/keras/text/models.md) -------------------------

def dense3():
    return keras.Sequential([
        L.Dense(5, activation="relu", name="layer1", input_shape=(4,)),
        L.Dense(3, activation="relu", name="layer2"),
        L.Dense(1, name="layer3"),
    ])


def dense_16_4_1():
    return keras.models.Sequential([L.Dense(16, activation="relu", input_shape=(16,)),
                                    L.Dense(4, activation="relu"), L.Dense(1)])


def mnist_cnn():
    model = keras.models.Sequential()
    model.add(L.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)))
    model.add(L.MaxPooling2D((2, 2)))
    model.add(L.Conv2D(64, (3, 3), activation="relu"))
    model.add(L.MaxPooling2D((2, 2)))
    model.add(L.Conv2D(64, (3, 3), activation="relu"))
    model.add(L.Flatten())
    model.add(L.Dense(64, activation="relu"))
    model.add(L.Dense(10))
    return model


def conv2d_example():  # 19,392 parameters
    model = keras.models.Sequential()
    model.add(L.Conv2D(32, (3, 3), activation="relu", input_shape=(32, 32, 3)))
    model.add(L.MaxPooling2D((2, 2)))
    model.add(L.Conv2D(64, (3, 3), (2, 2), activation="relu"))
    model.add(L.MaxPooling2D((2, 2)))
    return model


def embedding_simplernn():
    return keras.Sequential([L.Embedding(10000, 32), L.SimpleRNN(32)])


def embedding_simplernn_seq():
    return keras.Sequential([L.Embedding(10000, 32), L.SimpleRNN(32, return_sequences=True)])


def embedding_simplernn_stack():
    return keras.Sequential([L.Embedding(10000, 32), L.SimpleRNN(32, return_sequences=True),
                             L.SimpleRNN(32, return_sequences=True), L.SimpleRNN(32, return_sequences=True),
                             L.SimpleRNN(32)])


def embedding_lstm():
    model = keras.Sequential()
    model.add(L.Embedding(10000, 16))
    model.add(L.LSTM(64))
    model.add(L.Dense(16, activation="relu"))
    model.add(L.Dense(1, activation="sigmoid"))
    return model


def functional_shared():
    a = keras.Input((4,))
    b = keras.Input((3,))
    shared = L.Dense(4, name="shared")
    h2 = shared(shared(a))
    c = L.Concatenate()([h2, b])
    out1 = L.Dense(2, name="out1")(c)
    out2 = L.Dense(1, name="out2")(c)
    return keras.Model(inputs=[a, b], outputs=[out1, out2])


def functional_single_input():
    x = keras.Input((6,))
    h = L.Add()([L.Dense(6, activation="tanh")(x), x])
    return keras.Model(x, L.Dense(2, activation="softmax")(h))


def bidirectional_lstm():
    return keras.Sequential([keras.Input((7,), dtype="int32"), L.Embedding(20, 8, mask_zero=True),
                             L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="sum"),
                             L.Bidirectional(L.GRU(3)), L.Dense(1, activation="sigmoid")])


def batchnorm_dropout():
    return keras.Sequential([L.Dense(8, input_shape=(5,), kernel_regularizer=keras.regularizers.l2(0.01)),
                             L.BatchNormalization(), L.Activation("relu"), L.Dropout(0.5),
                             L.Reshape((2, 4)), L.Flatten(), L.Dense(1)])


def new_layers_sequence():  # tests/fixtures/keras/text/models.md: layers_sequence
    return keras.Sequential([
        L.Embedding(50, 8, input_length=12), L.Conv1D(16, 3, padding="causal", activation="relu"),
        L.MaxPooling1D(2), L.LayerNormalization(), L.SpatialDropout1D(0.1), L.TimeDistributed(L.Dense(4)),
        L.LeakyReLU(), L.AveragePooling1D(2), L.GlobalAveragePooling1D(), L.RepeatVector(2), L.Permute((2, 1)),
        L.Flatten(), L.Dense(3), L.Softmax()])


def new_layers_image():  # tests/fixtures/keras/text/models.md: layers_image
    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(1.0 / 255)(inputs)
    x = L.Normalization(mean=0.5, variance=0.25)(x)
    skip = L.Conv2D(4, 3, padding="same")(x)
    x = L.GroupNormalization(groups=2)(skip)
    x = L.ReLU(max_value=6.0)(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
    x = L.Concatenate()([x, skip])
    x = L.ZeroPadding2D(1)(x)
    x = L.Cropping2D(1)(x)
    x = L.UpSampling2D(2, interpolation="bilinear")(x)
    x = L.PReLU(shared_axes=[1, 2])(x)
    x = L.GaussianNoise(0.1)(x)
    x = L.SpatialDropout2D(0.1)(x)
    x = L.Conv2D(1, 1)(x)
    return keras.Model(inputs, L.ELU(alpha=0.5)(x))


MODELS = {f.__name__: f for f in (dense3, dense_16_4_1, mnist_cnn, conv2d_example, embedding_simplernn,
                                  embedding_simplernn_seq, embedding_simplernn_stack, embedding_lstm,
                                  functional_shared, functional_single_input, bidirectional_lstm,
                                  batchnorm_dropout, new_layers_sequence, new_layers_image)}


def rebuild(model, route):
    if route == "json":
        return keras.models.model_from_json(model.to_json())
    if route == "yaml":
        return keras.models.model_from_yaml(model.to_yaml())
    if route == "model_from_config":
        return keras.models.model_from_config(json.loads(model.to_json()))
    if route == "from_config":
        return type(model).from_config(model.get_config())
    raise AssertionError(route)


@pytest.mark.parametrize("route", ["json", "yaml", "model_from_config", "from_config"])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_rebuilds_the_same_architecture(name, route):
    model = MODELS[name]()
    rebuilt = rebuild(model, route)
    assert type(rebuilt) is type(model)
    assert summary_text(rebuilt) == summary_text(model)
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    assert [type(layer) for layer in rebuilt.layers] == [type(layer) for layer in model.layers]
    assert weight_shapes(rebuilt) == weight_shapes(model)
    # Rebuilding is exact: the rebuilt model writes the same config again.
    assert json.loads(rebuilt.to_json()) == json.loads(model.to_json())
    assert rebuilt.optimizer is None


def test_seed_to_json_example():
    """The seed's to_json example: same summary, fresh weights, not compiled."""
    backend.clear_session()
    model = dense3()
    config_json = model.to_json()
    model1 = keras.models.model_from_json(config_json)
    expected = (TEXT_FIXTURES / "summary_seed_dense3.txt").read_text()
    assert [line.rstrip() for line in summary_text(model1).splitlines()] == \
        [line.rstrip() for line in expected.splitlines()]
    assert model1.optimizer is None
    assert [w.path for w in model1.layers[0].weights] == ["layer1/kernel", "layer1/bias"]
    assert not np.array_equal(model1.layers[0].weights[0].numpy(), model.layers[0].weights[0].numpy())
    np.testing.assert_array_equal(model1.layers[0].weights[1].numpy(), np.zeros(5, np.float32))


def test_to_json_top_level_is_keras3_schema():
    config = json.loads(dense3().to_json())
    assert config["module"] == "keras" and config["class_name"] == "Sequential"
    assert config["registered_name"] is None
    assert config["build_config"] == {"input_shape": [None, 4]}
    assert config["compile_config"] == {}
    layers = config["config"]["layers"]
    assert layers[0]["class_name"] == "InputLayer"
    assert layers[0]["config"]["batch_shape"] == [None, 4]
    assert layers[1]["config"]["kernel_initializer"] == {
        "module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": None},
        "registered_name": None}
    assert layers[1]["config"]["activation"] == "relu"

    functional = json.loads(functional_shared().to_json())
    assert (functional["module"], functional["class_name"], functional["registered_name"]) == \
        ("keras.src.models.functional", "Functional", "Functional")
    assert set(functional["config"]) == {"name", "trainable", "layers", "input_layers", "output_layers"}
    shared = next(entry for entry in functional["config"]["layers"] if entry["name"] == "shared")
    assert [node["args"][0]["config"]["keras_history"] for node in shared["inbound_nodes"]] == \
        [[functional["config"]["input_layers"][0][0], 0, 0], ["shared", 0, 0]]
    single = json.loads(functional_single_input().to_json())["config"]
    assert isinstance(single["input_layers"][0], str)  # Keras 3: a single input is one triple
    assert isinstance(single["output_layers"][0], str)


def test_compiled_model_writes_compile_config_and_rebuilds_uncompiled():
    model = dense3()
    model.compile(optimizer="SGD", loss="mse", metrics=["mae"])  # the seed's to_json example
    config = json.loads(model.to_json())["compile_config"]
    # Keras 3.15 writes these keys for the same compile() call.
    assert set(config) == {"optimizer", "loss", "loss_weights", "metrics", "weighted_metrics", "run_eagerly",
                           "steps_per_execution", "jit_compile"}
    assert (config["optimizer"]["module"], config["optimizer"]["class_name"]) == ("keras.optimizers", "SGD")
    assert config["loss"] == "mse" and config["metrics"] == ["mae"]
    rebuilt = keras.models.model_from_json(model.to_json())
    assert rebuilt.optimizer is None and not getattr(rebuilt, "compiled", False)


def test_to_yaml_is_plain_yaml_of_the_same_config():
    import yaml
    model = mnist_cnn()
    text = model.to_yaml()
    assert "!!python" not in text
    assert yaml.safe_load(text) == json.loads(model.to_json())


def test_model_from_yaml_reads_tf_keras24_yaml_with_tuples():
    """tf.keras 2.4's to_yaml was yaml.dump of the config, so tuples carry !!python/tuple tags."""
    import yaml
    model = mnist_cnn()
    config = json.loads(model.to_json())
    for entry in config["config"]["layers"]:
        for key in ("kernel_size", "strides", "pool_size", "dilation_rate"):
            if key in entry["config"]:
                entry["config"][key] = tuple(entry["config"][key])
    text = yaml.dump(config)
    assert "!!python/tuple" in text
    assert summary_text(keras.models.model_from_yaml(text)) == summary_text(model)
    with pytest.raises(ConfigError, match="YAML"):
        keras.models.model_from_yaml("!!python/object/apply:os.system ['true']")


# ---- configs written by real Keras ----------------------------------------------------------

KERAS_JSON = sorted(TEXT_FIXTURES.glob("json_keras[23]_*.json"))


@pytest.mark.parametrize("path", KERAS_JSON, ids=lambda p: p.stem)
def test_model_from_json_reads_real_keras(path):
    name = path.stem.split("_", 2)[2]
    model = keras.models.model_from_json(path.read_text())
    summary = TEXT_FIXTURES / f"summary_seed_{name}.txt"
    if summary.exists():  # the seed's table for the same model
        assert [line.rstrip() for line in summary_text(model).splitlines()] == \
            [line.rstrip() for line in summary.read_text().splitlines()]
    if name in MODELS:
        backend.clear_session()
        ours = MODELS[name]()
        assert [(type(layer), layer.name) for layer in model.layers] == \
            [(type(layer), layer.name) for layer in ours.layers]
        assert weight_shapes(model) == weight_shapes(ours)


def test_keras_fixture_files_are_present():
    # Without them the two tests around this one test nothing.
    assert {p.stem for p in KERAS_JSON} >= {"json_keras2_dense3", "json_keras3_dense3", "json_keras3_mnist_cnn",
                                            "json_keras3_embedding_lstm"}


def _comparable(value, inside_layers=False):
    """A Keras 3 or kcompiler config with the documented, allowed differences taken out:
    - dtype: Keras 3 writes a DTypePolicy object, we write the name (as tf.keras 2; both read either);
    - Keras 3.15's initializer arguments input_axes/output_axes and Dense/Embedding's
      quantization_config (features we do not have; written as None there);
    - build_config of layers inside a model: Keras 3 leaves it out for layers built in their
      constructor (pooling), we write it for every layer that was called;
    - the InputLayer's name: Keras 3 calls it input_layer, we keep tf.keras 2's <first layer>_input."""
    if isinstance(value, list):
        return [_comparable(v, inside_layers) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("class_name") == "DTypePolicy":
        return value["config"]["name"]
    out = {}
    for key, v in value.items():
        if key in ("input_axes", "output_axes", "quantization_config") and v is None:
            continue
        if key == "build_config" and inside_layers:
            continue
        out[key] = _comparable(v, inside_layers or key == "layers")
    if value.get("class_name") == "InputLayer":
        del out["config"]["name"]
    return out


@pytest.mark.parametrize("path", sorted(TEXT_FIXTURES.glob("json_keras3_*.json")), ids=lambda p: p.stem)
def test_to_json_matches_keras3_structure(path):
    name = path.stem.split("_", 2)[2]
    if name not in MODELS:
        pytest.skip(f"no kcompiler builder for {name}")
    keras3 = json.loads(path.read_text())
    backend.clear_session()  # Keras's automatic names (dense, dense_1, ...) as the fixture has them
    ours = json.loads(MODELS[name]().to_json())
    if keras3["config"]["layers"][0]["class_name"] != "InputLayer" and \
            ours["config"]["layers"][0]["class_name"] == "InputLayer":
        # An Embedding-first Sequential has an input here (tf.keras 2's semantics: Embedding
        # implies input shape (None, input_length)), so it is built where Keras 3's is not,
        # and Embedding keeps tf.keras 2's input_length.
        del ours["config"]["layers"][0], ours["build_config"], ours["config"]["build_input_shape"]
        for entry in ours["config"]["layers"]:
            entry.pop("build_config", None)
            if entry["class_name"] == "Embedding":
                assert entry["config"].pop("input_length") is None
    assert _comparable(ours) == _comparable(keras3)


# tf.keras 2.21's to_json() of functional_shared() (out2 with a sigmoid), with the layer
# configs cut down to the keys that matter here; the structure is as tf_keras wrote it.
TF_KERAS2_FUNCTIONAL = """{"class_name": "Functional", "config": {"name": "model", "trainable": true, "layers": [
{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_input_shape": [null, 4], "dtype": "float32",
 "name": "input_1"}, "registered_name": null, "name": "input_1", "inbound_nodes": []},
{"module": "keras.layers", "class_name": "Dense", "config": {"name": "shared", "dtype": "float32", "units": 4,
 "activation": "linear"}, "registered_name": null, "build_config": {"input_shape": [null, 4]}, "name": "shared",
 "inbound_nodes": [[["input_1", 0, 0, {}]], [["shared", 0, 0, {}]]]},
{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_input_shape": [null, 3], "dtype": "float32",
 "name": "input_2"}, "registered_name": null, "name": "input_2", "inbound_nodes": []},
{"module": "keras.layers", "class_name": "Concatenate", "config": {"name": "concatenate", "dtype": "float32",
 "axis": -1}, "registered_name": null, "build_config": {"input_shape": [[null, 4], [null, 3]]},
 "name": "concatenate", "inbound_nodes": [[["shared", 1, 0, {}], ["input_2", 0, 0, {}]]]},
{"module": "keras.layers", "class_name": "Dense", "config": {"name": "out1", "dtype": "float32", "units": 2,
 "activation": "linear"}, "registered_name": null, "build_config": {"input_shape": [null, 7]}, "name": "out1",
 "inbound_nodes": [[["concatenate", 0, 0, {}]]]},
{"module": "keras.layers", "class_name": "Dense", "config": {"name": "out2", "dtype": "float32", "units": 1,
 "activation": "sigmoid"}, "registered_name": null, "build_config": {"input_shape": [null, 7]}, "name": "out2",
 "inbound_nodes": [[["concatenate", 0, 0, {}]]]}],
"input_layers": [["input_1", 0, 0], ["input_2", 0, 0]], "output_layers": [["out1", 0, 0], ["out2", 0, 0]]},
"keras_version": "2.21.0", "backend": "tensorflow"}"""

# Keras 3.15's to_json() of the same model, cut down the same way.
KERAS3_FUNCTIONAL = """{"module": "keras.src.models.functional", "class_name": "Functional", "config": {
"name": "functional", "trainable": true, "layers": [
{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4], "dtype": "float32",
 "name": "input_layer"}, "registered_name": null, "name": "input_layer", "inbound_nodes": []},
{"module": "keras.layers", "class_name": "Dense", "config": {"name": "shared", "dtype": {"module": "keras",
 "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, "units": 4,
 "activation": "linear"}, "registered_name": null, "build_config": {"input_shape": [null, 4]}, "name": "shared",
 "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"shape": [null, 4], "dtype": "float32",
 "keras_history": ["input_layer", 0, 0]}}], "kwargs": {}}, {"args": [{"class_name": "__keras_tensor__", "config":
 {"shape": [null, 4], "dtype": "float32", "keras_history": ["shared", 0, 0]}}], "kwargs": {}}]},
{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 3], "dtype": "float32",
 "name": "input_layer_1"}, "registered_name": null, "name": "input_layer_1", "inbound_nodes": []},
{"module": "keras.layers", "class_name": "Concatenate", "config": {"name": "concatenate", "dtype": {"module":
 "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, "axis": -1},
 "registered_name": null, "build_config": {"input_shape": [[null, 4], [null, 3]]}, "name": "concatenate",
 "inbound_nodes": [{"args": [[{"class_name": "__keras_tensor__", "config": {"shape": [null, 4], "dtype": "float32",
 "keras_history": ["shared", 1, 0]}}, {"class_name": "__keras_tensor__", "config": {"shape": [null, 3],
 "dtype": "float32", "keras_history": ["input_layer_1", 0, 0]}}]], "kwargs": {}}]},
{"module": "keras.layers", "class_name": "Dense", "config": {"name": "out1", "units": 2, "activation": "linear"},
 "registered_name": null, "build_config": {"input_shape": [null, 7]}, "name": "out1", "inbound_nodes": [{"args":
 [{"class_name": "__keras_tensor__", "config": {"shape": [null, 7], "dtype": "float32", "keras_history":
 ["concatenate", 0, 0]}}], "kwargs": {}}]},
{"module": "keras.layers", "class_name": "Dense", "config": {"name": "out2", "units": 1, "activation": "sigmoid"},
 "registered_name": null, "build_config": {"input_shape": [null, 7]}, "name": "out2", "inbound_nodes": [{"args":
 [{"class_name": "__keras_tensor__", "config": {"shape": [null, 7], "dtype": "float32", "keras_history":
 ["concatenate", 0, 0]}}], "kwargs": {}}]}],
"input_layers": [["input_layer", 0, 0], ["input_layer_1", 0, 0]], "output_layers": [["out1", 0, 0], ["out2", 0, 0]]},
"registered_name": "Functional", "build_config": {"input_shape": null}, "compile_config": {}}"""


@pytest.mark.parametrize("text", [TF_KERAS2_FUNCTIONAL, KERAS3_FUNCTIONAL], ids=["tf_keras2", "keras3"])
def test_functional_configs_of_both_kerases(text):
    model = keras.models.model_from_json(text)
    names = {layer.name: layer for layer in model.layers}
    assert {type(layer).__name__ for layer in model.layers} == {"InputLayer", "Dense", "Concatenate"}
    assert len(names["shared"]._inbound) == 2  # the shared layer is called twice
    assert [tuple(t.shape) for t in model.inputs] == [(None, 4), (None, 3)]
    assert [tuple(t.shape) for t in model.outputs] == [(None, 2), (None, 1)]
    assert weight_shapes(model) == [("shared/kernel", (4, 4)), ("shared/bias", (4,)), ("out1/kernel", (7, 2)),
                                    ("out1/bias", (2,)), ("out2/kernel", (7, 1)), ("out2/bias", (1,))]
    assert names["out2"].activation is keras.activations.sigmoid


def test_version_specific_layer_keys():
    """tf.keras 2 writes BatchNormalization's axis as a list and RNNs' implementation/time_major;
    Keras 3 writes renorm*, quantization_config, zero_output_for_mask and seed."""
    original = batchnorm_dropout()
    config = json.loads(original.to_json())
    layers = config["config"]["layers"]
    layers[1]["config"]["quantization_config"] = None
    layers[2]["config"].update(axis=[1], renorm=False, renorm_clipping=None, renorm_momentum=0.99)
    model = keras.models.model_from_config(config)
    assert model.layers[1].axis == 1 and weight_shapes(model) == weight_shapes(original)
    original = embedding_lstm()
    config = json.loads(original.to_json())
    config["config"]["layers"][2]["config"].update(implementation=2, time_major=False, zero_output_for_mask=False,
                                                   seed=None)
    assert summary_text(keras.models.model_from_config(config)) == summary_text(original)


def test_functional_layers_in_any_order():
    # The calls are replayed in dependency order, whatever order the layers are listed in.
    config = json.loads(TF_KERAS2_FUNCTIONAL)
    config["config"]["layers"].reverse()
    model = keras.models.model_from_config(config)
    assert sorted(weight_shapes(model)) == sorted(weight_shapes(keras.models.model_from_json(TF_KERAS2_FUNCTIONAL)))
    assert [tuple(t.shape) for t in model.outputs] == [(None, 2), (None, 1)]


def test_bare_ops_in_a_functional_model_are_reported():
    from kcompiler.errors import UnsupportedError
    x = keras.Input((3,))
    model = keras.Model(x, keras.ops.multiply(L.Dense(3)(x), 2.0))
    with pytest.raises(UnsupportedError, match="bare keras.ops"):
        model.to_json()


def test_tf_keras2_single_input_lists_give_a_single_input_model():
    config = json.loads(TF_KERAS2_FUNCTIONAL)
    config["config"]["layers"] = config["config"]["layers"][:2]
    config["config"]["input_layers"] = [["input_1", 0, 0]]
    config["config"]["output_layers"] = [["shared", 1, 0]]
    model = keras.models.model_from_config(config)
    assert not isinstance(model.inputs, list) or len(model.inputs) == 1
    assert model._single_input and model._single_output
    y = model(keras.Input((4,)))  # one tensor in, one out
    assert tuple(y.shape) == (None, 4)


# The seed's pprint of the same 3-Dense model's JSON (tf.keras 2.4: no module/registered_name).
SEED_JSON = {
    "backend": "tensorflow", "class_name": "Sequential", "keras_version": "2.4.0",
    "config": {"name": "sequential_6", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32",
                                                "name": "layer1_input", "ragged": False, "sparse": False}},
        *[{"class_name": "Dense", "config": {
            "activation": activation, "activity_regularizer": None, "bias_constraint": None,
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "bias_regularizer": None, "dtype": "float32",
            "kernel_constraint": None, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
            "kernel_regularizer": None, "name": name, "trainable": True, "units": units, "use_bias": True,
            **({"batch_input_shape": [None, 4]} if name == "layer1" else {})}}
          for name, units, activation in (("layer1", 5, "relu"), ("layer2", 3, "relu"), ("layer3", 1, "linear"))]]}}


def test_seed_tf_keras24_json():
    model = keras.models.model_from_json(json.dumps(SEED_JSON))
    assert model.name == "sequential_6"
    assert summary_text(model).splitlines()[0] == 'Model: "sequential_6"'
    assert summary_text(model).splitlines()[1:] == summary_text(dense3()).splitlines()[1:]


def test_oldest_sequential_form_config_is_the_layer_list():
    layers = [entry for entry in SEED_JSON["config"]["layers"] if entry["class_name"] == "Dense"]
    model = keras.models.model_from_config({"class_name": "Sequential", "config": layers})
    assert [layer.name for layer in model.layers] == ["layer1", "layer2", "layer3"]
    assert model.input_shape == (None, 4)
    assert weight_shapes(model) == weight_shapes(dense3())


# ---- errors ---------------------------------------------------------------------------------

def test_unknown_classes_are_listed_together():
    config = json.loads(dense3().to_json())
    layers = config["config"]["layers"]
    layers[1]["class_name"] = "FancyDense"
    layers[2]["config"]["activation"] = "swishy"
    layers[3]["config"]["kernel_initializer"] = {"class_name": "MyInit", "config": {}}
    layers.append({"class_name": "Mystery", "config": {"name": "mystery"}})
    with pytest.raises(ConfigError) as info:
        keras.models.model_from_config(config)
    message = str(info.value)
    for part in ("'FancyDense' (layer 'layer1')", "'swishy' (activation of layer 'layer2')",
                 "'MyInit' (kernel_initializer of layer 'layer3')", "'Mystery' (layer 'mystery')",
                 "custom_objects"):
        assert part in message


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="not valid JSON"):
        keras.models.model_from_json("{not json")
    with pytest.raises(ConfigError, match="class_name"):
        keras.models.model_from_config({"config": {}})
    config = json.loads(functional_shared().to_json())
    config["config"]["layers"][-1]["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = "nowhere"
    with pytest.raises(ConfigError, match="nowhere"):
        keras.models.model_from_config(config)


def test_subclassed_model_get_config_raises_unless_overridden():
    class Plain(keras.Model):
        def __init__(self, units=3, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.hidden = L.Dense(units, activation="relu")
            self.out = L.Dense(1)

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    model = Plain()
    model.build((None, 4))
    with pytest.raises(NotImplementedError, match="subclassed"):
        model.get_config()
    with pytest.raises(NotImplementedError):
        model.to_json()

    class Configured(Plain):
        def get_config(self):
            return {"units": self.units, "name": self.name}

    model = Configured(units=6, name="configured")
    model.build((None, 4))
    text = model.to_json()
    with pytest.raises(ConfigError, match="'Configured'"):
        keras.models.model_from_json(text)
    rebuilt = keras.models.model_from_json(text, custom_objects={"Configured": Configured})
    assert isinstance(rebuilt, Configured) and rebuilt.name == "configured" and rebuilt.units == 6
    assert [tuple(w.shape) for w in rebuilt.weights] == [(4, 6), (6,), (6, 1), (1,)]  # built from build_config


# ---- custom objects ---------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="ConfigTests")
class Scale(L.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return keras.ops.multiply(inputs, self.factor)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class Unregistered(L.Layer):
    def call(self, inputs):
        return inputs


def double_tanh(x):
    return keras.ops.multiply(keras.ops.tanh(x), 2.0)


@keras.saving.register_keras_serializable(package="ConfigTests")
def registered_activation(x):
    return keras.ops.relu(x)


def test_custom_layers_and_activations():
    model = keras.Sequential([L.Dense(3, input_shape=(2,), activation=double_tanh), Scale(3.0), Unregistered(),
                              L.Dense(2, activation=registered_activation)])
    entry = json.loads(model.to_json())["config"]["layers"][2]
    assert (entry["class_name"], entry["registered_name"]) == ("Scale", "ConfigTests>Scale")
    text = model.to_json()
    with pytest.raises(ConfigError) as info:
        keras.models.model_from_json(text)
    assert "'double_tanh'" in str(info.value) and "'Unregistered'" in str(info.value)
    assert "Scale" not in str(info.value)  # registered, so found
    rebuilt = keras.models.model_from_json(text, custom_objects={"double_tanh": double_tanh,
                                                                 "Unregistered": Unregistered})
    assert rebuilt.layers[0].activation is double_tanh
    assert rebuilt.layers[1].factor == 3.0 and type(rebuilt.layers[1]) is Scale
    assert rebuilt.layers[3].activation is registered_activation
    with keras.saving.custom_object_scope({"double_tanh": double_tanh, "Unregistered": Unregistered}):
        assert summary_text(keras.models.model_from_json(text)) == summary_text(model)
    objects = keras.saving.get_custom_objects()  # the global table, as in Keras
    objects.update(double_tanh=double_tanh, Unregistered=Unregistered)
    try:
        assert summary_text(keras.models.model_from_json(text)) == summary_text(model)
    finally:
        del objects["double_tanh"], objects["Unregistered"]


def test_keras3_function_and_registered_layer_forms():
    """Keras 3 writes a custom function as {"class_name": "function", "config": name} and a
    registered layer with registered_name "Package>Name" (and module None for __main__)."""
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer",
         "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "input_layer", "optional": False}},
        {"module": "keras.layers", "class_name": "Dense", "config": {
            "name": "dense", "units": 2, "dtype": {"module": "keras", "class_name": "DTypePolicy",
                                                   "config": {"name": "float32"}, "registered_name": None},
            "activation": {"module": "builtins", "class_name": "function", "config": "double_tanh",
                           "registered_name": "function"},
            "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                                   "config": {"seed": None, "input_axes": None, "output_axes": None},
                                   "registered_name": None},
            "quantization_config": None}},
        {"module": None, "class_name": "Scale", "config": {"name": "scale", "factor": 0.5},
         "registered_name": "ConfigTests>Scale"}]}}
    model = keras.models.model_from_config(config, custom_objects={"double_tanh": double_tanh})
    assert model.layers[0].activation is double_tanh
    assert model.layers[1].factor == 0.5


def test_nested_objects_round_trip():
    layer = L.Dense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=3),
                    kernel_regularizer=keras.regularizers.l1_l2(0.1, 0.2), activity_regularizer="l2",
                    kernel_constraint=keras.constraints.max_norm(2.0), bias_constraint="non_neg")
    config = layer.get_config()
    assert config["kernel_regularizer"] == {"module": "keras.regularizers", "class_name": "L1L2",
                                            "config": {"l1": 0.1, "l2": 0.2}, "registered_name": None}
    model = keras.Sequential([keras.Input((4,)), layer])
    rebuilt = keras.models.model_from_json(model.to_json()).layers[0]
    assert rebuilt.kernel_initializer.get_config() == {"mean": 0.0, "stddev": 0.1, "seed": 3}
    assert rebuilt.kernel_regularizer.get_config() == {"l1": 0.1, "l2": 0.2}
    assert type(rebuilt.activity_regularizer).__name__ == "L2"
    assert rebuilt.kernel_constraint.get_config() == {"max_value": 2.0, "axis": 0}
    assert type(rebuilt.bias_constraint).__name__ == "NonNeg"


def test_serialize_keras_object_round_trips():
    objects = [keras.initializers.VarianceScaling(2.0, "fan_out", "uniform", seed=1), keras.regularizers.L1(0.5),
               keras.constraints.MinMaxNorm(0.1, 2.0), keras.activations.relu]
    for obj in objects:
        back = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(obj))))
        assert type(back) is type(obj)
        if hasattr(obj, "get_config"):
            assert back.get_config() == obj.get_config()
    assert keras.saving.serialize_keras_object(keras.activations.relu) == "relu"
    assert keras.saving.deserialize_keras_object({"class_name": "Zeros", "config": {}}).get_config() == {}
    function = keras.saving.serialize_keras_object(double_tanh)  # Keras 3's form of a user function
    assert function == {"module": "builtins", "class_name": "function", "config": "double_tanh",
                        "registered_name": "function"}
    assert keras.saving.deserialize_keras_object(function, custom_objects={"double_tanh": double_tanh}) \
        is double_tanh
    with pytest.raises(ConfigError, match="double_tanh"):
        keras.saving.deserialize_keras_object(function)


def test_trainable_flags_survive():
    model = dense3()
    model.layers[1].trainable = False
    rebuilt = keras.models.model_from_json(model.to_json())
    assert [layer.trainable for layer in rebuilt.layers] == [True, False, True]
    frozen = dense3()
    frozen.trainable = False
    rebuilt = keras.models.model_from_json(frozen.to_json())
    assert not rebuilt.trainable and not any(layer.trainable for layer in rebuilt.layers)
    assert rebuilt.trainable_weights == []


def test_unbuilt_sequential_round_trip():
    model = keras.Sequential([L.Dense(3), L.Dense(1)])
    config = json.loads(model.to_json())
    assert "build_config" not in config and config["config"]["layers"][0]["class_name"] == "Dense"
    rebuilt = keras.models.model_from_json(model.to_json())
    assert not rebuilt.built and [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    # Keras 3 writes build_input_shape when a model was built with build(shape) and no InputLayer.
    config["config"]["build_input_shape"] = [None, 5]
    assert keras.models.model_from_config(config).layers[0].weights[0].shape == (5, 3)


def test_nested_models():
    inner = keras.Sequential([L.Dense(4, input_shape=(3,)), L.Dense(2)], name="inner")
    x = keras.Input((3,))
    outer = keras.Model(x, L.Dense(1)(inner(x)))
    for model in (outer, keras.Sequential([keras.Input((3,)), inner, L.Dense(1)])):
        rebuilt = keras.models.model_from_json(model.to_json())
        assert summary_text(rebuilt) == summary_text(model)
        assert weight_shapes(rebuilt) == weight_shapes(model)


# ---- every layer: get_config / from_config -----------------------------------------------------

LAYER_EXAMPLES = {
    "Dense": (lambda: L.Dense(3, activation="relu", use_bias=False, kernel_regularizer="l2"), (2, 5)),
    "Activation": (lambda: L.Activation("tanh"), (2, 5)),
    "Dropout": (lambda: L.Dropout(0.25, seed=7), (2, 5)),
    "Flatten": (lambda: L.Flatten(), (2, 3, 4)),
    "Reshape": (lambda: L.Reshape((3, 4)), (2, 12)),
    "Embedding": (lambda: L.Embedding(10, 4, mask_zero=True, input_length=6), None),
    "Add": (lambda: L.Add(), [(2, 3), (2, 3)]),
    "Subtract": (lambda: L.Subtract(), [(2, 3), (2, 3)]),
    "Multiply": (lambda: L.Multiply(), [(2, 3), (2, 3)]),
    "Average": (lambda: L.Average(), [(2, 3), (2, 3)]),
    "Maximum": (lambda: L.Maximum(), [(2, 3), (2, 3)]),
    "Concatenate": (lambda: L.Concatenate(axis=1), [(2, 3), (2, 4)]),
    "BatchNormalization": (lambda: L.BatchNormalization(momentum=0.9, epsilon=0.01, center=False), (2, 5)),
    "Conv2D": (lambda: L.Conv2D(4, (2, 3), padding="same", dilation_rate=2, activation="relu"), (1, 6, 6, 2)),
    "MaxPooling2D": (lambda: L.MaxPooling2D((3, 3), strides=2, padding="same"), (1, 6, 6, 2)),
    "AveragePooling2D": (lambda: L.AveragePooling2D(2, strides=1), (1, 6, 6, 2)),
    "GlobalAveragePooling2D": (lambda: L.GlobalAveragePooling2D(keepdims=True), (1, 4, 4, 2)),
    "GlobalMaxPooling2D": (lambda: L.GlobalMaxPooling2D(), (1, 4, 4, 2)),
    "SimpleRNN": (lambda: L.SimpleRNN(3, return_sequences=True, go_backwards=True, activation="relu"), (2, 4, 5)),
    "LSTM": (lambda: L.LSTM(4, unit_forget_bias=False, return_state=True, dropout=0.1, seed=3), (2, 4, 5)),
    "GRU": (lambda: L.GRU(3, reset_after=False, recurrent_activation="hard_sigmoid"), (2, 4, 5)),
    "Bidirectional": (lambda: L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode="ave"), (2, 4, 5)),
    "InputLayer": (lambda: L.InputLayer(input_shape=(3, 2), dtype="int32"), None),
    "Softmax": (lambda: L.Softmax(axis=[1, 2]), (2, 3, 4)),
    "ReLU": (lambda: L.ReLU(max_value=2.0, negative_slope=0.1, threshold=0.5), (2, 5)),
    "LeakyReLU": (lambda: L.LeakyReLU(0.1), (2, 5)),
    "PReLU": (lambda: L.PReLU(alpha_initializer="ones", alpha_regularizer="l2", shared_axes=[1]), (2, 3, 4)),
    "ELU": (lambda: L.ELU(alpha=0.5), (2, 5)),
    "RepeatVector": (lambda: L.RepeatVector(3), (2, 4)),
    "Permute": (lambda: L.Permute((2, 1)), (2, 3, 4)),
    "ZeroPadding2D": (lambda: L.ZeroPadding2D(((1, 2), (0, 1))), (1, 3, 3, 2)),
    "Cropping2D": (lambda: L.Cropping2D(((1, 0), 2)), (1, 5, 6, 2)),
    "UpSampling2D": (lambda: L.UpSampling2D((2, 3), interpolation="bilinear"), (1, 3, 3, 2)),
    "Masking": (lambda: L.Masking(mask_value=-1.0), (2, 4, 3)),
    "Identity": (lambda: L.Identity(), (2, 3)),
    "Lambda": (lambda: L.Lambda(keras.activations.tanh, output_shape=(3,)), (2, 3)),
    "Dot": (lambda: L.Dot(axes=(2, 2), normalize=True), [(2, 3, 4), (2, 5, 4)]),
    "Rescaling": (lambda: L.Rescaling(1.0 / 255, offset=-0.5), (2, 3)),
    "Normalization": (lambda: L.Normalization(axis=(1, 2), invert=True), (2, 3, 4)),
    "GaussianNoise": (lambda: L.GaussianNoise(0.1, seed=3), (2, 3)),
    "GaussianDropout": (lambda: L.GaussianDropout(0.2), (2, 3)),
    "SpatialDropout1D": (lambda: L.SpatialDropout1D(0.3, seed=1), (2, 3, 4)),
    "SpatialDropout2D": (lambda: L.SpatialDropout2D(0.3), (2, 3, 3, 4)),
    "MaxPooling1D": (lambda: L.MaxPooling1D(3, strides=1, padding="same"), (2, 5, 3)),
    "AveragePooling1D": (lambda: L.AveragePooling1D(2), (2, 5, 3)),
    "GlobalMaxPooling1D": (lambda: L.GlobalMaxPooling1D(keepdims=True), (2, 5, 3)),
    "GlobalAveragePooling1D": (lambda: L.GlobalAveragePooling1D(), (2, 5, 3)),
    "LayerNormalization": (lambda: L.LayerNormalization(axis=[1, 2], epsilon=0.01, center=False), (2, 3, 4)),
    "GroupNormalization": (lambda: L.GroupNormalization(groups=2, scale=False), (2, 3, 4)),
    "TimeDistributed": (lambda: L.TimeDistributed(L.Dense(3, activation="relu")), (2, 4, 5)),
    "Conv1D": (lambda: L.Conv1D(3, 2, padding="causal", dilation_rate=2, activation="relu"), (2, 6, 2)),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1), (1, 3, 3, 2)),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                                  activation="relu6"), (1, 5, 5, 2)),
    "SeparableConv2D": (lambda: L.SeparableConv2D(4, 3, dilation_rate=2, use_bias=False,
                                                  pointwise_regularizer="l2"), (1, 6, 6, 2)),
    # called with (query, value): no single-input build here (tests/keras/test_attention_layers.py)
    "MultiHeadAttention": (lambda: L.MultiHeadAttention(2, 4, value_dim=3, dropout=0.1, output_shape=5), None),
    "Attention": (lambda: L.Attention(use_scale=True, score_mode="concat", dropout=0.1, seed=3), None),
    "AdditiveAttention": (lambda: L.AdditiveAttention(use_scale=False, dropout=0.2), None),
}


WITH_WEIGHTS = {"Dense", "Embedding", "BatchNormalization", "Conv2D", "SimpleRNN", "LSTM", "GRU", "Bidirectional",
                "PReLU", "Normalization", "LayerNormalization", "GroupNormalization", "TimeDistributed", "Conv1D",
                "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D"}


def _layer_classes():
    classes = {obj for obj in vars(L).values() if inspect.isclass(obj) and issubclass(obj, L.Layer)}
    return sorted((c for c in classes if c is not L.Layer), key=lambda c: c.__name__)


def test_every_layer_has_a_config_example():
    missing = [c.__name__ for c in _layer_classes() if c.__name__ not in LAYER_EXAMPLES]
    assert not missing, f"add a get_config example to LAYER_EXAMPLES for: {missing}"


@pytest.mark.parametrize("class_name", sorted(LAYER_EXAMPLES))
def test_layer_config_round_trip(class_name):
    make, input_shape = LAYER_EXAMPLES[class_name]
    layer = make()
    config = layer.get_config()
    through_json = json.loads(json.dumps(config))
    clone = type(layer).from_config(through_json)
    assert type(clone) is type(layer)
    assert json.loads(json.dumps(clone.get_config())) == through_json
    rebuilt = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))
    assert type(rebuilt) is type(layer) and rebuilt.get_config() == clone.get_config()
    if input_shape is not None:  # built on symbolic inputs: same weights
        def inputs():
            if isinstance(input_shape, list):
                return [keras.Input(s[1:]) for s in input_shape]
            return keras.Input(input_shape[1:])
        layer(inputs())
        clone(inputs())
        assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in layer.weights]
        assert len(clone.weights) > 0 or class_name not in WITH_WEIGHTS
