"""The kernel cache loads only what this user compiled (docs/kernel-cache.md).

A directory or entry that another user owns, or that group or others may write,
is refused with one warning and kernels are compiled in memory; an entry stored
under another key's name is rejected; an entry that crashed a process while
loading or first running is never loaded again; the directory stays under its
size limit by evicting least recently used entries.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
import warnings

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.codegen.llvm import cache as C
from kcompiler.codegen.llvm import jit as T
from kcompiler.codegen.llvm.support_library import ensure_support_library

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def _unique_ir(addend: int = 7) -> str:
    """A small module (a*b + addend) whose text, hence cache key, is unique to this call."""
    return (
        f"; test module {uuid.uuid4().hex}\n"
        "define i64 @kc_madd(i64 %a, i64 %b) {\n"
        "entry:\n"
        "  %m = mul i64 %a, %b\n"
        f"  %c = add i64 %m, {addend}\n"
        "  ret i64 %c\n"
        "}\n"
    )


def _madd(cm):
    return cm.function("kc_madd", ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


def _dense_model(units):
    """Dense(units) with a kernel of ones: each prediction is the sum of the input row."""
    return keras.Sequential([keras.Input((3,)),
                             keras.layers.Dense(units, kernel_initializer="ones", bias_initializer="zeros")])


def _expected(units):
    return np.repeat(X.sum(axis=1, keepdims=True), units, axis=1)


def _set_max_bytes(monkeypatch, value):
    """Set the size limit, which the cache reads once per process."""
    monkeypatch.setenv("KCOMPILER_CACHE_MAX_BYTES", value)
    C.cache_max_bytes.cache_clear()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory of this user (mode 0o700) in use; the support
    library is loaded first from the suite's cache, so models compile quickly."""
    ensure_support_library()
    d = tmp_path / "kcache"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("KCOMPILER_CACHE_DIR", str(d))
    monkeypatch.delenv("KCOMPILER_NO_CACHE", raising=False)
    monkeypatch.delenv("KCOMPILER_CACHE_MAX_BYTES", raising=False)
    C.cache_max_bytes.cache_clear()
    C.reset_cache_stats()
    yield d
    C.cache_max_bytes.cache_clear()  # later tests read the suite's setting again


def _entries(d):
    return sorted(p.name for p in d.glob("*.kco"))


def _plant(directory, key, payload):
    """Write an entry with a valid checksum and the given key, as the cache itself would."""
    path = directory / f"{key}.kco"
    path.write_bytes(C.encode_entry(key, payload))
    path.chmod(0o600)
    return path


# ------------------------------------------------------------ untrusted directory
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o720])
def test_group_or_world_writable_directory_is_refused(cache, mode):
    cache.chmod(mode)
    src = _unique_ir()
    with pytest.warns(C.KernelCacheWarning) as record:
        cm = T.compile_ir(src, opt_level=0, name="m")
    assert len(record) == 1
    message = str(record[0].message)
    assert str(cache) in message and f"{mode:#o}" in message and "group or others" in message
    assert f"uid {os.geteuid()}" in message  # what is expected
    assert not cm.from_cache and _madd(cm)(6, 7) == 49
    assert _entries(cache) == []  # nothing written there either
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per directory and process
        cm2 = T.compile_ir(src, opt_level=0, name="m")
    assert not cm2.from_cache and _madd(cm2)(2, 3) == 13
    assert _entries(cache) == []
    assert C.cache_stats()["refused"] == 2 and C.cache_stats()["hits"] == 0


def test_world_writable_directory_model_still_predicts(cache):
    cache.chmod(0o777)
    with pytest.warns(C.KernelCacheWarning):
        predictions = kcompiler.compile(_dense_model(2), batch_size=2).predict(X)
    np.testing.assert_array_equal(predictions, _expected(2))
    assert _entries(cache) == []


