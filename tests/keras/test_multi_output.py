"""Multi-output training against Keras 3 (fixtures from tests/fixtures/make_data_fixtures.py):
losses, loss weights, metrics and weighted metrics per output as lists or dicts, History keys
named as Keras names them; and compile()'s argument checks."""
import numpy as np
import pytest

from kcompiler import keras
from tests.keras_fixtures import cases, load


def two_output_model():
    x = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(6, activation="tanh", name="hidden")(x)
    reg = keras.layers.Dense(1, name="reg")(hidden)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(hidden)
    return keras.Model(x, [reg, cls])


@pytest.mark.parametrize("name", cases("data"))
def test_two_output_fit_matches_keras(name):
    case = load("data", name)
    spec = case["spec"]
    model = two_output_model()
    model.set_weights([case[f"w_{i}"] for i in range(len(model.get_weights()))])
    model.compile(optimizer=keras.optimizers.SGD(0.1), **spec["compile"])

    def labels(reg, cls):
        return [reg, np.eye(3, dtype=np.float32)[cls] if spec["one_loss"] else cls]

    kwargs = dict(batch_size=spec["batch_size"], epochs=spec["epochs"], shuffle=False, verbose=0)
    weights, val_weights = case["sw"], case["sw_val"]
    if spec["sample_weight"] == "per_output":
        weights, val_weights = [weights, case["sw_cls"]], [val_weights, case["sw_cls_val"]]
    if spec["sample_weight"]:
        kwargs["sample_weight"] = weights
    if len(case["x_val"]):
        kwargs["validation_data"] = (case["x_val"], labels(case["y_reg_val"], case["y_cls_val"])) + (
            (val_weights,) if spec["sample_weight"] else ())
    history = model.fit(case["x"], labels(case["y_reg"], case["y_cls"]), **kwargs).history
    assert sorted(history) == spec["history_keys"]
    for key in spec["history_keys"]:
        np.testing.assert_allclose(history[key], case[f"history_{key}"], rtol=1e-3, atol=1e-6, err_msg=key)
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(w, case[f"final_{i}"], rtol=1e-3, atol=1e-5, err_msg=f"weight {i}")


def _compiled_model(**compile_kwargs):
    model = two_output_model()
    model.compile(optimizer="sgd", **compile_kwargs)
    return model


def _data(n=6):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 4)).astype(np.float32),
            rng.normal(size=(n, 1)).astype(np.float32), rng.integers(0, 3, n))


def test_labels_as_dict_equal_labels_as_list():
    x, y_reg, y_cls = _data()
    losses = {"reg": "mse", "cls": "sparse_categorical_crossentropy"}
    a, b = _compiled_model(loss=losses), _compiled_model(loss=losses)
    b.set_weights(a.get_weights())
    la = a.evaluate(x, [y_reg, y_cls], verbose=0, return_dict=True)
    lb = b.evaluate(x, {"cls": y_cls, "reg": y_reg}, verbose=0, return_dict=True)
    assert la == pytest.approx(lb)
    assert set(la) == {"loss", "reg_loss", "cls_loss"}
    assert la["loss"] == pytest.approx(la["reg_loss"] + la["cls_loss"], rel=1e-5)


def test_output_without_loss_takes_no_labels_and_is_not_trained():
    x, y_reg, _ = _data()
    model = _compiled_model(loss=["mse", None])
    before = model.get_layer("cls").get_weights()
    logs = model.fit(x, [y_reg, None], verbose=0, epochs=2).history
    assert set(logs) == {"loss"}
    for w0, w1 in zip(before, model.get_layer("cls").get_weights()):
        np.testing.assert_array_equal(w0, w1)


def test_loss_weights_scale_the_total_loss():
    x, y_reg, y_cls = _data()
    model = _compiled_model(loss=["mse", "sparse_categorical_crossentropy"], loss_weights=[3.0, 0.25])
    logs = model.evaluate(x, [y_reg, y_cls], verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(3.0 * logs["reg_loss"] + 0.25 * logs["cls_loss"], rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss={"reg": "mse", "clz": "mse"}), "clz"),
    (dict(loss=["mse", "mse", "mse"]), "one entry per output"),
    (dict(loss=["mse", "mse"], loss_weights=[1.0]), "loss_weights"),
    (dict(loss=["mse", "mse"], metrics=["mae"]), "metrics"),
    (dict(loss=["mse", "mse"], metrics={"nope": "mae"}), "nope"),
])
def test_compile_refuses_arguments_that_do_not_fit_the_outputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _compiled_model(**kwargs)


def test_compile_refuses_unknown_keyword_arguments():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="metricz"):
        model.compile("sgd", "mse", metricz=["mae"])


