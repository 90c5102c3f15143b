"""Losses against real Keras 3: every fixture case's value (eager) and gradient w.r.t. y_pred
(traced, differentiated by the autodiff pass, run on the reference interpreter), the seed's
examples bit for bit, names, configs and error messages."""
import numpy as np
import pytest

from kcompiler.errors import ShapeError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend, losses, ops
from kcompiler.keras.tensor import SymbolicTensor
from kcompiler.passes.autodiff import gradients
from kcompiler.passes.shape_inference import infer_shapes
from keras_fixtures import cases, load


def assert_close(got, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * max(1.0, float(np.abs(expected).max())))


def make_loss(spec):
    return getattr(losses, spec["class_name"])(**spec.get("kwargs", {}))


def traced_loss_and_grad(loss_obj, y_true, y_pred, sample_weight=None, batch=None):
    """Trace loss_obj into a graph (batch dimension ``batch``: None = symbolic), specialise its
    shapes, differentiate sum(loss) w.r.t. y_pred and run it on the reference interpreter, as
    the compile pipeline does (traced -> shaped -> differentiated)."""
    b = backend.new_trace_builder("loss")

    def graph_input(name, a):
        return SymbolicTensor(b, b.input(name, TensorType((batch,) + a.shape[1:], str(a.dtype))))

    feeds = {"y_true": y_true, "y_pred": y_pred}
    yt, yp = graph_input("y_true", y_true), graph_input("y_pred", y_pred)
    sw = None
    if sample_weight is not None:
        sw = graph_input("sample_weight", sample_weight)
        feeds["sample_weight"] = sample_weight
    with backend.tracing(b):
        loss = loss_obj(yt, yp, sample_weight=sw)
        total = ops.sum(loss)
    shaped = GraphBuilder(infer_shapes(b.g, {k: TensorType(a.shape, str(a.dtype)) for k, a in feeds.items()}))
    (grad,) = gradients(shaped, total.node, [yp.node])
    shaped.g.graph["outputs"] = [loss.node, grad]
    (value, g), _ = run_reference(shaped.g, feeds)
    return value, g


LOSS_CASES = cases("losses")


@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_value_matches_keras(name):
    case = load("losses", name)
    args = [case["y_true"], case["y_pred"]] + ([case["sample_weight"]] if "sample_weight" in case else [])
    got = make_loss(case["spec"])(*args)
    assert got.shape == case["loss"].shape
    assert_close(got.numpy(), case["loss"])


@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_gradient_matches_keras(name):
    case = load("losses", name)
    batch = case["y_pred"].shape[0] if case["y_pred"].ndim == 1 or "axis0" in name else None
    value, grad = traced_loss_and_grad(make_loss(case["spec"]), case["y_true"], case["y_pred"],
                                       case.get("sample_weight"), batch=batch)
    assert_close(value, case["loss"])
    assert_close(grad, case["grad"])


SEED = [  # the seed's examples and the values it prints (tf.keras), which Keras 3 reproduces bit for bit
    (losses.MeanSquaredError, {}, [0., 1.], [0.1, 0.8], 0.024999999),
    (losses.MeanAbsoluteError, {}, [0., 1.], [0.1, 0.8], 0.14999999),
    (losses.BinaryCrossentropy, {"from_logits": True}, [0, 1, 0, 0], [-18.6, 0.51, 2.94, -12.8], 0.865458),
    (losses.CategoricalCrossentropy, {}, [[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]], 1.1769392),
    (losses.SparseCategoricalCrossentropy, {}, [1, 2], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]], 1.1769392),
    (losses.CosineSimilarity, {}, [1., 1.], [2., 2.], -0.99999994),
    (losses.CosineSimilarity, {}, [1., 1.], [2., -2.], -0.0),
]


@pytest.mark.parametrize("cls,kwargs,y_true,y_pred,expected", SEED)
def test_seed_examples(cls, kwargs, y_true, y_pred, expected):
    got = cls(**kwargs)(y_true, y_pred)
    assert got.shape == () and got.dtype == "float32"
    assert got.numpy() == np.float32(expected)
    assert np.signbit(got.numpy()) == np.signbit(np.float32(expected))


def test_sample_weight_divides_by_number_of_samples():
    y_true = np.zeros((4, 2), np.float32)
    y_pred = np.ones((4, 2), np.float32)
    sw = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    assert losses.MeanSquaredError()(y_true, y_pred, sample_weight=sw).numpy() == np.float32(0.25)
    assert losses.MeanSquaredError(reduction="sum")(y_true, y_pred, sample_weight=sw).numpy() == 1.0
    none = losses.MeanSquaredError(reduction="none")(y_true, y_pred, sample_weight=sw).numpy()
    np.testing.assert_array_equal(none, [1, 0, 0, 0])


def test_reductions_and_aliases():
    y_true, y_pred = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    assert losses.MeanAbsoluteError(reduction="auto").reduction == "sum_over_batch_size"
    assert losses.MeanAbsoluteError(reduction=losses.Reduction.SUM)(y_true, y_pred).numpy() == 2.0
    assert losses.MeanAbsoluteError(reduction=None)(y_true, y_pred).shape == (2,)
    with pytest.raises(ValueError, match="reduction"):
        losses.MeanAbsoluteError(reduction="average")


def test_sparse_labels_int_float_and_column_agree():
    y_pred = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]], np.float32)
    loss = losses.SparseCategoricalCrossentropy()
    expected = loss(np.array([1, 2], np.int32), y_pred).numpy()
    assert loss(np.array([1.0, 2.0], np.float32), y_pred).numpy() == expected
    assert loss(np.array([[1], [2]], np.int32), y_pred).numpy() == expected


