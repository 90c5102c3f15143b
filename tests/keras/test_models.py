"""Sequential, functional and subclassed models; custom layers; eager calls; naming."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.keras import backend, layers, ops


@pytest.fixture(autouse=True)
def fresh_names():
    backend.clear_session()


def test_automatic_names_follow_keras():
    a, b, c = layers.Dense(1), layers.Dense(1), layers.BatchNormalization()
    assert (a.name, b.name, c.name) == ("dense", "dense_1", "batch_normalization")
    assert keras.Sequential().name == "sequential"
    assert keras.Sequential().name == "sequential_1"
    backend.clear_session()
    assert layers.Dense(1).name == "dense"


def test_seed_sequential_call_on_ones():
    model = keras.Sequential([layers.Dense(5, activation="relu", name="layer1"),
                              layers.Dense(3, activation="relu", name="layer2"),
                              layers.Dense(1, name="layer3")])
    y = model(ops.ones((4, 10)))
    assert y.shape == (4, 1) and y.dtype == "float32"
    layer1, layer2, layer3 = model.layers
    x = np.ones((4, 10), np.float32)
    expected = layer3(layer2(layer1(x))).numpy()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)
    assert [w.shape for w in model.weights] == [(10, 5), (5,), (5, 3), (3,), (3, 1), (1,)]


def test_sequential_add_and_deferred_build():
    model = keras.Sequential()
    model.add(layers.Dense(5, activation="relu"))
    model.add(layers.Dense(1))
    assert not model.built
    model(np.zeros((2, 7)))
    assert model.built and model.layers[0].kernel.shape == (7, 5)
    assert model.count_params() == 7 * 5 + 5 + 6


def test_sequential_with_keras_input_first():
    model = keras.Sequential([keras.Input(shape=(3,)), layers.Dense(2)])
    assert model.built and len(model.layers) == 1
    assert model.output_shape == (None, 2)


def test_dense_matches_numpy_for_each_activation():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for act, f in [("linear", lambda z: z), ("relu", lambda z: np.maximum(z, 0)), ("tanh", np.tanh),
                   ("sigmoid", lambda z: 1 / (1 + np.exp(-z))), ("exponential", np.exp),
                   ("elu", lambda z: np.where(z > 0, z, np.expm1(z)))]:
        layer = layers.Dense(2, activation=act)
        y = layer(x).numpy()
        k, b = layer.get_weights()
        np.testing.assert_allclose(y, f(x @ k + b), rtol=1e-5, atol=1e-6)


def test_dense_on_rank_3_input():
    layer = layers.Dense(2)
    x = np.ones((2, 3, 4), np.float32)
    assert layer(x).shape == (2, 3, 2)


def test_functional_model_with_shared_layer_and_two_outputs():
    a, b = keras.Input((4,)), keras.Input((3,))
    shared = layers.Dense(4, name="shared")
    h = shared(shared(a))
    c = layers.Concatenate()([h, b])
    model = keras.Model(inputs=[a, b], outputs=[layers.Dense(2, name="out1")(c), layers.Dense(1, name="out2")(c)])
    assert model.name == "model"
    assert [l.name for l in model.layers] == ["input_1", "shared", "input_2", "concatenate", "out1", "out2"]
    xa, xb = np.ones((2, 4), np.float32), np.ones((2, 3), np.float32)
    y1, y2 = model([xa, xb])
    sk, sb = shared.get_weights()
    h = (xa @ sk + sb) @ sk + sb
    c = np.concatenate([h, xb], axis=1)
    k1, b1 = model.get_layer("out1").get_weights()
    np.testing.assert_allclose(y1.numpy(), c @ k1 + b1, rtol=1e-5, atol=1e-6)
    assert y2.shape == (2, 1)
    lines = []
    model.summary(print_fn=lines.append)
    assert "shared (Dense)" in lines[6] and "input_1[0][0]" in lines[6]
    program = kcompiler.compile(model)
    assert len(program.graph.graph["outputs"]) == 2


class Scale(layers.Layer):
    """A custom layer written with keras.ops: y = x * w + b, squashed."""

    def __init__(self, units=None, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")
        self.b = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="b")

    def call(self, x):
        return ops.tanh(x * self.w + self.b)


def test_custom_layer_traces_and_runs_eagerly():
    model = keras.Sequential([keras.Input((3,)), Scale(), layers.Dense(1)])
    x = np.array([[0.5, -1.0, 2.0]], np.float32)
    y = model(x).numpy()
    k, b = model.layers[1].get_weights()
    np.testing.assert_allclose(y, np.tanh(x) @ k + b, rtol=1e-4, atol=1e-5)
    text = kcompiler.dump_ir(model)
    assert "tanh" in text and "Scale 'scale'" in text
    lines = []
    model.summary(print_fn=lines.append)
    assert lines[4].startswith("scale (Scale)")


class TwoPath(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = layers.Dense(5, activation="relu")
        self.out = layers.Dense(1)

    def call(self, inputs, training=None):
        h = self.dense(inputs)
        if training:  # Python control flow, resolved at trace time
            h = h * 0.5
        return self.out(h)


def test_subclassed_model_tracks_layers_traces_and_prints_multiple():
    model = TwoPath()
    y = model(np.ones((2, 4)))
    assert y.shape == (2, 1) and model.name == "two_path"
    assert len(model.weights) == 4 and model.count_params() == 4 * 5 + 5 + 6
    inference = kcompiler.compile(model).stages["traced"]
    model.compile(optimizer="sgd", loss="mse")
    training = kcompiler.compile(model, training=True).stages["traced"]
    assert any(training.nodes[n]["op"] == "mul" and training.nodes[n].get("layer") == "TwoPath 'two_path'"
               for n in training.nodes)  # the training branch of call() was traced
    assert not any(inference.nodes[n]["op"] == "mul" for n in inference.nodes)
    lines = []
    model.summary(print_fn=lines.append)
    assert lines[0] == 'Model: "two_path"'
    assert lines[4].split() == ["dense", "(Dense)", "multiple", "25"]


def test_seed_linear_subclass_with_zero_initialisers():
    class Linear(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(units=1, activation=None, kernel_initializer=keras.initializers.Zeros(),
                                      bias_initializer=keras.initializers.Zeros())

        def call(self, input):
            return self.dense(input)

    y = Linear()(np.ones((3, 2)))
    assert y.numpy().tolist() == [[0.0], [0.0], [0.0]]


def test_eager_ops_and_tensor_arithmetic():
    x = ops.ones((2, 3))
    y = (x * 2 + 1) / 3 - ops.zeros((2, 3))
    np.testing.assert_allclose(y.numpy(), np.ones((2, 3)))
    assert ops.sum(y).numpy() == pytest.approx(6.0)
    assert ops.matmul(ops.ones((2, 3)), ops.ones((3, 4))).shape == (2, 4)
    assert ops.convert_to_tensor(np.float64(1.5) * np.ones(2)).dtype == "float32"
    with pytest.raises(TypeError, match="cannot convert"):
        ops.convert_to_tensor(np.array(["a", "b"]))


def test_batch_normalization_training_updates_moving_statistics():
    bn = layers.BatchNormalization(momentum=0.9)
    x = np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32) * 2 + 1
    y = bn(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * x.var(0), rtol=1e-5)
    before = bn.moving_mean.numpy().copy()
    bn(x, training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)


def test_dropout_is_identity_at_inference_and_masks_in_training():
    layer = layers.Dropout(0.5, seed=1)
    x = np.ones((10, 10), np.float32)
    np.testing.assert_array_equal(layer(x).numpy(), x)
    y = layer(x, training=True).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 0 < (y == 0).sum() < 100


def test_set_random_seed_makes_initialisation_reproducible():
    keras.utils.set_random_seed(3)
    a = layers.Dense(4)
    a.build((None, 3))
    keras.utils.set_random_seed(3)
    b = layers.Dense(4)
    b.build((None, 3))
    np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())


def test_trainable_flag_moves_weights_to_non_trainable():
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2), layers.Dense(1)])
    model.layers[0].trainable = False
    assert len(model.trainable_weights) == 2 and len(model.non_trainable_weights) == 2
    lines = []
    model.summary(print_fn=lines.append)
    assert lines[-3:-1] == ["Trainable params: 3", "Non-trainable params: 8"]


def test_functional_summary_matches_tf_keras_text_fixture():
    from pathlib import Path
    a, b = keras.Input((4,)), keras.Input((3,))
    shared = layers.Dense(4, name="shared")
    h2 = shared(shared(a))
    c = layers.Concatenate()([h2, b])
    model = keras.Model(inputs=[a, b], outputs=[layers.Dense(2, name="out1")(c), layers.Dense(1, name="out2")(c)])
    lines = []
    model.summary(print_fn=lines.append)
    expected = (Path(__file__).parent.parent / "fixtures/keras/text/summary_functional.txt").read_text().splitlines()
    assert [l.rstrip() for l in lines] == [l.rstrip() for l in expected]


def test_subclassed_summary_matches_tf_keras_text_fixture():
    from pathlib import Path

    class MyModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense1 = layers.Dense(5, activation="relu")
            self.dense2 = layers.Dense(1)

        def call(self, inputs):
            return self.dense2(self.dense1(inputs))

    model = MyModel()
    model(ops.ones((2, 4)))
    lines = []
    model.summary(print_fn=lines.append)
    expected = (Path(__file__).parent.parent / "fixtures/keras/text/summary_subclassed.txt").read_text().splitlines()
    assert [l.rstrip() for l in lines] == [l.rstrip() for l in expected]


def test_keras_ops_conv_and_pool_in_a_custom_layer():
    class EdgeDetect(layers.Layer):
        def build(self, input_shape):
            self.k = self.add_weight(shape=(3, 3, input_shape[-1], 2), name="k")

        def call(self, x):
            return ops.max_pool(ops.relu(ops.conv(x, self.k, padding="same")), 2)

    layer = EdgeDetect()
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 1)).astype(np.float32)
    y = layer(x)
    reference = layers.Conv2D(2, 3, padding="same", use_bias=False, activation="relu")
    pooled = layers.MaxPooling2D(2)
    reference.build((None, 6, 6, 1))
    reference.set_weights([layer.k.numpy()])
    np.testing.assert_allclose(y.numpy(), pooled(reference(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_build_by_hand_then_set_weights_keeps_them_on_the_first_call():
    layer = layers.Dense(2, use_bias=False)
    layer.build((None, 3))
    assert layer.built
    layer.set_weights([np.ones((3, 2), np.float32)])
    np.testing.assert_array_equal(layer(np.ones((1, 3), np.float32)).numpy(), [[3.0, 3.0]])


def test_functional_model_through_a_pass_through_layer():
    a = keras.Input((4,))
    h = layers.Dropout(0.5)(layers.Dense(3)(a))  # Dropout returns its input at inference
    model = keras.Model(a, layers.Dense(1)(layers.Activation("linear")(h)))
    assert [l.name for l in model.layers] == ["input_1", "dense", "dropout", "activation", "dense_1"]
    x = np.ones((2, 4), np.float32)
    d1, d2 = model.get_layer("dense"), model.get_layer("dense_1")
    k1, b1 = d1.get_weights()
    k2, b2 = d2.get_weights()
    np.testing.assert_allclose(model(x).numpy(), (x @ k1 + b1) @ k2 + b2, rtol=1e-5, atol=1e-6)
