"""keras.metrics against real Keras 3: every case of tests/fixtures/keras/metrics/ (made by
tests/fixtures/make_metric_fixtures.py) updated with its three batches eagerly, the same
metrics inside compiled fit/evaluate steps, string identifiers, configs and errors."""
import numpy as np
import pytest

from kcompiler import keras
from kcompiler.keras import metrics
from keras_fixtures import cases, indexed, load

UPDATE_CASES = [n for n in cases("metrics") if not n.startswith("fit_")]
FIT_CASES = [n for n in cases("metrics") if n.startswith("fit_")]


def make_metric(spec):
    kwargs = dict(spec["kwargs"])
    if spec["class_name"] == "MeanMetricWrapper":
        kwargs["fn"] = getattr(metrics, kwargs["fn"])
    return getattr(metrics, spec["class_name"])(**kwargs)


def test_fixture_cases_cover_every_keras_metric_class():
    covered = {load("metrics", n)["spec"]["class_name"] for n in UPDATE_CASES}
    keras3_classes = {"AUC", "Accuracy", "BinaryAccuracy", "BinaryCrossentropy", "BinaryIoU", "CategoricalAccuracy",
                      "CategoricalCrossentropy", "CategoricalHinge", "ConcordanceCorrelation", "CosineSimilarity",
                      "F1Score", "FBetaScore", "FalseNegatives", "FalsePositives", "Hinge", "IoU", "KLDivergence",
                      "LogCoshError", "Mean", "MeanAbsoluteError", "MeanAbsolutePercentageError", "MeanIoU",
                      "MeanMetricWrapper", "MeanSquaredError", "MeanSquaredLogarithmicError", "OneHotIoU",
                      "OneHotMeanIoU", "PearsonCorrelation", "Poisson", "Precision", "PrecisionAtRecall",
                      "R2Score", "Recall", "RecallAtPrecision", "RootMeanSquaredError", "SensitivityAtSpecificity",
                      "SparseCategoricalAccuracy", "SparseCategoricalCrossentropy", "SparseTopKCategoricalAccuracy",
                      "SpecificityAtSensitivity", "SquaredHinge", "Sum", "TopKCategoricalAccuracy", "TrueNegatives",
                      "TruePositives"}
    assert keras3_classes <= covered
    assert all(hasattr(metrics, c) for c in keras3_classes)


@pytest.mark.parametrize("name", UPDATE_CASES)
def test_three_weighted_updates_match_keras(name):
    case = load("metrics", name)
    metric = make_metric(case["spec"])
    for i in range(3):
        sw = case.get(f"sample_weight_{i}")
        if f"y_true_{i}" in case:
            metric.update_state(case[f"y_true_{i}"], case[f"y_pred_{i}"], sample_weight=sw)
        else:
            metric.update_state(case[f"y_pred_{i}"], sample_weight=sw)
        np.testing.assert_allclose(np.asarray(metric.result()), case[f"result_{i}"], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: after update {i + 1}")
    metric.reset_state()
    assert all(not np.any(v.numpy()) for v in metric.variables)


def fit_fixture_model(case, target="cpu"):
    """The fit fixtures' model with its initial weights, compiled with the case's metrics."""
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(4, activation="softmax")])
    model.set_weights(indexed(case, "w_init"))
    compiled = [m if isinstance(m, str) else make_metric(m) for m in case["spec"]["metrics"]]
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy", metrics=compiled,
                  target=target)
    return model


