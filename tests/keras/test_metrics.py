"""Metrics: the seed's examples, values from real Keras 3.15 (computed with the same inputs by
/work/tfenv and written here), in-graph updates for the compiled step, and name resolution."""
import numpy as np
import pytest

from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend, losses, metrics, ops
from kcompiler.keras.tensor import SymbolicTensor


def test_seed_examples():
    m = metrics.Accuracy()
    m.update_state([1, 2, 3, 4], [0, 2, 3, 4])
    assert m.result().numpy() == np.float32(0.75)
    m = metrics.CategoricalAccuracy()
    m.update_state([[0, 0, 1], [0, 1, 0], [0, 1, 0]], [[0.1, 0.1, 0.8], [0.05, 0.95, 0], [0.3, 0.3, 0.4]])
    assert m.result().numpy() == np.float32(0.6666667)
    m = metrics.Mean()
    m.update_state([1, 3, 5, 7])
    assert m.result().numpy() == 4.0
    m = metrics.Sum()
    m.update_state([1, 2, 3, 4])
    assert m.result().numpy() == 10.0
    m = metrics.TruePositives()
    m.update_state([0, 1, 1, 1], [1, 0, 1, 1])
    assert m.result().numpy() == 2.0


Y_BIN = np.array([[0, 1], [1, 1], [0, 0], [1, 0]], np.float32)
P_BIN = np.array([[0.2, 0.7], [0.6, 0.4], [0.5, 0.1], [0.9, 0.55]], np.float32)
SW = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
Y_ONEHOT = np.eye(3, dtype=np.float32)[[0, 2, 1, 2]]
P_CAT = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.2, 0.6, 0.2]], np.float32)
Y_SPARSE = np.array([0, 2, 1, 2], np.int32)
_rng = np.random.default_rng(0)
REG_TRUE = _rng.normal(size=(4, 3)).astype(np.float32)
REG_PRED = _rng.normal(size=(4, 3)).astype(np.float32)

# (class, kwargs, y_true, y_pred, sample_weight, result after one update, after a second (reversed) one)
KERAS_CASES = [
    ("Accuracy", {}, [[1], [2], [3], [4]], [[0], [2], [3], [4]], None, 0.75, 0.75),
    ("BinaryAccuracy", {}, Y_BIN, P_BIN, None, 0.75, 0.75),
    ("BinaryAccuracy", {"threshold": 0.65}, Y_BIN, P_BIN, SW, 0.8571428656578064, 0.8571428656578064),
    ("CategoricalAccuracy", {}, Y_ONEHOT, P_CAT, None, 0.5, 0.5),
    ("CategoricalAccuracy", {}, Y_ONEHOT, P_CAT, SW, 0.4285714328289032, 0.4285714328289032),
    ("SparseCategoricalAccuracy", {}, Y_SPARSE, P_CAT, None, 0.5, 0.5),
    ("SparseCategoricalAccuracy", {}, Y_SPARSE[:, None], P_CAT, SW, 0.4285714328289032, 0.4285714328289032),
    ("MeanSquaredError", {}, REG_TRUE, REG_PRED, None, 1.5744616985321045, 1.5744616985321045),
    ("MeanSquaredError", {}, REG_TRUE, REG_PRED, SW, 1.1833146810531616, 1.1833146810531616),
    ("MeanAbsoluteError", {}, REG_TRUE, REG_PRED, SW[:, None], 0.7915821075439453, 0.7915821075439453),
    ("KLDivergence", {}, Y_ONEHOT * 0.8 + 0.2 / 3, P_CAT, None, 0.5347057580947876, 0.5347057580947876),
    ("TruePositives", {}, Y_BIN, P_BIN, None, 3.0, 6.0),
    ("TrueNegatives", {}, Y_BIN, P_BIN, SW, 5.0, 10.0),
    ("FalsePositives", {"thresholds": [0.3, 0.5, 0.8]}, Y_BIN, P_BIN, None, [2.0, 1.0, 0.0], [4.0, 2.0, 0.0]),
    ("FalseNegatives", {}, Y_BIN, P_BIN, SW, 0.5, 1.0),
    ("Precision", {}, Y_BIN, P_BIN, None, 0.75, 0.75),
    ("Precision", {"thresholds": [0.3, 0.6]}, Y_BIN, P_BIN, SW, [0.5, 1.0], [0.5, 1.0]),
    ("Recall", {}, Y_BIN, P_BIN, None, 0.75, 0.75),
    ("Recall", {"class_id": 1}, Y_BIN, P_BIN, SW, 0.6666666865348816, 0.6666666865348816),
    ("Precision", {"class_id": 0}, Y_BIN, P_BIN, None, 1.0, 1.0),
]


