"""Model and Layer attributes as tf.keras documents them: trainable/non-trainable variables and
weights, losses (regularization penalties), metrics and metrics_names, input_shape/output_shape,
count_params; Embedding.compute_mask on concrete ids."""
import numpy as np
import pytest

from kcompiler import keras


def small_model():
    keras.backend.clear_session()
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=keras.regularizers.l2(0.01)),
                             keras.layers.BatchNormalization(), keras.layers.Dense(2, bias_regularizer="l1")])


def test_variables_and_weights_split_by_trainability():
    model = small_model()
    paths = lambda vs: [v.path for v in vs]  # noqa: E731
    assert paths(model.trainable_variables) == paths(model.trainable_weights) == [
        "dense/kernel", "dense/bias", "batch_normalization/gamma", "batch_normalization/beta",
        "dense_1/kernel", "dense_1/bias"]
    assert paths(model.non_trainable_variables) == paths(model.non_trainable_weights) == [
        "batch_normalization/moving_mean", "batch_normalization/moving_variance"]
    model.layers[0].trainable = False
    assert paths(model.layers[0].trainable_variables) == []
    assert paths(model.layers[0].non_trainable_variables) == ["dense/kernel", "dense/bias"]
    assert "dense/kernel" in paths(model.non_trainable_weights)


def test_count_params_of_model_and_layers():
    model = small_model()
    assert [layer.count_params() for layer in model.layers] == [4 * 3 + 3, 4 * 3, 3 * 2 + 2]
    assert model.count_params() == 35  # what Keras reports for this model


def test_losses_are_the_regularization_penalties_at_the_current_weights():
    model = small_model()
    kernel = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    bias = np.array([0.5, -2.0], np.float32)
    model.layers[0].kernel.assign(kernel)
    model.layers[2].bias.assign(bias)
    values = [float(np.asarray(v)) for v in model.losses]
    np.testing.assert_allclose(values, [0.01 * np.sum(kernel ** 2), 0.01 * np.sum(np.abs(bias))], rtol=1e-6)
    assert [float(np.asarray(v)) for v in model.layers[0].losses] == pytest.approx([values[0]], rel=1e-6)
    assert model.layers[1].losses == []


def test_metrics_and_metrics_names_label_evaluate_results():
    model = small_model()
    assert model.metrics == [] and model.metrics_names == []
    auc = keras.metrics.AUC(name="auc")
    model.compile(optimizer="sgd", loss="mse", metrics=["mae", auc])
    assert model.metrics_names == ["loss", "mae", "auc"]
    assert model.metrics[1] is auc
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.uniform(size=(16, 2)).astype(np.float32)
    results = model.evaluate(x, y, verbose=0)
    as_dict = model.evaluate(x, y, verbose=0, return_dict=True)
    assert dict(zip(model.metrics_names, results)) == pytest.approx(as_dict)
    np.testing.assert_allclose(auc.result().numpy(), as_dict["auc"], rtol=1e-6)  # the state evaluate left


def test_model_and_layer_input_and_output_shapes():
    model = small_model()
    assert model.input_shape == (None, 4) and model.output_shape == (None, 2)
    assert model.layers[0].input_shape == (None, 4) and model.layers[0].output_shape == (None, 3)
    assert model.layers[2].output_shape == (None, 2)
    a, b = keras.Input((5,)), keras.Input((5,))
    joined = keras.layers.Concatenate()([a, b])
    functional = keras.Model([a, b], keras.layers.Dense(1)(joined))
    assert functional.input_shape == [(None, 5), (None, 5)] and functional.output_shape == (None, 1)
    concat = functional.layers[2]
    assert concat.input_shape == [(None, 5), (None, 5)] and concat.output_shape == (None, 10)


def test_layer_shapes_raise_when_undefined():
    with pytest.raises(AttributeError, match="never been called"):
        keras.layers.Dense(3).input_shape
    shared = keras.layers.Dense(2)
    shared(keras.Input((3,)))
    shared(keras.Input((3,)))
    assert shared.input_shape == (None, 3) and shared.output_shape == (None, 2)  # the calls agree
    relu = keras.layers.Activation("relu")
    relu(keras.Input((3,)))
    relu(keras.Input((4,)))
    with pytest.raises(AttributeError, match="different input shapes"):
        relu.input_shape
    with pytest.raises(AttributeError, match="different output shapes"):
        relu.output_shape


@pytest.mark.parametrize("ids", [np.array([[0, 3, 0, 7]], np.int32), [[0, 3, 0, 7]], np.array([[0, 3, 0, 7]])])
def test_embedding_compute_mask_on_concrete_ids(ids):
    embedding = keras.layers.Embedding(10, 2, mask_zero=True)
    np.testing.assert_array_equal(np.asarray(embedding.compute_mask(ids)), [[False, True, False, True]])
    assert keras.layers.Embedding(10, 2).compute_mask(ids) is None
