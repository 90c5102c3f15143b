"""data_format='channels_first' equals Keras 3 (fixtures: tests/fixtures/keras/channels_first/, from
Keras 3.15 on its torch backend, see make_image_fixtures.py): every image layer's output and
gradients, a CNN's training trajectory and fit History, a model file Keras saved; and the
layout transposes between channels_first layers cancel in the compiled graph."""
import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.keras import backend, ops
from keras_fixtures import ROOT, cases, indexed, layer_case, load, make_sequential

KIND = "channels_first"


def assert_close(got, expected, what, rtol=1e-4):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-5 * max(1.0, float(np.abs(expected).max())),
                               err_msg=what)


@pytest.mark.parametrize("name", [n for n in cases(KIND) if n.startswith("cf_")])
def test_layer_output_and_gradients_match_keras(name):
    case = load(KIND, name)
    layer, (x,), kwargs = layer_case(case)
    assert layer.data_format == "channels_first"
    x = ops.convert_to_tensor(x)
    with kcompiler.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **kwargs)
        objective = ops.sum(y * case["r"])
    grads = tape.gradient(objective, [x] + layer.weights)
    assert tuple(y.shape) == case["y"].shape
    assert_close(y.numpy(), case["y"], "output")
    assert_close(grads[0].numpy(), case["grad_x"], "gradient of the input")
    for i, (g, expected) in enumerate(zip(grads[1:], indexed(case, "grad_w"))):
        assert_close(g.numpy(), expected, f"gradient of weight {i}")


def build_cnn(case):
    backend.clear_session()
    spec = case["spec"]
    model = make_sequential(spec["model"])
    model.set_weights(indexed(case, "w_init"))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_cnn_trains_as_keras_step_by_step():
    case = load(KIND, "train_cf_cnn")
    model = build_cnn(case)
    bs = case["spec"]["batch_size"]
    x, y = case["x"], case["y"]
    losses = [model.train_on_batch(x[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs], return_dict=True)["loss"]
              for i in range(20)]
    np.testing.assert_allclose(losses, case["losses"], rtol=1e-3, atol=1e-5)
    assert abs(case["losses"][-1] - case["losses"][0]) > 0.1  # the fixture really moves
    for got, expected in zip(model.get_weights(), indexed(case, "w_final")):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_compiled_steps_match_keras_on_every_target(target):
    """The same 20 steps through kcompiler.compile on each backend (the CUDA kernels in their CPU
    emulation where no GPU is present)."""
    case = load(KIND, "train_cf_cnn")
    program = kcompiler.compile(build_cnn(case), training=True, batch_size=4, target=target)
    x, y = case["x"], case["y"]
    losses = [program.train_step(x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4])["loss"] for i in range(20)]
    np.testing.assert_allclose(losses, case["losses"], rtol=1e-3, atol=1e-5)


def test_cnn_fit_history_matches_keras():
    case = load(KIND, "train_cf_cnn")
    model = build_cnn(case)
    history = model.fit(case["x"], case["y"], batch_size=case["spec"]["batch_size"], epochs=2, shuffle=False,
                        verbose=0)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(history.history[key], case[f"history_{key}"], rtol=1e-3, atol=1e-5)
    for got, expected in zip(model.get_weights(), indexed(case, "fit_w_final")):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_layout_transposes_between_channels_first_layers_cancel():
    """Only the input's NCHW -> NHWC copy is left in the compiled training step (forward,
    backward and update): Flatten's transpose undoes the last conv's and pooling's."""
    model = build_cnn(load(KIND, "train_cf_cnn"))
    program = kcompiler.compile(model, training=True, batch_size=4)
    traced = [n for n, d in program.stages["differentiated"].nodes(data=True) if d["op"] == "transpose"]
    kept = [(n, d["attrs"]["perm"]) for n, d in program.stages["fused"].nodes(data=True) if d["op"] == "transpose"]
    assert len(traced) > 8
    assert [perm for _, perm in kept] == [(0, 2, 3, 1)]


def test_a_keras_channels_first_model_file_loads_and_predicts_as_keras():
    case = load(KIND, "file_cf_cnn")
    model = keras.models.load_model(ROOT / KIND / case["spec"]["file"])
    assert {layer.get_config().get("data_format") for layer in model.layers} == {"channels_first", None}
    assert_close(model.predict(case["x"], verbose=0), case["y"], "predictions", rtol=1e-4)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_channels_first_model_saves_and_loads(tmp_path, suffix):
    case = load(KIND, "train_cf_cnn")
    model = build_cnn(case)
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [layer.get_config().get("data_format") for layer in loaded.layers] == \
        [layer.get_config().get("data_format") for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(case["x"][:8], verbose=0), model.predict(case["x"][:8], verbose=0))


def test_summary_shows_channels_first_shapes(capsys):
    model = build_cnn(load(KIND, "train_cf_cnn"))
    model.summary()
    text = capsys.readouterr().out
    for shape in ("(None, 4, 6, 6)", "(None, 4, 3, 3)", "(None, 3, 3, 3)", "(None, 3, 3, 1)", "(None, 9)"):
        assert shape in text, shape
    assert model.output_shape == (None, 3)


def test_image_data_format_is_the_default_of_image_layers():
    assert keras.backend.image_data_format() == keras.config.image_data_format() == "channels_last"
    try:
        keras.config.set_image_data_format("channels_first")
        assert keras.layers.Conv2D(2, 3).data_format == "channels_first"
        assert keras.layers.GlobalAveragePooling2D().data_format == "channels_first"
        assert keras.layers.Conv2D(2, 3, data_format="channels_last").data_format == "channels_last"
        with pytest.raises(ValueError, match="data_format"):
            keras.backend.set_image_data_format("NCHW")
    finally:
        keras.backend.set_image_data_format("channels_last")
    assert keras.layers.Conv2D(2, 3).get_config()["data_format"] == "channels_last"


def test_channels_first_spatial_dropout_drops_whole_channels():
    layer = keras.layers.SpatialDropout2D(0.5, data_format="channels_first", seed=3)
    x = np.ones((4, 6, 3, 5), np.float32)
    y = layer(x, training=True).numpy()
    per_channel = y.reshape(4, 6, -1)
    assert np.all(per_channel == per_channel[:, :, :1])  # one draw per (sample, channel)
    assert set(np.unique(y)) == {0.0, 2.0}


def test_channels_first_input_of_the_wrong_channel_count_is_a_clear_error():
    backend.clear_session()
    layer = keras.layers.Conv2D(2, 3, data_format="channels_first")
    layer(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(Exception, match="conv2d.*dimension 1 3, got 4"):
        layer(np.zeros((1, 4, 5, 5), np.float32))
