"""The unit memo (codegen/llvm/unit_memo.py): a warm start loads every kernel's object by the
cache key remembered for its signature, without generating its IR, and runs correctly in a
fresh process; a change to anything the IR is generated from misses the memo."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from kcompiler.codegen.llvm import jit as T
from kcompiler.codegen.llvm import unit_memo
from kcompiler.errors import KCompilerError
from kcompiler.ir.types import TensorType
from kcompiler.options import Options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRAIN_ONE_STEP = textwrap.dedent("""
    import json, numpy as np
    from kcompiler import keras
    from kcompiler.codegen.llvm import cache, module
    generated = []
    real = module._kernel_unit
    module._kernel_unit = lambda *a: generated.append(a[0]["op"]) or real(*a)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((4, 5), dtype=np.float32)
    loss = model.train_on_batch(x, np.array([0, 2, 1, 2], np.int32))
    print(json.dumps({"loss": float(loss), "generated": len(generated), "stats": cache.cache_stats()}))
""")


def _run(cache_dir):
    env = dict(os.environ, KCOMPILER_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    env.pop("KCOMPILER_NO_CACHE", None)
    out = subprocess.run([sys.executable, "-c", TRAIN_ONE_STEP], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_warm_start_generates_no_kernel_ir_and_computes_the_same_step(tmp_path):
    cache_dir = tmp_path / "kcache"
    cache_dir.mkdir(mode=0o700)
    cold, warm = _run(cache_dir), _run(cache_dir)
    assert cold["generated"] > 5 and cold["stats"]["misses"] > 5
    # the warm process also loads the support library (SGEMM) that the remembered kernels
    # call: it used to be loaded only as a side effect of generating their IR (a segfault)
    assert warm["generated"] == 0 and warm["stats"]["misses"] == 0 and warm["stats"]["crashed"] == 0
    assert warm["loss"] == cold["loss"]


def _node(units=7, activation="relu"):
    return {"op": "dense_like", "attrs": {"units": units, "activation": activation},
            "type": TensorType((4, units), "float32")}


def test_the_signature_covers_what_the_ir_is_generated_from():
    base = unit_memo.signature(_node(), [TensorType((4, 5), "float32")], {}, Options(), ("t", "cpu", "f"))
    assert base == unit_memo.signature(_node(), [TensorType((4, 5), "float32")], {}, Options(), ("t", "cpu", "f"))
    variants = [
        unit_memo.signature(_node(units=8), [TensorType((4, 5), "float32")], {}, Options(), ("t", "cpu", "f")),
        unit_memo.signature(_node(activation="tanh"), [TensorType((4, 5), "float32")], {}, Options(),
                            ("t", "cpu", "f")),
        unit_memo.signature(_node(), [TensorType((4, 6), "float32")], {}, Options(), ("t", "cpu", "f")),
        unit_memo.signature(_node(), [TensorType((4, 5), "float32")], {1: 0.5}, Options(), ("t", "cpu", "f")),
        unit_memo.signature(_node(), [TensorType((4, 5), "float32")], {}, Options(opt_level=1), ("t", "cpu", "f")),
        unit_memo.signature(_node(), [TensorType((4, 5), "float32")], {}, Options(bounds_check=True),
                            ("t", "cpu", "f")),
        unit_memo.signature(_node(), [TensorType((4, 5), "float32")], {}, Options(), ("t", "znver4", "f")),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_the_generator_version_hashes_the_generators_source(monkeypatch, tmp_path):
    version = unit_memo.generator_version()
    assert len(version) == 64 and version == unit_memo.generator_version()
    package = tmp_path / "kcompiler"
    for sub in unit_memo._SOURCE_ROOTS:
        (package / sub).mkdir(parents=True)
        (package / sub / "a.py").write_text("x = 1\n")
    fake = package / "codegen" / "llvm" / "unit_memo.py"
    fake.write_text("")
    monkeypatch.setattr(unit_memo, "__file__", str(fake))
    unit_memo.generator_version.cache_clear()
    try:
        before = unit_memo.generator_version()
        (package / "schedule" / "a.py").write_text("x = 2\n")
        unit_memo.generator_version.cache_clear()
        assert unit_memo.generator_version() != before
    finally:
        unit_memo.generator_version.cache_clear()


def test_a_remembered_key_the_ir_does_not_hash_to_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILER_CACHE_DIR", str(tmp_path))
    lazy = T.LazyUnit("0" * 64, lambda: "define void @kc_f() {\n  ret void\n}\n")
    with pytest.raises(KCompilerError, match="generated different IR"):
        T.compile_units([(lazy, 0), ("define i32 @kc_entry() {\n  ret i32 0\n}\n", 0)])


def test_a_process_with_another_thread_count_misses_the_memo(tmp_path, monkeypatch):
    """Kernels split their work by the threads of the process (conv.parts_for): units generated
    under ``taskset -c 0`` (one part) must not be reused by a process with two CPUs."""
    from kcompiler.codegen.llvm import module, threads

    monkeypatch.setenv("KCOMPILER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KCOMPILER_NO_CACHE", raising=False)
    node = {"op": "conv2d", "attrs": {"strides": (1, 1), "padding": "valid", "dilation": (1, 1)},
            "type": TensorType((8, 30, 30, 16), "float32")}
    in_types = [TensorType((8, 32, 32, 8), "float32"), TensorType((3, 3, 8, 16), "float32")]
    generated = {}
    for n in (1, 2, 1):
        monkeypatch.setattr(threads, "default_nthreads", lambda n=n: n)
        memo = unit_memo.UnitMemo.open()
        try:
            symbol, unit = module._remembered_unit(memo, node, in_types, {})
        finally:
            memo.close()
        if isinstance(unit, str):  # generated now: the memo missed
            generated.setdefault(n, symbol)
        else:
            assert generated[n] == symbol
    assert set(generated) == {1, 2} and generated[1] != generated[2]
