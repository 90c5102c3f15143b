"""A step that reports an error changes nothing (issue 6, item 4): after an out-of-range
Embedding id or a sparse label outside [0, num_classes), the weights (BatchNormalization's
moving statistics included), the optimizer's state and iterations, the metrics' state and
the program's step counter are bit for bit what they were before the step, and the error
names the layer (or loss), the offending value and the valid range."""
import re

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.errors import IndexRangeError
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend
from op_check import use_bounds_checks

EMBEDDING_ERROR = re.escape("Embedding 'embedding': id 12 is outside [0, 10) (input_dim=10)")

# Each test runs on every registered backend (the target fixture, tests/conftest.py): these
# guarantees live behind the backend interface.
TARGET = ["cpu"]


@pytest.fixture(autouse=True)
def _on_every_backend(target):
    TARGET[0] = target



def embedding_model(run_eagerly=False):
    backend.clear_session()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 4),
                              keras.layers.Flatten(), keras.layers.BatchNormalization(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", target=TARGET[0],
                  metrics=[keras.metrics.Precision(name="precision")], run_eagerly=run_eagerly)
    return model


def embedding_data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, (n, 3)).astype(np.int32), (rng.random((n, 1)) > 0.5).astype(np.float32)


def state(model):
    """Every piece of state a step may change, copied."""
    metric_state = [v.numpy() for m in model.compiled_metric_objects for v in m.variables]
    return ([np.array(w) for w in model.get_weights()] + [np.array(v.numpy()) for v in model.optimizer.variables]
            + [np.array(v) for v in metric_state] + [np.array(model.optimizer.iterations.numpy())])


def assert_same_state(before, after):
    assert len(before) == len(after)
    for i, (a, b) in enumerate(zip(before, after)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"state entry {i} changed"


def trained_embedding_model(run_eagerly=False):
    """A model two steps in, so that the optimizer slots, moving statistics and metric counts
    are not at their initial values."""
    model = embedding_model(run_eagerly)
    x, y = embedding_data()
    for _ in range(2):
        model.train_on_batch(x, y, reset_metrics=False)
    assert model.optimizer.iterations.numpy() == 2
    assert any(np.any(v.numpy()) for v in model.compiled_metric_objects[0].variables)
    return model


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("reset_metrics", [False, True])
def test_a_train_on_batch_with_an_out_of_range_id_changes_nothing(run_eagerly, reset_metrics):
    model = trained_embedding_model(run_eagerly)
    x, y = embedding_data(seed=1)
    x[5, 1] = 12
    before = state(model)
    with pytest.raises(IndexRangeError, match=EMBEDDING_ERROR):
        model.train_on_batch(x, y, reset_metrics=reset_metrics)
    assert_same_state(before, state(model))
    x[5, 1] = 3  # the model still trains afterwards
    model.train_on_batch(x, y)
    assert model.optimizer.iterations.numpy() == 3


def test_fit_stops_at_the_failing_batch_with_the_state_of_the_batch_before():
    model = trained_embedding_model()
    x, y = embedding_data(n=16, seed=2)
    x[13, 0] = 12  # in the fourth batch of four
    snapshots = []
    remember = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: snapshots.append(state(model)))
    with pytest.raises(IndexRangeError, match=EMBEDDING_ERROR):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[remember])
    assert len(snapshots) == 3
    assert_same_state(snapshots[-1], state(model))
    assert model.optimizer.iterations.numpy() == 2 + 3


def test_an_evaluation_step_with_an_out_of_range_id_keeps_the_metric_state():
    model = trained_embedding_model()
    x, y = embedding_data(seed=3)
    x[6, 2] = 12  # in the second batch of two
    before = state(model)
    with pytest.raises(IndexRangeError, match=EMBEDDING_ERROR):
        model.test_on_batch(x, y, reset_metrics=False)
    assert_same_state(before, state(model))
    snapshots = []  # evaluate resets the metrics when it starts, as Keras does; the failed step keeps them
    remember = keras.callbacks.LambdaCallback(on_test_batch_end=lambda batch, logs: snapshots.append(state(model)))
    with pytest.raises(IndexRangeError, match=EMBEDDING_ERROR):
        model.evaluate(x, y, batch_size=4, verbose=0, callbacks=[remember])
    assert len(snapshots) == 1
    assert_same_state(snapshots[0], state(model))


