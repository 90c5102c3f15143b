"""Tests of kcompiler.codegen.llvm.jit: compile_ir, the object cache, options."""
from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
from op_check import use_options

from kcompiler.options import Options

from kcompiler.codegen.llvm import jit as T

ADD_IR = """
define i64 @kc_add(i64 %a, i64 %b) {
entry:
  %c = add i64 %a, %b
  ret i64 %c
}
"""


def _unique_ir(extra: str = "") -> str:
    """A small module whose text (hence cache key) is unique to this call."""
    tag = uuid.uuid4().hex
    return (
        f"; test module {tag}\n"
        "declare i8* @malloc(i64)\n"
        "declare void @free(i8*)\n"
        "define i64 @kc_madd(i64 %a, i64 %b) {\n"
        "entry:\n"
        "  %p = call i8* @malloc(i64 32)\n"
        "  call void @free(i8* %p)\n"
        "  %m = mul i64 %a, %b\n"
        "  %c = add i64 %m, 7\n"
        "  ret i64 %c\n"
        "}\n" + extra
    )


def _madd(cm):
    return cm.function("kc_madd", ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "kcache"
    monkeypatch.setenv("KCOMPILER_CACHE_DIR", str(d))
    monkeypatch.delenv("KCOMPILER_NO_CACHE", raising=False)
    T.reset_cache_stats()
    return d


def _entries(d):
    return sorted(p for p in d.glob("*.kco")) if d.exists() else []


# ----------------------------------------------------------------- basics
def test_host_target_info():
    triple, cpu, features = T.host_target_info()
    assert triple and cpu
    assert isinstance(features, str)
    if "+avx512f" in features.split(","):
        assert "-prefer-256-bit" in features.split(",")
    if "+avx2" in features.split(","):
        assert {"+prefer-no-gather", "+prefer-no-scatter"} <= set(features.split(","))


def test_compile_and_call(cache):
    cm = T.compile_ir(ADD_IR, opt_level=1, name="adder")
    f = cm.function("kc_add", ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
    assert f(40, 2) == 42
    assert cm.address("kc_add") != 0
    with pytest.raises(KeyError):
        cm.address("no_such_function")


def test_function_survives_dropping_the_module(cache):
    f = _madd(T.compile_ir(_unique_ir(), opt_level=0, name="tmp"))
    gc.collect()
    assert f(3, 4) == 19


# ----------------------------------------------------------------- errors
def test_verifier_error_names_module(cache):
    bad = textwrap.dedent(
        """
        define i32 @f(i32 %a) {
        entry:
          %x = add i32 %y, 1
          %y = add i32 %x, %a
          ret i32 %x
        }
        """
    )
    with pytest.raises(RuntimeError) as ei:
        T.compile_ir(bad, opt_level=0, name="my_broken_module")
    msg = str(ei.value)
    assert "my_broken_module" in msg
    assert "verifier" in msg
    assert "dominate" in msg  # LLVM's own message is carried along
    assert _entries(cache) == []  # nothing cached for a failed module


def test_parse_error_names_module(cache):
    with pytest.raises(RuntimeError) as ei:
        T.compile_ir("define i32 @f() {\n  ret i64 0\n}\n", opt_level=0, name="unparsable")
    assert "unparsable" in str(ei.value)
    assert "i32" in str(ei.value)


def test_bad_opt_level(cache, monkeypatch):
    with pytest.raises(ValueError):
        T.compile_ir(ADD_IR, opt_level=7)
    with pytest.raises(ValueError, match="KCOMPILER_OPT_LEVEL"):
        Options.from_environment({"KCOMPILER_OPT_LEVEL": "fast"})


def test_default_opt_level_from_the_options(cache, monkeypatch):
    assert Options.from_environment({}).opt_level == 3
    assert Options.from_environment({"KCOMPILER_OPT_LEVEL": "1"}).opt_level == 1
    use_options(monkeypatch, opt_level=1)
    assert T.default_opt_level() == 1
    cm = T.compile_ir(_unique_ir(), name="envlevel")
    assert cm.opt_level == 1
    assert _madd(cm)(2, 5) == 17


# ----------------------------------------------------------------- cache
def test_cache_hit_on_second_compile(cache):
    src = _unique_ir()
    cm1 = T.compile_ir(src, opt_level=2, name="m")
    assert not cm1.from_cache
    assert T.cache_stats()["misses"] == 1 and T.cache_stats()["hits"] == 0
    assert len(_entries(cache)) == 1
    cm2 = T.compile_ir(src, opt_level=2, name="m")
    assert cm2.from_cache
    st = T.cache_stats()
    assert st["hits"] == 1 and st["misses"] == 1 and st["corrupt"] == 0
    assert cm2.key == cm1.key
    assert cm2.object_code == cm1.object_code
    for a, b in [(0, 0), (3, 4), (-5, 11)]:
        assert _madd(cm1)(a, b) == _madd(cm2)(a, b) == a * b + 7
    # (how fast a hit loads is measured in benchmarks/bench_cold_start.py, not asserted here)


def test_cache_disabled(cache, monkeypatch):
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    src = _unique_ir()
    T.compile_ir(src, opt_level=0)
    cm = T.compile_ir(src, opt_level=0)
    assert not cm.from_cache
    assert _entries(cache) == []
    assert T.cache_stats()["hits"] == 0


def _damage_truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _damage_flip_payload(p):
    data = bytearray(p.read_bytes())
    data[len(data) - 17] ^= 0x40
    p.write_bytes(bytes(data))


def _damage_flip_header(p):
    data = bytearray(p.read_bytes())
    data[20] ^= 0x01  # inside the stored checksum
    p.write_bytes(bytes(data))


def _damage_magic(p):
    data = bytearray(p.read_bytes())
    data[0:8] = b"GARBAGE!"
    p.write_bytes(bytes(data))


def _damage_empty(p):
    p.write_bytes(b"")


def _damage_header_only(p):
    p.write_bytes(p.read_bytes()[:48])


@pytest.mark.parametrize(
    "damage",
    [_damage_truncate, _damage_flip_payload, _damage_flip_header, _damage_magic,
     _damage_empty, _damage_header_only],
)
def test_corrupt_entry_is_recompiled_not_loaded(cache, damage):
    src = _unique_ir()
    cm1 = T.compile_ir(src, opt_level=1, name="c")
    (entry,) = _entries(cache)
    assert entry == T.cache_path(cm1.key)
    good = entry.read_bytes()
    damage(entry)
    assert entry.read_bytes() != good
    T.reset_cache_stats()
    cm2 = T.compile_ir(src, opt_level=1, name="c")
    st = T.cache_stats()
    assert not cm2.from_cache
    assert st["corrupt"] == 1 and st["misses"] == 1 and st["hits"] == 0
    assert _madd(cm2)(6, 7) == 49
    # the damaged entry was replaced by a good one
    assert entry.read_bytes() == good
    cm3 = T.compile_ir(src, opt_level=1, name="c")
    assert cm3.from_cache


def test_opt_levels_are_different_keys(cache):
    src = _unique_ir()
    keys = {T.cache_key(src, lvl) for lvl in range(4)}
    assert len(keys) == 4
    a = T.compile_ir(src, opt_level=0)
    b = T.compile_ir(src, opt_level=3)
    assert a.key != b.key
    assert not a.from_cache and not b.from_cache
    assert len(_entries(cache)) == 2
    assert _madd(a)(9, 9) == _madd(b)(9, 9) == 88


def test_key_depends_on_ir_text(cache):
    assert T.cache_key(ADD_IR, 1) != T.cache_key(ADD_IR + "\n", 1)
    assert T.cache_key(ADD_IR, 1) == T.cache_key(ADD_IR, 1)


def test_no_temp_files_left_and_threads_share(cache):
    src = _unique_ir()
    results, errors = [], []

    def work():
        try:
            results.append(_madd(T.compile_ir(src, opt_level=1))(2, 3))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and results == [13] * 4
    assert len(_entries(cache)) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_two_processes_share_the_cache(cache):
    """Two processes compiling the same IR at once (as pytest-xdist workers do)
    both get working code and leave exactly one valid entry."""
    src = _unique_ir()
    script = textwrap.dedent(
        """
        import ctypes, sys
        from kcompiler.codegen.llvm import jit as T
        src = sys.stdin.read()
        cm = T.compile_ir(src, opt_level=1, name="shared")
        f = cm.function("kc_madd", ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
        print(f(5, 5))
        """
    )
    env = dict(os.environ, KCOMPILER_CACHE_DIR=str(cache))
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(src, timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == "32"
    assert len(_entries(cache)) == 1
    cm = T.compile_ir(src, opt_level=1, name="shared")
    assert cm.from_cache


# ----------------------------------------------------------------- vector width
LOOP_IR = """
define void @saxpy(float* noalias %x, float* noalias %y, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr float, float* %x, i64 %i
  %py = getelementptr float, float* %y, i64 %i
  %a = load float, float* %px
  %b = load float, float* %py
  %c = fmul float %a, 2.0
  %d = fadd float %c, %b
  store float %d, float* %py
  %i1 = add i64 %i, 1
  %cond = icmp slt i64 %i1, %n
  br i1 %cond, label %loop, label %exit
exit:
  ret void
}
"""


def test_vector_width_attribute_is_emitted():
    import llvmlite.ir as ir

    mod = ir.Module(name="vw")
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), []), name="f")
    T.vector_width_attrs(fn)
    ir.IRBuilder(fn.append_basic_block()).ret_void()
    text = str(mod)
    assert '"prefer-vector-width"="512"' in text
    T.compile_ir(text, opt_level=0, name="vw")  # parses and verifies