@pytest.mark.parametrize("name", FIT_CASES)
def test_fit_and_evaluate_with_stateful_metrics_match_keras(name):
    """AUC, Precision, TopK, MeanIoU, R2Score, F1Score, ... updated inside the compiled train and
    test steps, reset per epoch: History and evaluate() equal Keras's."""
    case = load("metrics", name)
    model = fit_fixture_model(case)
    history = model.fit(case["x"], case["y"], batch_size=16, epochs=2, shuffle=False, verbose=0,
                        validation_data=(case["x_val"], case["y_val"])).history
    assert sorted(history) == sorted(case["spec"]["history_keys"])
    for key in history:
        np.testing.assert_allclose(np.array(history[key], np.float32), case[f"history_{key}"], rtol=1e-3,
                                   atol=1e-5, err_msg=key)
    for got, expected in zip(model.get_weights(), indexed(case, "w_final")):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    evaluated = model.evaluate(case["x_val"], case["y_val"], verbose=0, return_dict=True)
    for key, value in evaluated.items():
        np.testing.assert_allclose(value, case[f"evaluate_{key}"], rtol=1e-3, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("identifier,cls,name", [
    ("auc", metrics.AUC, "auc"), ("AUC", metrics.AUC, None),
    ("top_k_categorical_accuracy", metrics.TopKCategoricalAccuracy, "top_k_categorical_accuracy"),
    ("sparse_top_k_categorical_accuracy", metrics.SparseTopKCategoricalAccuracy, "sparse_top_k_categorical_accuracy"),
    ("f1_score", metrics.F1Score, "f1_score"), ("f_beta_score", metrics.FBetaScore, "fbeta_score"),
    ("r2_score", metrics.R2Score, "r2_score"), ("precision", metrics.Precision, "precision"),
    ("root_mean_squared_error", metrics.RootMeanSquaredError, "root_mean_squared_error"),
    ("binary_io_u", metrics.BinaryIoU, None), ("pearson_correlation", metrics.PearsonCorrelation, None),
    ("log_cosh_error", metrics.LogCoshError, "logcosh"),
])
def test_string_identifiers_resolve_as_in_keras(identifier, cls, name):
    keras.backend.clear_session()  # automatic names count from zero again (auc, auc_1, ...)
    metric = metrics.get(identifier)
    assert type(metric) is cls
    if name is not None:
        assert metric.name == name


def test_metrics_needing_arguments_say_so():
    with pytest.raises(TypeError, match="num_classes"):
        metrics.get("mean_io_u")


@pytest.mark.parametrize("metric", [
    metrics.AUC(num_thresholds=11, curve="PR", summation_method="minoring", multi_label=True, num_labels=3,
                label_weights=[1.0, 2.0, 0.5]),
    metrics.AUC(thresholds=[0.2, 0.7]), metrics.PrecisionAtRecall(0.4, num_thresholds=30, class_id=1),
    metrics.SensitivityAtSpecificity(specificity=0.3), metrics.MeanIoU(3, ignore_class=0),
    metrics.IoU(4, [1, 2]), metrics.BinaryIoU([1], threshold=0.2), metrics.OneHotMeanIoU(5),
    metrics.F1Score(average="weighted", threshold=0.4), metrics.FBetaScore(beta=2.0),
    metrics.R2Score(class_aggregation=None, num_regressors=1), metrics.TopKCategoricalAccuracy(k=3),
    metrics.SparseTopKCategoricalAccuracy(k=2, from_sorted_ids=True), metrics.Precision(top_k=2, class_id=1),
])
def test_config_round_trip(metric):
    again = metrics.deserialize(metrics.serialize(metric))
    assert type(again) is type(metric) and again.get_config() == metric.get_config()


@pytest.mark.parametrize("make,error,match", [
    (lambda: metrics.AUC(curve="XY"), ValueError, "curve"),
    (lambda: metrics.AUC(summation_method="trapezoid"), ValueError, "summation_method"),
    (lambda: metrics.AUC(num_thresholds=1), ValueError, "num_thresholds"),
    (lambda: metrics.AUC(num_labels=3), ValueError, "multi_label"),
    (lambda: metrics.FBetaScore(beta=2), ValueError, "beta"),
    (lambda: metrics.F1Score(average="mean"), ValueError, "average"),
    (lambda: metrics.F1Score(threshold=1.5), ValueError, "threshold"),
    (lambda: metrics.IoU(3, target_class_ids=[0, 3]), ValueError, "out of range"),
    (lambda: metrics.SensitivityAtSpecificity(1.5), ValueError, "specificity"),
    (lambda: metrics.RecallAtPrecision(precision=-0.1), ValueError, "precision"),
    (lambda: metrics.R2Score(class_aggregation="median"), ValueError, "class_aggregation"),
    (lambda: metrics.Precision(thresholds=[0.5, 1.2]), ValueError, r"\[0, 1\]"),
])
def test_bad_arguments_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="2D inputs"):
        metrics.F1Score().update_state(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="class_id=5"):
        metrics.Precision(class_id=5).update_state(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="rank 2"):
        metrics.AUC(multi_label=True).update_state(np.zeros((4,), np.float32), np.zeros((4,), np.float32))


