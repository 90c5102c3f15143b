"""Several threads running the same compiled program at once each get their own answers.

Every thread feeds inputs of its own (different scales and offsets per thread and per call,
so a result computed from another thread's input, or half-overwritten by it, cannot pass)
and every result is compared with a single-threaded run of the same inputs. The threads
start together (a barrier) on models that have not run yet, so they also specialise and
compile concurrently.
"""
import threading

import numpy as np
import pytest

import kcompiler
from kcompiler import keras

THREADS = 4
CALLS = 200
VARIANTS = 10  # distinct inputs per thread, cycled through

# Each test runs on every registered backend (the target fixture, tests/conftest.py): these
# guarantees live behind the backend interface.
TARGET = ["cpu"]


@pytest.fixture(autouse=True)
def _on_every_backend(target):
    TARGET[0] = target



def _model(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"], target=TARGET[0])
    return model


def _inputs(thread, rows=16):
    rng = np.random.default_rng(100 + thread)
    return [(rng.standard_normal((rows, 8)) * (thread + 1) + 3 * thread + 0.01 * v).astype(np.float32)
            for v in range(VARIANTS)]


def _run_threads(work, n_threads):
    """Run work(thread_index) on n_threads threads started together; returns their results."""
    barrier = threading.Barrier(n_threads)
    results, errors = [None] * n_threads, []

    def target(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _assert_same(results, expected):
    """Every thread's every result equals the single-threaded one for the same input."""
    wrong = sum(not np.array_equal(got, expected[t][c % VARIANTS])
                for t, calls in enumerate(results) for c, got in enumerate(calls))
    total = sum(len(calls) for calls in results)
    assert wrong == 0, f"{wrong} of {total} concurrent results differ from the single-threaded ones"


def test_concurrent_model_predict_gives_each_thread_its_own_results():
    model = _model(0)
    inputs = [_inputs(t) for t in range(THREADS)]
    results = _run_threads(lambda t: [model.predict(inputs[t][c % VARIANTS], verbose=0) for c in range(CALLS)],
                           THREADS)
    expected = [[model.predict(x, verbose=0) for x in inputs[t]] for t in range(THREADS)]
    _assert_same(results, expected)
    program = model._runtime_steps[1]._predict
    assert len(program._specialized) == 1  # specialised and compiled once, not once per thread


def test_concurrent_program_predict_gives_each_thread_its_own_results():
    program = kcompiler.compile(_model(1), target=TARGET[0])
    inputs = [_inputs(t, rows=8 + t % 2) for t in range(THREADS)]  # two threads on each batch size
    results = _run_threads(lambda t: [program.predict(inputs[t][c % VARIANTS]) for c in range(CALLS)], THREADS)
    expected = [[program.predict(x) for x in inputs[t]] for t in range(THREADS)]
    _assert_same(results, expected)
    assert len(program._specialized) == 2


def test_concurrent_eager_layer_calls_give_each_thread_its_own_results():
    keras.utils.set_random_seed(2)
    layer = keras.layers.Dense(16, activation="tanh")
    inputs = [_inputs(t) for t in range(2)]
    results = _run_threads(lambda t: [layer(inputs[t][c % VARIANTS]).numpy() for c in range(CALLS)], 2)
    expected = [[layer(x).numpy() for x in inputs[t]] for t in range(2)]
    _assert_same(results, expected)


def test_concurrent_evaluate_gives_each_thread_its_own_results():
    model = _model(3)
    data = []
    for t in range(THREADS):
        rng = np.random.default_rng(200 + t)
        data.append([(x, rng.standard_normal((len(x), 4)).astype(np.float32) + t) for x in _inputs(t)])
    calls = CALLS // 2  # an evaluate call does more Python work per native call than predict
    results = _run_threads(lambda t: [model.evaluate(*data[t][c % VARIANTS], verbose=0) for c in range(calls)],
                           THREADS)
    expected = [[model.evaluate(x, y, verbose=0) for x, y in data[t]] for t in range(THREADS)]
    _assert_same(results, expected)


def test_concurrent_convolutions_give_each_thread_its_own_results():
    """Convolutions split their work over helper threads inside generated code (kc_parallel_run,
    the SGEMM): several callers at once must not share any of that state either."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((24, 24, 8)), keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(3)])
    program = kcompiler.compile(model, batch_size=8, target=TARGET[0])
    if TARGET[0] == "cpu":
        assert any("kc_parallel_run" in k.source for k in program.kernels)  # the parallel path runs
    inputs = []
    for t in range(2):
        rng = np.random.default_rng(300 + t)
        inputs.append([(rng.standard_normal((8, 24, 24, 8)) * (t + 1) + v).astype(np.float32)
                       for v in range(VARIANTS)])
    results = _run_threads(lambda t: [program.predict(inputs[t][c % VARIANTS]) for c in range(CALLS // 4)], 2)
    expected = [[program.predict(x) for x in inputs[t]] for t in range(2)]
    _assert_same(results, expected)
