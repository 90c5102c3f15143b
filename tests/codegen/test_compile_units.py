"""Each kernel is its own compilation unit (codegen/llvm/module.py, target.compile_units):
identical kernels are compiled once, a model that changes one layer recompiles only the
units that changed, and every unit's cache entry keeps the trust model of
docs/kernel-cache.md (a damaged or foreign entry is rejected, crash markers until the
step's first successful call)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.codegen.llvm import cache as C
from kcompiler.codegen.llvm import jit as T
from kcompiler.codegen.llvm.support_library import ensure_support_library

X = np.random.default_rng(0).random((4, 6, 6, 2), dtype=np.float32)
Y = np.array([0, 1, 2, 1], dtype=np.int32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory in use, the support library already loaded, counters at 0."""
    ensure_support_library()
    d = tmp_path / "kcache"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("KCOMPILER_CACHE_DIR", str(d))
    monkeypatch.delenv("KCOMPILER_NO_CACHE", raising=False)
    C.reset_cache_stats()
    return d


def _cnn(depth, last_filters=4, seed=0):
    """``depth`` identical convolutions (the last one with ``last_filters`` filters), pooled, dense."""
    keras.utils.set_random_seed(seed)
    convs = [keras.layers.Conv2D(4, 3, padding="same", activation="relu") for _ in range(depth - 1)]
    model = keras.Sequential([keras.Input((6, 6, 2)), *convs,
                              keras.layers.Conv2D(last_filters, 3, padding="same", activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _symbols(program):
    """The distinct kernel units of a program (each kernel's source defines one symbol)."""
    return {k.source for k in program.kernels}


def test_identical_kernels_are_compiled_once(cache):
    program = kcompiler.compile(_cnn(4), training=True, batch_size=4)
    units = _symbols(program)
    assert len(units) < len(program.kernels)  # the repeated convolutions share their kernels
    module = program._compiled.module
    assert C.cache_stats()["misses"] == len(units) + 1 == len(module.unit_keys)  # + the entry point
    assert np.isfinite(program.train_step(X, Y)["loss"])


def test_changing_one_layer_recompiles_only_the_changed_units(cache):
    before = kcompiler.compile(_cnn(3), training=True, batch_size=4)
    C.reset_cache_stats()
    after = kcompiler.compile(_cnn(3, last_filters=5), training=True, batch_size=4)
    changed = _symbols(after) - _symbols(before)
    stats = C.cache_stats()
    assert 0 < len(changed) < len(_symbols(after))
    assert stats["misses"] == len(changed) + 1  # + the entry point
    assert stats["hits"] == len(_symbols(after)) - len(changed)
    assert np.isfinite(after.train_step(X, Y)["loss"])


@pytest.mark.parametrize("damage", ["foreign", "truncated"])
def test_damaged_or_foreign_kernel_entry_is_rejected(cache, damage):
    model = _cnn(2)
    first = kcompiler.compile(model, batch_size=4)
    expected, keys = first.predict(X), first._compiled.module.unit_keys
    victim, other = C.cache_path(keys[0]), C.cache_path(keys[1])  # two kernel units
    if damage == "foreign":
        shutil.copyfile(other, victim)  # another kernel's valid entry under this kernel's key
    else:
        victim.write_bytes(victim.read_bytes()[:-7])
    C.reset_cache_stats()
    again = kcompiler.compile(model, batch_size=4)
    stats = C.cache_stats()
    assert stats["corrupt"] == 1 and stats["misses"] == 1 and stats["hits"] == len(keys) - 1
    assert not again._compiled.module.from_cache
    np.testing.assert_array_equal(again.predict(X), expected)


def test_every_unit_carries_its_crash_marker_until_the_first_run(cache):
    model = _cnn(2)
    kcompiler.compile(model, batch_size=4)
    program = kcompiler.compile(model, batch_size=4)
    module = program._compiled.module
    assert module.from_cache and len(module.unit_keys) > 2
    assert all(C.marker_path(key).exists() for key in module.unit_keys)
    program.predict(X)
    assert not any(C.marker_path(key).exists() for key in module.unit_keys)


def _units(program, opt_level=1):
    return [(source, opt_level) for source in sorted(_symbols(program))]


def test_parallel_compilation_emits_the_same_code_as_serial(cache, monkeypatch):
    units = _units(kcompiler.compile(_cnn(3), training=True, batch_size=4))
    assert len(units) >= T._MIN_UNITS_FOR_WORKER  # enough for the helper process to take part
    monkeypatch.setenv("KCOMPILER_COMPILE_JOBS", "1")
    serial = T._compile_objects(units, "serial")
    monkeypatch.setenv("KCOMPILER_COMPILE_JOBS", "2")
    assert T._compile_objects(units, "parallel") == serial


def test_parallel_and_serial_steps_train_alike(cache, monkeypatch):
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    losses = {}
    for jobs in ("1", "2"):
        monkeypatch.setenv("KCOMPILER_COMPILE_JOBS", jobs)
        program = kcompiler.compile(_cnn(3), training=True, batch_size=4)
        losses[jobs] = [program.train_step(X, Y)["loss"] for _ in range(3)]
    assert losses["1"] == losses["2"]


def test_a_unit_llvm_rejects_fails_with_its_message_in_parallel(cache, monkeypatch):
    monkeypatch.setenv("KCOMPILER_COMPILE_JOBS", "2")
    units = _units(kcompiler.compile(_cnn(3), training=True, batch_size=4))
    units.insert(2, ("define i32 @f() {\n  ret i64 0\n}\n", 1))
    with pytest.raises(RuntimeError, match="does not parse"):
        T._compile_objects(units, "broken")


def test_units_are_compiled_largest_first_after_the_wait(monkeypatch):
    """Longest processing time first: a large unit taken last would leave the other process
    idle while it compiles. This process compiles nothing before ``wait()`` returns (the
    support library's build, which holds the LLVM lock)."""
    monkeypatch.setenv("KCOMPILER_COMPILE_JOBS", "1")
    events = []
    monkeypatch.setattr(T, "compile_to_object", lambda text, level, name: events.append(text) or text.encode())
    units = [("x" * n, 3) for n in (5, 400, 30, 7000, 2)]
    objects = T._compile_objects(units, "ordered", wait=lambda: events.append("waited"))
    assert events == ["waited"] + [text for text, _ in sorted(units, key=lambda u: -len(u[0]))]
    assert objects == [text.encode() for text, _ in units]  # each object in its unit's place