@pytest.mark.parametrize("cls,kwargs,y_true,y_pred,sw,first,second", KERAS_CASES)
def test_metric_matches_keras(cls, kwargs, y_true, y_pred, sw, first, second):
    m = getattr(metrics, cls)(**kwargs)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    m.update_state(y_true, y_pred, sample_weight=sw)
    np.testing.assert_allclose(m.result().numpy(), first, rtol=1e-6)
    m.update_state(y_true[::-1], y_pred[::-1], sample_weight=None if sw is None else sw[::-1])
    np.testing.assert_allclose(m.result().numpy(), second, rtol=1e-6)
    assert len(m._eager_graphs) == 1  # the second update reused the traced graph
    m.reset_state()
    assert all(not np.any(v.numpy()) for v in m.variables)


def test_mean_and_sum_with_sample_weights():
    m = metrics.Mean()
    m.update_state([1.0, 2.0, 3.0], sample_weight=[1.0, 0.0, 3.0])
    assert m.result().numpy() == 2.5
    m = metrics.Mean()
    m.update_state(np.ones((2, 3)) * [[1], [3]], sample_weight=[1.0, 3.0])
    assert m.result().numpy() == 2.5
    m = metrics.Sum()
    m.update_state(np.ones((2, 3)) * [[1], [3]], sample_weight=[1.0, 3.0])
    assert m.result().numpy() == 30.0


def test_call_updates_and_returns_result():
    m = metrics.Mean(name="loss_mean")
    assert m(np.array([2.0, 4.0])).numpy() == 3.0
    assert m(np.array([6.0])).numpy() == 4.0
    assert m.name == "loss_mean" and [v.path for v in m.variables] == ["loss_mean/total", "loss_mean/count"]


def test_update_state_traces_into_a_graph_with_symbolic_batch():
    """The compiled step's form: update ops and result emitted into the graph being traced; the result
    read in the same graph sees this step's update."""
    b = backend.new_trace_builder("step")
    y_true = SymbolicTensor(b, b.input("y_true", TensorType((None,), "int32")))
    y_pred = SymbolicTensor(b, b.input("y_pred", TensorType((None, 3))))
    acc, prec = metrics.SparseCategoricalAccuracy(), metrics.Precision()
    acc.update_state(np.array([0], np.int32), np.array([[0.9, 0.05, 0.05]], np.float32))  # eager: 1 of 1
    with backend.tracing(b):
        acc.update_state(y_true, y_pred)
        prec.update_state(ops.cast(ops.greater(y_true, 0), "float32"), y_pred[:, 1])
        b.g.graph["outputs"] = [acc.result().node, prec.result().node]
    assert len(b.g.graph["updates"]) == 4
    feeds = {"y_true": np.array([0, 2, 2], np.int32),
             "y_pred": np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]], np.float32)}
    (acc_value, prec_value), updates = run_reference(b.g, feeds)
    assert acc_value == np.float32(0.75)  # (1 + 2) of (1 + 3)
    assert prec_value == 1.0
    assert sorted(float(np.sum(u)) for u in updates.values()) == [0.0, 1.0, 3.0, 4.0]
    assert acc.result().numpy() == 1.0  # the variables change only when the step runs


