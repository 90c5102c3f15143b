"""A parallel loop of a kernel description, rendered by LLVM across the cores (render.py's
split_over_cores), computes what the same loop rendered serially does; only loops at the top of
the kernel with enough work are split, and loops that may fail stay serial."""
import ctypes

import llvmlite.ir as ir
import numpy as np
import pytest

from kcompiler.codegen.llvm import render, threads
from kcompiler.codegen.llvm.kernel_builder import KernelBuilder
from kcompiler.codegen.llvm.jit import compile_ir
from kcompiler.ir.types import TensorType
from kcompiler.schedule.kernel import Assign, Buffer, Const, Fail, If, Kernel, Load, Local, Store, Var, call, loop
from op_check import use_options

ROWS, COLS = 37, 29
i, j, acc = Var("i"), Var("j"), Var("acc", "float32")
x_ij, w_j = Load("in0", i * COLS + j, "float32"), Load("in1", j, "float32")
BUFFERS = (Buffer("out0", "float32", ROWS, True), Buffer("out1", "float32", ROWS * COLS, True),
           Buffer("in0", "float32", ROWS * COLS, False), Buffer("in1", "float32", COLS, False))


def row_body():
    """out0[i] = sum_j in0[i, j] * in1[j]; out1[i, j] = relu(in0[i, j] + in1[j])."""
    return [Local(acc, Const(0.0, "float32")),
            loop("j", COLS, [Assign(acc, call("add", acc, call("mul", x_ij, w_j))),
                             Store("out1", i * COLS + j, call("relu", call("add", x_ij, w_j)))]),
            Store("out0", i, acc)]


def run(body):
    """Render a kernel with ``body`` over BUFFERS, run it; returns (outputs, LLVM IR)."""
    module = ir.Module("parallel_loop")
    module.triple = ""
    node = {"op": "t", "attrs": {}, "type": (TensorType((ROWS,), "float32"), TensorType((ROWS, COLS), "float32"))}
    k = KernelBuilder(module, "kt", node, [TensorType((ROWS, COLS), "float32"), TensorType((COLS,), "float32")])
    render.render(k, Kernel("t", BUFFERS, tuple(body)))
    k.finish().linkage = "external"
    text = str(module)
    fn = compile_ir(text, opt_level=1, name="parallel_loop").function("kt", None, *[ctypes.c_void_p] * 5)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((ROWS, COLS)).astype(np.float32), rng.standard_normal(COLS).astype(np.float32)
    out0, out1, status = np.zeros(ROWS, np.float32), np.zeros((ROWS, COLS), np.float32), np.zeros(4, np.int32)
    fn(out0.ctypes.data, out1.ctypes.data, x.ctypes.data, w.ctypes.data, status.ctypes.data)
    assert status[0] == 0
    return (out0, out1), text


@pytest.fixture
def three_cores(monkeypatch):
    monkeypatch.setattr(threads, "default_nthreads", lambda: 3)


@pytest.mark.parametrize("bounds_check", ["0", "1"])
def test_split_loop_equals_serial(three_cores, monkeypatch, bounds_check):
    use_options(monkeypatch, bounds_check=bounds_check == "1")
    body = [loop("i", ROWS, row_body(), parallel=True)]
    serial, serial_ir = run(body)
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    split, split_ir = run(body)
    assert "kt.part" not in serial_ir and "kt.part" in split_ir
    for a, b in zip(split, serial):
        np.testing.assert_array_equal(a, b)


def test_two_split_loops_get_a_part_function_each(three_cores, monkeypatch):
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    (out0, out1), text = run([loop("i", ROWS, row_body(), parallel=True),
                              loop("i", ROWS, [Store("out0", i, call("mul", Load("out0", i, "float32"),
                                                                     Const(2.0, "float32")))], parallel=True)])
    assert '@"kt.part"' in text and '@"kt.part.1"' in text
    (ref0, ref1), _ = run([loop("i", ROWS, row_body())])
    np.testing.assert_array_equal(out0, 2 * ref0)
    np.testing.assert_array_equal(out1, ref1)


def test_a_loop_after_a_serial_loop_with_locals_is_split(three_cores, monkeypatch):
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    (out0, out1), text = run([loop("i", ROWS, row_body()), loop("i", ROWS, row_body(), parallel=True)])
    assert "kt.part" in text
    (ref0, ref1), _ = run([loop("i", ROWS, row_body())])
    np.testing.assert_array_equal(out0, ref0)
    np.testing.assert_array_equal(out1, ref1)


def test_nested_or_failing_loops_stay_serial(three_cores, monkeypatch):
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    nested = [loop("k", 1, [loop("i", ROWS, row_body(), parallel=True)])]
    never = call("lt", Load("in0", i * COLS, "float32"), Const(-1e30, "float32"))
    may_fail = [loop("i", ROWS, [If(never, (Fail(1, i),))] + row_body(), parallel=True)]
    (ref0, ref1), _ = run([loop("i", ROWS, row_body())])
    for body in (nested, may_fail):
        (out0, out1), text = run(body)
        assert "kt.part" not in text
        np.testing.assert_array_equal(out0, ref0)
        np.testing.assert_array_equal(out1, ref1)
