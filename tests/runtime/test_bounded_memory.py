"""No unbounded growth in memory: compiled engines of programs nobody can reach are freed, and
a program keeps a bounded number of batch-size specialisations (least recently used evicted;
an evicted one comes back, from the disk cache, and computes the same results)."""
import gc
import subprocess
import sys
import textwrap
import weakref

import numpy as np

import kcompiler
from kcompiler import keras
from kcompiler.codegen.llvm import jit
from kcompiler.options import default_options
from kcompiler.runtime.specializations import SpecializationCache

RNG = np.random.default_rng(0)
X = RNG.standard_normal((48, 6)).astype(np.float32)
Y = RNG.standard_normal((48, 2)).astype(np.float32)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    return model


def _compiled_modules(model):
    """The CompiledModules of every program the model's fit/predict/evaluate made."""
    steps = model._runtime_steps[1]
    graphs = [c for program in (steps._train, steps._test, steps._predict) for c, _ in program._specialized.values()]
    return [g.module for g in graphs]


def _cycle():
    """Build, fit, predict, evaluate and drop a model; weak references to its compiled modules."""
    model = _model()
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    model.predict(X, verbose=0)
    model.evaluate(X, Y, verbose=0)
    refs = [weakref.ref(m) for m in _compiled_modules(model)]
    assert len(refs) >= 3
    return refs


def test_engines_of_discarded_models_are_freed():
    _cycle()
    gc.collect()
    live_before = jit.live_module_count()
    refs = []
    for _ in range(30):
        refs += _cycle()
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert jit.live_module_count() == live_before


def test_train_on_batch_keeps_a_bounded_number_of_specializations():
    model = _model(1)
    # the same model and steps with room for every batch size: the reference
    reference_model = _model(1)
    reference = kcompiler.compile(reference_model, training=True, max_specializations=64)
    sizes = list(range(1, 21)) + [1, 2, 3, 20, 5]  # 1, 2, 3 and 5 were evicted before they came back
    for n in sizes:
        logs = model.train_on_batch(X[:n], Y[:n], return_dict=True)
        expected = reference.train_step(X[:n], Y[:n])
        assert logs == expected, n
        assert len(model._runtime_steps[1]._train._specialized) <= default_options().max_specializations
    assert len(reference._specialized) == 20
    for got, want in zip(model.get_weights(), reference_model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_predict_after_eviction_matches():
    model = _model(2)
    program = kcompiler.compile(model, max_specializations=2)
    first = {n: program.predict(X[:n]) for n in (3, 4, 5)}  # 3 is evicted by 5
    assert len(program._specialized) == 2
    first_kernels = program.kernels
    for n in (3, 4, 5):
        np.testing.assert_array_equal(program.predict(X[:n]), first[n])
    assert program.kernels is first_kernels  # kernels and dumps still show the first specialisation


def test_cache_evicts_the_least_recently_used_entry():
    cache = SpecializationCache(2)
    made = []

    def make(key):
        made.append(key)
        return key.upper()

    for key in ("a", "b", "a", "c", "a", "b"):
        assert cache.get_or_make(key, make, key) == key.upper()
    # "c" evicted "b" (the second "a" had made "b" the least recently used); the last "b" evicted "c"
    assert made == ["a", "b", "c", "b"]
    assert len(cache) == 2


class _Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""
    def __init__(self):
        self.me = self


def test_compiling_leaves_the_collector_as_it_found_it():
    # compiling moves older objects out of the collector's sight for its duration (runtime/collector.py):
    # afterwards none stays frozen, cyclic garbage made before it is still collected, and a
    # process's own freeze is left alone
    garbage = weakref.ref(_Cycle())
    assert gc.get_freeze_count() == 0
    model = _model()
    kcompiler.compile(model, training=True, batch_size=16).train_step(X[:16], Y[:16])
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()
    gc.collect()
    assert garbage() is None
    gc.freeze()
    try:
        kcompiler.compile(_model(1), batch_size=16).predict(X[:16])
        assert gc.get_freeze_count() > 0  # (frozen objects freed meanwhile leave the count)
    finally:
        gc.unfreeze()


def test_at_exit_the_heap_is_frozen_after_the_users_handlers(tmp_path):
    # runtime/collector.py freezes every object at exit so that the interpreter's final
    # collections scan nothing: the user's atexit handlers, registered after the import, still
    # run before it with the collector as it was, and a file a module global holds unclosed is
    # still flushed by its reference count
    out = tmp_path / "out.txt"
    script = textwrap.dedent(f"""
        import atexit, gc
        atexit.register(lambda: print("before the import's handler:", gc.get_freeze_count() > 0, flush=True))
        import kcompiler.keras
        atexit.register(lambda: print("user's handler:", gc.get_freeze_count() > 0, flush=True))
        log = open({str(out)!r}, "w")
        log.write("written, never closed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["user's handler: False", "before the import's handler: True"]
    assert out.read_text() == "written, never closed"