def test_the_program_step_counter_does_not_advance_on_a_failed_step():
    model = trained_embedding_model()
    program = kcompiler.compile(model, training=True, target=TARGET[0])
    x, y = embedding_data(seed=4)
    program.train_step(x, y)
    before = state(model)
    x[1, 1] = -1
    with pytest.raises(IndexRangeError, match=re.escape("Embedding 'embedding': id -1 is outside [0, 10)")):
        program.train_step(x, y)
    assert program.iterations == 1
    assert_same_state(before, state(model))


def test_an_eager_embedding_call_names_the_layer_and_the_id():
    model = embedding_model()
    x, _ = embedding_data()
    x[0, 0] = 12
    with pytest.raises(IndexRangeError, match=EMBEDDING_ERROR):
        model(x)
    with pytest.raises(IndexRangeError, match=EMBEDDING_ERROR):
        model.predict(x, verbose=0)


def test_a_bounds_checked_build_keeps_the_state_too(monkeypatch):
    use_bounds_checks(monkeypatch)
    model = trained_embedding_model()
    x, y = embedding_data(seed=5)
    x[7, 2] = 12
    before = state(model)
    with pytest.raises(IndexRangeError, match=EMBEDDING_ERROR):
        model.train_on_batch(x, y)
    assert_same_state(before, state(model))


def classifier(run_eagerly=False, loss="sparse_categorical_crossentropy"):
    backend.clear_session()
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(5, activation="softmax")])
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"], run_eagerly=run_eagerly, target=TARGET[0])
    return model


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("label", [5, 7, -1])
def test_a_sparse_label_outside_the_classes_raises_and_changes_nothing(run_eagerly, label):
    model = classifier(run_eagerly)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)).astype(np.float32), rng.integers(0, 5, 6).astype(np.int32)
    model.train_on_batch(x, y)
    before = state(model)
    y[4] = label
    message = re.escape(f"sparse_categorical_crossentropy: label {label} is outside [0, 5) (num_classes=5)")
    # int32 labels given to the program itself reach the step's own check (check_index in the loss)
    with pytest.raises(IndexRangeError, match=message):
        kcompiler.compile(model, training=True, target=TARGET[0]).train_step(x, y)
    # fit, evaluate and train_on_batch check the whole label array before any step (a ValueError,
    # as IndexRangeError is too)
    for call in (lambda: model.train_on_batch(x, y), lambda: model.fit(x, y, batch_size=6, verbose=0),
                 lambda: model.evaluate(x, y, verbose=0)):
        with pytest.raises(ValueError, match=f"label value of {label} which is outside"):
            call()
    assert_same_state(before, state(model))


def test_an_ignored_class_is_not_out_of_range():
    model = classifier(loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=-1))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)).astype(np.float32), rng.integers(0, 5, 6).astype(np.int32)
    y[2] = -1
    assert np.isfinite(model.train_on_batch(x, y)[0])


def test_a_kernel_caught_outside_its_buffer_commits_no_update(monkeypatch):
    """Bounds-checked builds test the status after every kernel: a kernel that reads past its
    input (a deliberately broken kernel description) stops the step before the variables are
    written, and the error names its node."""
    from kcompiler.errors import KCompilerError
    from kcompiler.ir.graph import GraphBuilder
    from kcompiler.ir.registry import get_op
    from kcompiler.keras.variables import Variable
    from kcompiler.schedule.kernel import Buffer, Kernel, Load, Store, Var, loop
    from op_check import run_compiled

    def off_by_one(node, in_types, name):
        n, i = int(np.prod(in_types[0].shape)), Var("i")
        return Kernel(name, (Buffer("out0", "float32", n, True), Buffer("in0", "float32", n, False)),
                      (loop("i", n, [Store("out0", i, Load("in0", i + 1, "float32"))]),))

    use_bounds_checks(monkeypatch)
    monkeypatch.setattr(get_op("transpose"), "describe", off_by_one)
    weights = Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
    b = GraphBuilder(name="broken_update")
    w = b.variable(weights)
    x = b.input("x", TensorType((2, 3)))
    moved = b.op("transpose", b.op("add", w, x), perm=(0, 1))
    b.g.graph["updates"][w] = b.op("mul", moved, b.scalar(2.0))
    b.g.graph["outputs"] = [moved]
    with pytest.raises(KCompilerError, match=r"error 2 in node %\d+ transpose .*indexed outside a buffer"):
        run_compiled(b.g, {"x": np.ones((2, 3), np.float32)})
    assert np.array_equal(weights.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))