def test_directory_owned_by_another_user_is_refused(cache):
    try:
        os.chown(cache, 12345, -1)
    except PermissionError:
        pytest.skip("chown is not permitted")
    if os.geteuid() == 12345:
        pytest.skip("running as uid 12345")
    with pytest.warns(C.KernelCacheWarning, match="not owned by this user.*uid 12345"):
        cm = T.compile_ir(_unique_ir(), opt_level=0)
    assert not cm.from_cache and _madd(cm)(1, 1) == 8
    assert _entries(cache) == []


def test_default_directory_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KCOMPILER_CACHE_DIR", raising=False)
    monkeypatch.delenv("KCOMPILER_NO_CACHE", raising=False)
    cm = T.compile_ir(_unique_ir(), opt_level=0)
    d = tmp_path / ".cache" / "kcompiler"
    assert C.cache_dir() == d
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    (entry,) = d.glob("*.kco")
    assert entry.name == f"{cm.key}.kco"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


# ---------------------------------------------------------------- untrusted entry
def _chown_other(path):
    os.chown(path, 12345, -1)


@pytest.mark.parametrize("spoil, found", [
    (lambda p: p.chmod(0o620), "0o620"),
    (lambda p: p.chmod(0o606), "0o606"),
    (_chown_other, "uid 12345"),
])
def test_untrusted_entry_is_refused_and_left_alone(cache, spoil, found):
    src = _unique_ir()
    key = T.compile_ir(src, opt_level=0).key
    entry = C.cache_path(key)
    try:
        spoil(entry)
    except PermissionError:
        pytest.skip("chown is not permitted")
    before = entry.lstat()
    C.reset_cache_stats()
    with pytest.warns(C.KernelCacheWarning) as record:
        cm = T.compile_ir(src, opt_level=0)
    message = str(record[0].message)
    assert str(entry) in message and found in message
    assert not cm.from_cache and _madd(cm)(3, 3) == 16
    st = C.cache_stats()
    assert st["refused"] == 1 and st["hits"] == 0 and st["writes"] == 0
    after = entry.lstat()
    assert (after.st_ino, after.st_uid, after.st_mode) == (before.st_ino, before.st_uid, before.st_mode)


def test_symlinked_entry_is_refused(cache, tmp_path):
    src = _unique_ir()
    key = T.compile_ir(src, opt_level=0).key
    entry = C.cache_path(key)
    elsewhere = tmp_path / "elsewhere.kco"
    shutil.move(entry, elsewhere)  # a valid entry, reachable only through the link
    entry.symlink_to(elsewhere)
    C.reset_cache_stats()
    with pytest.warns(C.KernelCacheWarning, match="symbolic link"):
        cm = T.compile_ir(src, opt_level=0)
    assert not cm.from_cache and _madd(cm)(0, 0) == 7
    assert entry.is_symlink()


# -------------------------------------------------------- an entry under another key
def test_entry_copied_under_another_key_is_rejected(cache):
    a, b = _unique_ir(addend=1), _unique_ir(addend=2)
    key_a = T.compile_ir(a, opt_level=0).key
    key_b = T.compile_ir(b, opt_level=0).key
    shutil.copyfile(C.cache_path(key_a), C.cache_path(key_b))
    C.reset_cache_stats()
    cm = T.compile_ir(b, opt_level=0)
    st = C.cache_stats()
    assert not cm.from_cache and st["corrupt"] == 1 and st["misses"] == 1
    assert _madd(cm)(5, 5) == 27  # B's code, not A's (26)
    assert T.compile_ir(b, opt_level=0).from_cache  # rewritten with B's own entry


def test_model_entry_copied_over_another_models_entry(cache):
    model_b = _dense_model(3)
    program_a = kcompiler.compile(_dense_model(2), batch_size=2)
    program_b = kcompiler.compile(model_b, batch_size=2)
    np.testing.assert_array_equal(program_b.predict(X), _expected(3))
    key_a, key_b = program_a._compiled.module.key, program_b._compiled.module.key
    shutil.copyfile(C.cache_path(key_a), C.cache_path(key_b))
    C.reset_cache_stats()
    again = kcompiler.compile(model_b, batch_size=2)
    assert again._compiled.module.key == key_b and not again._compiled.module.from_cache
    assert C.cache_stats()["corrupt"] == 1
    np.testing.assert_array_equal(again.predict(X), _expected(3))


