"""The support library's ``kc_parallel_run`` over its persistent helper threads (threads.py,
_emit_pool_runner): every part runs exactly once with the right count, call after call (helpers
spinning, and helpers woken from their futex sleep), from several threads at once (calls that
find the pool busy start threads of their own), from inside a part (a nested call), and in a
forked child, which has none of its parent's helpers."""
import ctypes
import os
import signal
import threading
import time

import llvmlite.ir as ir
import numpy as np
import pytest

from kcompiler.codegen.llvm import jit
from kcompiler.codegen.llvm import threads as TH
from kcompiler.codegen.llvm.support_library import declare_parallel_runner

i64 = ir.IntType(64)
i8p = ir.IntType(8).as_pointer()


def part_function(mod, name, body):
    """An internal part function ``void name(i8* ctx, i64 part, i64 nparts)`` whose body is
    ``body(b, ctx, part, nparts)``."""
    fn = ir.Function(mod, TH.PART_FN_TYPE, name=name)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block())
    body(b, *fn.args)
    b.ret_void()
    return fn


def parallel_entry(mod, name, part, runner):
    """An exported ``void name(i8* ctx, i64 nparts)`` running ``part`` through ``runner``."""
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [i8p, i64]), name=name)
    b = ir.IRBuilder(fn.append_basic_block())
    TH.emit_parallel_call(b, part, fn.args[0], fn.args[1], runner=runner)
    b.ret_void()


@pytest.fixture(scope="module")
def runs():
    """``run(out, nparts)``: out[p] += 1 + 1000 * nparts for every part p (a part run twice or
    with a wrong count shows); ``nested(out, nparts)``: part p runs ``run`` over out[8p:8p+2]
    with 2 parts, from inside the pool's call."""
    mod = ir.Module(name="pool_test")
    runner = declare_parallel_runner(mod)

    def count(b, ctx, p, n):
        slot = b.gep(b.bitcast(ctx, i64.as_pointer()), [p])
        b.store(b.add(b.load(slot), b.add(ir.Constant(i64, 1), b.mul(n, ir.Constant(i64, 1000)))), slot)

    part = part_function(mod, "part", count)

    def run_inner(b, ctx, p, n):
        inner = b.bitcast(b.gep(b.bitcast(ctx, i64.as_pointer()), [b.mul(p, ir.Constant(i64, 8))]), i8p)
        TH.emit_parallel_call(b, part, inner, 2, runner=runner)

    parallel_entry(mod, "run", part, runner)
    parallel_entry(mod, "nested", part_function(mod, "outer", run_inner), runner)
    cm = jit.compile_ir(str(mod), opt_level=1, name="pool_test")
    return cm, cm.function("run", None, ctypes.c_void_p, ctypes.c_int64), \
        cm.function("nested", None, ctypes.c_void_p, ctypes.c_int64)


def check(run, nparts):
    out = np.zeros(TH.MAX_PARTS + 8, np.int64)
    run(out.ctypes.data, nparts)
    used = min(max(nparts, 1), TH.MAX_PARTS)
    assert np.all(out[:used] == 1 + 1000 * used), (nparts, out[:used])
    assert np.all(out[used:] == 0)


def test_the_pool_runs_every_part_once(runs):
    _, run, _ = runs
    for nparts in (0, 1, 2, 3, 5, 64, 100, 2, 2, 3):
        check(run, nparts)
    for _ in range(200):  # helpers spinning between calls
        check(run, 2)
    time.sleep(0.05)  # long enough for the helpers to sleep on their futex: the next call wakes them
    check(run, 3)


def test_concurrent_calls_each_get_all_their_parts(runs):
    _, run, _ = runs
    errors = []

    def worker(nparts):
        try:
            for _ in range(300):
                check(run, nparts)
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(n,)) for n in (2, 3, 2, 5)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors


def test_a_part_that_calls_the_runner_again(runs):
    _, _, nested = runs
    out = np.zeros(8 * 4, np.int64)
    nested(out.ctypes.data, 3)
    for p in range(3):
        assert list(out[8 * p:8 * p + 3]) == [2001, 2001, 0]
    assert not out[24:].any()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_helpers(runs):
    _, run, _ = runs
    check(run, 2)  # the parent's helpers run
    pid = os.fork()
    if pid == 0:  # the child: one thread, none of the parent's helpers
        signal.alarm(30)  # a call waiting for a helper that does not exist would hang
        status = 1
        try:
            for nparts in (2, 3, 2):
                check(run, nparts)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    check(run, 2)  # and the parent's pool still works


@pytest.fixture(scope="module")
def where():
    """``where(out, nparts)``: out[p] = the CPU part p ran on (sched_getcpu)."""
    mod = ir.Module(name="pool_where")
    getcpu = ir.Function(mod, ir.FunctionType(ir.IntType(32), []), name="sched_getcpu")

    def record(b, ctx, p, n):
        b.store(b.sext(b.call(getcpu, []), i64), b.gep(b.bitcast(ctx, i64.as_pointer()), [p]))

    parallel_entry(mod, "where", part_function(mod, "part", record), declare_parallel_runner(mod))
    cm = jit.compile_ir(str(mod), opt_level=1, name="pool_where")
    return cm, cm.function("where", None, ctypes.c_void_p, ctypes.c_int64)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2 or
                    not TH.pinning_enabled(), reason="needs two CPUs and pinned helpers")
def test_a_caller_that_moved_onto_its_helpers_cpu_moves_the_helper(where):
    """The caller is not pinned: when it runs on the CPU its helper is pinned to, the two would
    take turns there; the pool moves the helper to another CPU first."""
    _, run = where
    allowed = sorted(os.sched_getaffinity(0))
    out = np.full(2, -1, np.int64)
    errors = []

    def caller():  # a thread of its own: its affinity changes end with it
        try:
            run(out.ctypes.data, 2)  # the pool's helper 1 runs (pinned to some CPU)
            helper_cpu = int(out[1])
            os.sched_setaffinity(0, {helper_cpu})  # onto the helper's CPU...
            os.sched_setaffinity(0, set(allowed))  # ...and free again, still running there
            run(out.ctypes.data, 2)
            errors.extend([] if out[0] != out[1] else [f"both parts ran on CPU {out[0]}"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    assert not errors