@pytest.mark.skipif(not T.host_has_avx512(), reason="host has no AVX-512")
def test_autovectorised_loop_uses_zmm():
    asm = T.emit_assembly(LOOP_IR, opt_level=3, name="saxpy")
    assert "zmm" in asm


@pytest.mark.skipif("+avx2" not in T.host_target_info()[2].split(","), reason="host has no AVX2")
def test_a_per_channel_operation_is_not_vectorised_with_gathers():
    """A bias_add over rows of 32 channels: LLVM vectorised its outer loop across rows with
    gathers and scatters (15x slower on a Zen 4 host) until the target said it prefers none."""
    import numpy as np
    from kcompiler.ir.graph import GraphBuilder
    from kcompiler.ir.types import TensorType
    from kcompiler.pipeline import lower_graph

    b = GraphBuilder(name="bias")
    x = b.input("x", TensorType((64, 30, 30, 32)))
    b.g.graph["outputs"] = [b.op("bias_add", x, b.input("bias", TensorType((32,))))]
    compiled, _ = lower_graph(b.g, fuse=False)
    asm = T.emit_assembly(str(compiled.kernels[0].unit), opt_level=3, name="bias_add")
    assert "addps" in asm and "gather" not in asm and "scatter" not in asm
    feeds = {"x": np.ones((64, 30, 30, 32), np.float32), "bias": np.arange(32, dtype=np.float32)}
    assert np.array_equal(compiled.run(feeds)[0], feeds["x"] + feeds["bias"])