class BinaryTruePositivesPerBatch(metrics.Metric):
    """A tf.keras-style user metric: add_weight state, Variable.assign/assign_add/assign_sub and
    arithmetic on variables in update_state and result."""

    def __init__(self, name="tp_per_batch", **kwargs):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_weight(name="tp", initializer="zeros")
        self.batches = self.add_weight(name="batches", initializer="zeros")
        self.countdown = self.add_weight(name="countdown", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        hit = keras.ops.logical_and(keras.ops.greater(keras.ops.reshape(y_true, (-1,)), 0.5),
                                    keras.ops.greater(keras.ops.reshape(y_pred, (-1,)), 0.5))
        values = keras.ops.cast(hit, "float32")
        if sample_weight is not None:
            values = values * keras.ops.reshape(sample_weight, (-1,))
        self.true_positives.assign_add(keras.ops.sum(values))
        self.batches.assign(self.batches + 1)
        self.countdown.assign_sub(1.0)

    def result(self):
        return self.true_positives / self.batches

    def reset_state(self):
        for v in self.variables:
            v.assign(0.0)


def test_user_metric_in_tf_keras_style_eagerly():
    rng = np.random.default_rng(3)
    m = BinaryTruePositivesPerBatch()
    expected_tp = 0.0
    for n in (5, 7, 5):
        y_true, y_pred = rng.integers(0, 2, (n, 1)).astype(np.float32), rng.uniform(0, 1, (n, 1)).astype(np.float32)
        sw = rng.uniform(0, 2, n).astype(np.float32)
        m.update_state(y_true, y_pred, sample_weight=sw)
        expected_tp += float(np.sum(sw * ((y_true[:, 0] > 0.5) & (y_pred[:, 0] > 0.5))))
    np.testing.assert_allclose(m.result().numpy(), expected_tp / 3, rtol=1e-6)
    assert m.batches.numpy() == 3.0 and m.countdown.numpy() == -3.0
    m.reset_state()
    assert m.batches.numpy() == 0.0 and m.true_positives.numpy() == 0.0


def test_user_metric_in_tf_keras_style_in_fit_and_evaluate():
    """The step traces update_state then result: result reads this step's new state."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 2, (40, 1)).astype(np.float32)
    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    metric = BinaryTruePositivesPerBatch()
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=[metric])
    history = model.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0).history
    assert len(history["tp_per_batch"]) == 2 and metric.batches.numpy() == 4.0  # reset each epoch
    result = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    expected = float(np.sum((y[:, 0] > 0.5) & (pred[:, 0] > 0.5))) / 5
    np.testing.assert_allclose(result["tp_per_batch"], expected, rtol=1e-6)
    assert metric.countdown.numpy() == -5.0


def test_metric_variable_reads_follow_assignments_only_while_tracing():
    m = metrics.Mean()
    m.update_state(np.array([1.0, 3.0], np.float32))
    m.total.assign(10.0)  # eager assignment writes at once
    assert m.result().numpy() == 5.0
    assert isinstance(m.total, metrics.MetricVariable)


def test_assigning_a_value_of_another_shape_to_metric_state_raises():
    class Broken(metrics.Metric):
        def __init__(self):
            super().__init__(name="broken")
            self.counts = self.add_weight(shape=(3,), name="counts")

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.counts.assign(keras.ops.sum(y_pred))

        def result(self):
            return self.counts

    with pytest.raises(ValueError, match=r"'broken/counts': cannot assign a value of shape \(\) to a variable of "
                                         r"shape \(3,\)"):
        Broken().update_state(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))

