"""What this machine's cores can compute: the fp32 FMA peak of a generated loop, and the rate of
the cycle counter the kernel profiler reads (KCOMPILER_PROFILE=1). benchmarks/machine_peak.py
reports both with the comparison runs; ``kcompiler.report`` divides each kernel's GFLOP/s by the peak.

The FMA loop is LLVM IR made here (llvmlite.ir): ``ACCUMULATORS`` independent chains of
``acc = fma(acc, a, b)`` on the widest vectors the host has (16 floats with AVX-512, else 8),
enough chains to cover the FMA latency on every FMA unit, run from one Python thread per core
(ctypes releases the GIL during the call). FLOPs = 2 · lanes · chains · iterations.
"""
import ctypes
import threading
import time

from llvmlite import ir

from . import jit

ACCUMULATORS = 12  # FMA latency 4-5 cycles x 2 units per core; 12 chains + 2 constants fit 16 registers


def _fma_module(lanes):
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vec = ir.VectorType(f32, lanes)
    module = ir.Module(name="fma_peak")
    fma = ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), name=f"llvm.fma.v{lanes}f32")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64, f32.as_pointer()]), name="fma_loop")
    if lanes == 16:
        jit.vector_width_attrs(fn, 512)
    iterations, out = fn.args
    entry, body, done = fn.append_basic_block("entry"), fn.append_basic_block("body"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    scale = ir.Constant(vec, [ir.Constant(f32, 0.999999)] * lanes)
    shift = ir.Constant(vec, [ir.Constant(f32, 1e-7)] * lanes)
    b.branch(body)
    b.position_at_end(body)
    i = b.phi(i64)
    accs = [b.phi(vec) for _ in range(ACCUMULATORS)]
    new = [b.call(fma, [acc, scale, shift]) for acc in accs]
    i_next = b.add(i, ir.Constant(i64, 1))
    for k, acc in enumerate(accs):
        acc.add_incoming(ir.Constant(vec, [ir.Constant(f32, 1.0 + k)] * lanes), entry)
        acc.add_incoming(new[k], body)
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(i_next, body)
    b.cbranch(b.icmp_signed("<", i_next, iterations), body, done)
    b.position_at_end(done)
    total = new[0]
    for v in new[1:]:
        total = b.fadd(total, v)
    b.store(b.extract_element(total, ir.Constant(ir.IntType(32), 0)), out)
    b.ret_void()

    cycles = ir.Function(module, ir.FunctionType(i64, []), name="kc_cycles")
    clock = ir.Function(module, ir.FunctionType(i64, []), name="llvm.readcyclecounter")
    b = ir.IRBuilder(cycles.append_basic_block("entry"))
    b.ret(b.call(clock, []))
    return str(module)


def fma_peak(threads, seconds=0.3, rounds=5):
    """GFLOP/s of the generated FMA loop on ``threads`` threads at once: the best of ``rounds``."""
    lanes = 16 if jit.host_has_avx512() else 8
    module = jit.compile_ir(_fma_module(lanes), opt_level=3, name="fma_peak")
    loop = module.function("fma_loop", None, ctypes.c_int64, ctypes.c_void_p)
    sinks = [ctypes.c_float() for _ in range(threads)]
    loop(1000, ctypes.addressof(sinks[0]))
    start = time.perf_counter()
    loop(1_000_000, ctypes.addressof(sinks[0]))
    iterations = max(1000, int(1_000_000 * seconds / (time.perf_counter() - start)))
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=loop, args=(iterations, ctypes.addressof(s))) for s in sinks]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        best = max(best, 2 * lanes * ACCUMULATORS * iterations * threads / elapsed / 1e9)
    return {"gflops": best, "lanes": lanes, "threads": threads}


def cycle_counter_hz(seconds=0.3):
    """Ticks per second of llvm.readcyclecounter (the kernel profiler's clock; the TSC on x86)."""
    module = jit.compile_ir(_fma_module(16 if jit.host_has_avx512() else 8), opt_level=3, name="fma_peak")
    cycles = module.function("kc_cycles", ctypes.c_int64)
    c0, t0 = cycles(), time.perf_counter()
    time.sleep(seconds)
    return (cycles() - c0) / (time.perf_counter() - t0)
