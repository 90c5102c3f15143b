"""The support library (SGEMM, thread runner) builds in a thread of its own while a model's
kernels are generated and compiled (support_library.start_support_library), and is loaded before
they are: each check in a fresh process, whose library is not built yet."""
import os
import subprocess
import sys
import textwrap

PRELUDE = """
    import threading, numpy as np, kcompiler
    from kcompiler import keras
    from kcompiler.codegen.llvm import module, support_library as sl
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="ones")])
    x = np.ones((2, 4), np.float32)
    build = sl._support_ir
"""


def run(script, tmp_path):
    env = dict(os.environ, KCOMPILER_CACHE_DIR=str(tmp_path / "cache"), KCOMPILER_OPT_LEVEL="0")
    env.pop("KCOMPILER_NO_CACHE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(script)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_kernels_are_generated_while_the_library_builds(tmp_path):
    # the library's IR waits until the kernels' generation has returned: had generation waited
    # for the library, the wait would run out (and the script says so)
    done = run("""
        generated = threading.Event()
        def slow_build():
            print("waited" if generated.wait(120) else "generation waited for the library")
            return build()
        sl._support_ir = slow_build
        generate = module.generate
        def generate_then_signal(*args, **kwargs):
            result = generate(*args, **kwargs)
            generated.set()
            return result
        module.generate = generate_then_signal
        print(kcompiler.compile(model, batch_size=2).predict(x).tolist())
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["waited", str([[4.0] * 3] * 2)]


def test_a_failed_background_build_is_retried_where_the_library_is_needed(tmp_path):
    done = run("""
        calls = []
        def flaky_build():
            calls.append(threading.current_thread().name)
            if len(calls) == 1:
                raise MemoryError("the first build fails")
            return build()
        sl._support_ir = flaky_build
        print(kcompiler.compile(model, batch_size=2).predict(x).tolist())
        print(calls == ["kcompiler-support-library", "MainThread"])
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str([[4.0] * 3] * 2), "True"]


def test_a_library_that_cannot_be_built_fails_the_compilation_with_its_error(tmp_path):
    done = run("""
        def broken_build():
            raise RuntimeError("no support library today")
        sl._support_ir = broken_build
        try:
            kcompiler.compile(model, batch_size=2).predict(x)
        except RuntimeError as e:
            print("raised:", e)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "raised: no support library today"