# ------------------------------------------------------------------ crash marker
def test_entry_with_a_left_behind_marker_is_deleted_and_recompiled(cache):
    src = _unique_ir()
    key = T.compile_ir(src, opt_level=0).key
    good = C.cache_path(key).read_bytes()
    C.marker_path(key).write_bytes(b"")  # as if a process died while loading the entry
    C.reset_cache_stats()
    cm = T.compile_ir(src, opt_level=0)
    st = C.cache_stats()
    assert not cm.from_cache
    assert st["crashed"] == 1 and st["misses"] == 1 and st["hits"] == 0
    assert _madd(cm)(4, 4) == 23
    assert not C.marker_path(key).exists()
    assert C.cache_path(key).read_bytes() == good  # recompiled and written again


def test_marker_lives_until_the_first_successful_call(cache):
    src = _unique_ir()
    fresh = T.compile_ir(src, opt_level=0)
    fresh.confirm()  # a module compiled in this process has no marker
    assert not C.marker_path(fresh.key).exists()
    loaded = T.compile_ir(src, opt_level=0)
    assert loaded.from_cache
    assert C.marker_path(loaded.key).exists()
    # the same entry loaded again while the first load is still on trial in a
    # live process is not mistaken for a crash
    again = T.compile_ir(src, opt_level=0)
    assert again.from_cache and C.cache_stats()["crashed"] == 0
    assert _madd(loaded)(1, 2) == 9
    loaded.confirm()
    assert not C.marker_path(loaded.key).exists()
    loaded.confirm()  # idempotent
    again.confirm()
    assert T.compile_ir(src, opt_level=0).from_cache and C.cache_stats()["crashed"] == 0


def test_compiled_graph_run_confirms_its_module(cache):
    model = _dense_model(2)
    kcompiler.compile(model, batch_size=2)
    program = kcompiler.compile(model, batch_size=2)
    module = program._compiled.module
    assert module.from_cache and C.marker_path(module.key).exists()
    np.testing.assert_array_equal(program.predict(X), _expected(2))
    assert not C.marker_path(module.key).exists()


def _run(script, cache_dir):
    env = dict(os.environ, KCOMPILER_CACHE_DIR=str(cache_dir), KCOMPILER_OPT_LEVEL="1")
    env.pop("KCOMPILER_NO_CACHE", None)
    # run in the temporary directory: a crashing run may leave a core file in its working directory
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, cwd=cache_dir.parent, timeout=300)


def test_normal_exit_removes_the_markers_of_modules_never_called(cache):
    src = _unique_ir()
    key = T.compile_ir(src, opt_level=0).key
    script = f"""
        from kcompiler.codegen.llvm import cache as C, jit as T
        cm = T.compile_ir({src!r}, opt_level=0)
        assert cm.from_cache and C.marker_path(cm.key).exists()
    """
    done = _run(script, cache)
    assert done.returncode == 0, done.stderr
    assert not C.marker_path(key).exists()
    assert T.compile_ir(src, opt_level=0).from_cache and C.cache_stats()["crashed"] == 0


CRASHING_ENTRY_IR = """
define i32 @kc_entry(i8* %params, i8* %arena) {
entry:
  store volatile i32 1, i32* null
  ret i32 0
}
"""

PREDICT_SCRIPT = """
    import json, numpy as np, kcompiler
    from kcompiler import keras
    from kcompiler.codegen.llvm import cache as C
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")])
    program = kcompiler.compile(model, batch_size=2)
    print(program._compiled.module.key, len(program._compiled.module.unit_keys), flush=True)
    print(json.dumps(program.predict(np.arange(6, dtype=np.float32).reshape(2, 3)).tolist()))
    print(json.dumps(C.cache_stats()))
"""