def test_one_metric_name_as_a_string_is_one_metric():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics="accuracy")
    x, _, y = _data()
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    expected = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    assert logs["accuracy"] == pytest.approx(expected)


def test_single_output_loss_weight_and_weighted_metric():
    """Keras 3: loss_weights scales a single output's loss too; a weighted metric is the
    weighted mean sum(w * v) / sum(w), the plain one ignores the weights."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", loss_weights=2.0, metrics=["mae"], weighted_metrics=["mae"])
    x, y, _ = _data(5)
    w = np.array([1.0, 0.0, 2.0, 0.5, 3.0], np.float32)
    logs = model.evaluate(x, y, sample_weight=w, batch_size=2, verbose=0, return_dict=True)
    err = np.abs(model.predict(x, verbose=0) - y)[:, 0]
    assert set(logs) == {"loss", "mae", "weighted_mae"}
    assert logs["mae"] == pytest.approx(err.mean(), rel=1e-5)
    assert logs["weighted_mae"] == pytest.approx((err * w).sum() / w.sum(), rel=1e-5)
    assert logs["loss"] == pytest.approx(2.0 * (err ** 2 * w).mean(), rel=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_multi_output_model_loads_compiled_as_it_was(tmp_path, suffix):
    compile_kwargs = dict(loss={"reg": "mse", "cls": "sparse_categorical_crossentropy"},
                          loss_weights={"reg": 0.5, "cls": 2.0}, metrics={"reg": "mae", "cls": ["accuracy"]},
                          weighted_metrics={"cls": "accuracy"})
    model = _compiled_model(**compile_kwargs)
    x, y_reg, y_cls = _data()
    w = np.linspace(0.5, 2.0, len(x)).astype(np.float32)
    expected = model.evaluate(x, [y_reg, y_cls], sample_weight=w, verbose=0, return_dict=True)
    model.save(tmp_path / f"model{suffix}")
    loaded = keras.models.load_model(tmp_path / f"model{suffix}")
    got = loaded.evaluate(x, {"reg": y_reg, "cls": y_cls}, sample_weight=w, verbose=0, return_dict=True)
    assert got == pytest.approx(expected, rel=1e-6)


def test_sample_weights_per_output_as_dict_equal_list_and_weigh_only_their_output():
    x, y_reg, y_cls = _data()
    w_reg, w_cls = np.linspace(0.1, 2.0, len(x)).astype(np.float32), np.linspace(3.0, 0.5, len(x)).astype(np.float32)
    model = _compiled_model(loss=["mse", "sparse_categorical_crossentropy"])
    as_list = model.evaluate(x, [y_reg, y_cls], sample_weight=[w_reg, w_cls], verbose=0, return_dict=True)
    as_dict = model.evaluate(x, [y_reg, y_cls], sample_weight={"cls": w_cls, "reg": w_reg}, verbose=0,
                             return_dict=True)
    assert as_list == pytest.approx(as_dict)
    only_reg = model.evaluate(x, [y_reg, y_cls], sample_weight={"reg": w_reg}, verbose=0, return_dict=True)
    unweighted = model.evaluate(x, [y_reg, y_cls], verbose=0, return_dict=True)
    assert only_reg["reg_loss"] == pytest.approx(as_list["reg_loss"])
    assert only_reg["cls_loss"] == pytest.approx(unweighted["cls_loss"])
    assert only_reg["reg_loss"] != pytest.approx(unweighted["reg_loss"], rel=1e-3)
    with pytest.raises(ValueError, match="nope"):
        model.evaluate(x, [y_reg, y_cls], sample_weight={"nope": w_reg}, verbose=0)


def test_evaluate_lists_values_in_keras_order():
    """Keras 3 (checked by running it): the loss, each output's loss, then the metrics sorted by
    their log names; a single output keeps the compile order."""
    x, y_reg, y_cls = _data()
    model = _compiled_model(loss=["mse", "sparse_categorical_crossentropy"], metrics=["mae", "accuracy"])
    logs = model.evaluate(x, [y_reg, y_cls], verbose=0, return_dict=True)
    values = model.evaluate(x, [y_reg, y_cls], verbose=0)
    order = ["loss", "reg_loss", "cls_loss", "cls_accuracy", "reg_mae"]
    assert values == pytest.approx([logs[k] for k in order])
    single = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    single.compile("sgd", "mse", metrics=["mse", "mae"])
    logs = single.evaluate(x, y_reg, verbose=0, return_dict=True)
    assert single.evaluate(x, y_reg, verbose=0) == pytest.approx([logs["loss"], logs["mse"], logs["mae"]])