def test_user_metric_subclass():
    class MaxAbs(metrics.Metric):
        def __init__(self, name="max_abs"):
            super().__init__(name=name)
            self.best = self.add_weight(name="best")

        def update_state(self, y_true, y_pred, sample_weight=None):
            worst = ops.max(ops.abs(ops.subtract(y_true, y_pred)))
            self.assign(self.best, ops.maximum(metrics.read(self.best), worst))

        def result(self):
            return metrics.read(self.best)

    m = MaxAbs()
    m.update_state(np.zeros((2, 2), np.float32), np.array([[1, -3], [2, 0]], np.float32))
    m.update_state(np.zeros((1, 2), np.float32), np.array([[1, 2]], np.float32))
    assert m.result().numpy() == 3.0


@pytest.mark.parametrize("loss,y_true_shape,y_pred_shape,expected", [
    ("binary_crossentropy", None, None, metrics.BinaryAccuracy),
    (losses.BinaryCrossentropy(from_logits=True), None, None, metrics.BinaryAccuracy),
    ("sparse_categorical_crossentropy", None, None, metrics.SparseCategoricalAccuracy),
    (losses.SparseCategoricalCrossentropy(from_logits=True), None, None, metrics.SparseCategoricalAccuracy),
    ("categorical_crossentropy", None, None, metrics.CategoricalAccuracy),
    (losses.CategoricalCrossentropy, None, None, metrics.CategoricalAccuracy),
    ("mse", None, (None, 1), metrics.BinaryAccuracy),
    ("mse", (None,), (None, 10), metrics.SparseCategoricalAccuracy),
    ("mse", (None, 1), (None, 10), metrics.SparseCategoricalAccuracy),
    ("mse", (None, 10), (None, 10), metrics.CategoricalAccuracy),
])
def test_accuracy_resolution(loss, y_true_shape, y_pred_shape, expected):
    for name in ("accuracy", "acc"):
        m = metrics.resolve_metric(name, loss, y_true_shape, y_pred_shape)
        assert type(m) is expected and m.name == name
    assert type(metrics.get("accuracy", loss=loss, y_true_shape=y_true_shape, y_pred_shape=y_pred_shape)) is expected


def test_metric_names():
    assert type(metrics.get("accuracy")) is metrics.Accuracy
    m = metrics.resolve_metric("mae")
    assert type(m) is metrics.MeanAbsoluteError and m.name == "mae"
    assert type(metrics.resolve_metric("mse")) is metrics.MeanSquaredError
    assert type(metrics.get("MeanSquaredError")) is metrics.MeanSquaredError
    assert type(metrics.get("precision")) is metrics.Precision
    with pytest.raises(ValueError, match="Known metrics:.*mean_absolute_error"):
        metrics.get("mean_absolute_eror")


def test_function_metric_is_wrapped():
    def twice_error(y_true, y_pred):
        return ops.mean(ops.abs(y_true - y_pred), axis=-1) * 2.0

    m = metrics.resolve_metric(twice_error)
    assert isinstance(m, metrics.MeanMetricWrapper) and m.name == "twice_error"
    m.update_state(np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32))
    assert m.result().numpy() == 2.0


def test_configs_round_trip():
    for m in [metrics.BinaryAccuracy(threshold=0.3), metrics.Precision(thresholds=[0.2, 0.4], class_id=1),
              metrics.Mean(name="m"), metrics.TruePositives(thresholds=0.7)]:
        again = metrics.deserialize(metrics.serialize(m))
        assert type(again) is type(m) and again.get_config() == m.get_config()
    assert metrics.BinaryAccuracy(threshold=0.3).get_config() == {"name": "binary_accuracy", "dtype": "float32",
                                                                   "threshold": 0.3}