def test_sparse_labels_of_wrong_shape_raise():
    y_pred = np.full((4, 5), 0.2, np.float32)
    with pytest.raises(ValueError, match=r"SparseCategoricalCrossentropy.*\(4, 3\).*\(4, 5\)"):
        losses.SparseCategoricalCrossentropy()(np.zeros((4, 3), np.int32), y_pred)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        losses.SparseCategoricalCrossentropy()(np.zeros((3,), np.int32), y_pred)


def test_one_hot_width_mismatch_raises():
    y_pred = np.full((4, 5), 0.2, np.float32)
    with pytest.raises(ValueError, match=r"CategoricalCrossentropy.*\(4, 3\).*\(4, 5\)"):
        losses.CategoricalCrossentropy()(np.zeros((4, 3), np.float32), y_pred)
    with pytest.raises(ShapeError, match=r"BinaryCrossentropy.*\(4, 3\).*\(4, 5\)"):
        losses.BinaryCrossentropy()(np.zeros((4, 3), np.float32), y_pred)
    with pytest.raises(ValueError, match=r"MeanSquaredError.*\(4, 3\).*\(4, 5\)"):
        losses.MeanSquaredError()(np.zeros((4, 3), np.float32), y_pred)


def test_ignore_class_masks_those_labels():
    y_pred = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]], np.float32)
    y_true = np.array([1, -1, 0], np.int32)
    got = losses.SparseCategoricalCrossentropy(ignore_class=-1)(y_true, y_pred).numpy()
    expected = -(np.log(np.float32(0.7)) + np.log(np.float32(0.5))) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_crossentropy_of_a_traced_softmax_uses_its_logits():
    # Inside a compiled step Keras 3 reads the softmax's logits (no clipping): a saturated
    # softmax still gives the exact loss and a non-zero gradient.
    b = backend.new_trace_builder("loss")
    logits = SymbolicTensor(b, b.input("logits", TensorType((1, 3))))
    labels = SymbolicTensor(b, b.input("labels", TensorType((1, 3))))
    with backend.tracing(b):
        loss = losses.CategoricalCrossentropy()(labels, ops.softmax(logits))
    (grad,) = gradients(b, loss.node, [logits.node])
    b.g.graph["outputs"] = [loss.node, grad]
    z = np.array([[40.0, 0.0, 0.0]], np.float32)
    (value, g), _ = run_reference(b.g, {"logits": z, "labels": np.array([[0, 1, 0]], np.float32)})
    np.testing.assert_allclose(value, 40.0, rtol=1e-6)
    np.testing.assert_allclose(g, [[1.0, -1.0, 0.0]], atol=1e-6)


def test_function_forms_and_names():
    y_true, y_pred = np.array([[0.0, 1.0]], np.float32), np.array([[0.5, 0.5]], np.float32)
    assert losses.get("mse") is losses.mean_squared_error
    assert losses.get("mean_squared_error") is losses.mean_squared_error
    assert isinstance(losses.get("MeanSquaredError"), losses.MeanSquaredError)
    for name in ["mse", "mae", "mape", "msle", "binary_crossentropy", "categorical_crossentropy",
                 "hinge", "squared_hinge", "kld", "kl_divergence", "poisson", "cosine_similarity", "huber",
                 "log_cosh", "categorical_hinge"]:
        fn = losses.get(name)
        assert fn(y_true, y_pred).shape == (1,), name
    assert losses.get("sparse_categorical_crossentropy")([1], y_pred).shape == (1,)
    with pytest.raises(ValueError, match="Known losses:.*mean_squared_error"):
        losses.get("mean_sqared_error")


def test_user_function_is_wrapped_as_a_loss():
    def my_loss(y_true, y_pred):
        return ops.mean(ops.abs(y_true - y_pred) * 2.0, axis=-1)

    loss = losses.resolve_loss(my_loss)
    assert isinstance(loss, losses.Loss) and loss.name == "my_loss"
    assert loss([[0.0, 1.0]], [[1.0, 1.0]]).numpy() == 1.0
    value, grad = traced_loss_and_grad(loss, np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32))
    assert value == 2.0
    np.testing.assert_allclose(grad, np.full((2, 2), 0.5))
    assert losses.resolve_loss("mse").name == "mse"


def test_subclassed_loss():
    class Doubled(losses.Loss):
        def call(self, y_true, y_pred):
            return ops.sum(ops.square(y_true - y_pred), axis=-1) * 2.0

    assert Doubled()([[1.0, 1.0]], [[0.0, 0.0]]).numpy() == 4.0
    assert Doubled(name="x", reduction="sum").get_config() == {"name": "x", "reduction": "sum"}


@pytest.mark.parametrize("cls,kwargs", [
    (losses.BinaryCrossentropy, {"from_logits": True, "label_smoothing": 0.1}),
    (losses.CategoricalCrossentropy, {"label_smoothing": 0.2, "axis": -1}),
    (losses.SparseCategoricalCrossentropy, {"from_logits": True, "ignore_class": 3}),
    (losses.Huber, {"delta": 0.5}),
    (losses.CosineSimilarity, {"axis": 0}),
    (losses.MeanSquaredError, {"reduction": "sum", "name": "m"}),
])
def test_config_round_trip(cls, kwargs):
    loss = cls(**kwargs)
    config = loss.get_config()
    for k, v in kwargs.items():
        assert config[k] == v
    again = cls.from_config(config)
    assert again.get_config() == config
    assert losses.deserialize(losses.serialize(loss)).get_config() == config