def test_entry_that_crashes_the_process_is_not_loaded_again(cache, monkeypatch):
    library = ensure_support_library()  # spare the subprocesses compiling it
    _plant(cache, library.key, library.object_code)
    first = _run(PREDICT_SCRIPT, cache)
    assert first.returncode == 0, first.stderr
    key_and_units, predictions, _ = first.stdout.splitlines()
    key, units = key_and_units.split()
    assert json.loads(predictions) == _expected(2).tolist()

    # a checksum-valid entry, stored under the program's key (its entry point's unit), whose code crashes
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    crashing = T.compile_ir(CRASHING_ENTRY_IR, opt_level=0, name="crashing").object_code
    _plant(cache, key, crashing)

    crashed = _run(PREDICT_SCRIPT, cache)
    assert crashed.returncode < 0, (crashed.returncode, crashed.stderr)  # killed by a signal
    assert C.marker_path(key).exists()

    recovered = _run(PREDICT_SCRIPT, cache)
    assert recovered.returncode == 0, recovered.stderr
    _, predictions, stats = recovered.stdout.splitlines()
    assert json.loads(predictions) == _expected(2).tolist()
    # every unit the crashed process loaded from the cache (the entry point and the kernels) left its
    # marker: which one crashed is not known, so all are deleted and recompiled
    assert json.loads(stats)["crashed"] == int(units)
    assert not C.marker_path(key).exists()
    assert C.cache_path(key).read_bytes() != C.encode_entry(key, crashing)


# -------------------------------------------------------------------- size limit
def test_least_recently_used_entries_are_evicted(cache, monkeypatch):
    a, b, c = _unique_ir(1), _unique_ir(2), _unique_ir(3)
    key_a = T.compile_ir(a, opt_level=0).key
    key_b = T.compile_ir(b, opt_level=0).key
    os.utime(C.cache_path(key_a), ns=(10**9, 10**9))  # A written first (in 1970),
    os.utime(C.cache_path(key_b), ns=(2 * 10**9, 2 * 10**9))  # then B,
    assert T.compile_ir(a, opt_level=0).from_cache  # then A used again: B is the least recently used
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    size_c = len(C.encode_entry("0" * 64, T.compile_ir(c, opt_level=0).object_code))
    monkeypatch.delenv("KCOMPILER_NO_CACHE")
    _set_max_bytes(monkeypatch, str(C.cache_path(key_a).stat().st_size + size_c))
    C.reset_cache_stats()
    key_c = T.compile_ir(c, opt_level=0).key
    assert _entries(cache) == sorted([f"{key_a}.kco", f"{key_c}.kco"])
    assert C.cache_stats()["evictions"] == 1
    assert T.compile_ir(a, opt_level=0).from_cache

    _set_max_bytes(monkeypatch, "0")  # the entry just written is always kept
    key_d = T.compile_ir(_unique_ir(4), opt_level=0).key
    assert _entries(cache) == [f"{key_d}.kco"]


def test_the_directory_is_listed_once_per_process_until_the_limit_may_be_reached(cache, monkeypatch):
    """Listing costs a stat per entry: doing it after every write made a compile O(writes x
    entries) (46 writes into a cache of 12,800 entries took 10 s)."""
    listings = []
    real_scandir = os.scandir
    def scandir(path="."):  # os is global: count only the cache's listings (through its descriptor)
        if isinstance(path, int):
            listings.append(path)
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    for k in range(3):
        T.compile_ir(_unique_ir(k), opt_level=0)
    assert len(listings) == 1
    one_entry = max(p.stat().st_size for p in cache.glob("*.kco"))
    _set_max_bytes(monkeypatch, str(4 * one_entry))  # a new limit: listed again at the next write
    T.compile_ir(_unique_ir(4), opt_level=0)
    assert len(listings) == 2 and len(_entries(cache)) == 4
    T.compile_ir(_unique_ir(5), opt_level=0)  # what it saw plus what it wrote may exceed the limit
    assert len(listings) == 3 and len(_entries(cache)) == 4


def test_bad_size_limit_is_reported(cache, monkeypatch):
    _set_max_bytes(monkeypatch, "1GB")
    with pytest.raises(ValueError, match="KCOMPILER_CACHE_MAX_BYTES"):
        T.compile_ir(_unique_ir(), opt_level=0)
