"""Fork-join parallelism inside generated code (pthreads declared in the IR).

A kernel that wants to use several cores writes its work as a *part function*

    void part(i8* ctx, i64 part, i64 nparts)

that does the ``part``-th of ``nparts`` independent slices of the work described
by ``ctx``, and calls ``kc_parallel_run(part, ctx, nparts)`` (added to the module
by :func:`get_parallel_runner`; :func:`emit_parallel_call` emits the call).

What the runner does, and why (all measured on the 2-vCPU VM, see
docs/codegen-llvm.md):

* It starts parts ``1..nparts-1`` on new threads (``pthread_create``, detached)
  and runs part 0 on the calling thread.
* Each helper thread is created pinned (``pthread_attr_setaffinity_np``) to the
  p-th CPU of the caller's affinity mask, counting cyclically after the CPU the
  caller is running on. Left to itself, Linux often queued the new thread on its
  creator's busy CPU, where it started only after part 0 had finished: the
  2-thread GEMM then ran at 1-thread speed for calls under ~1 ms.
  ``KCOMPILER_PIN_THREADS=0`` (read when the IR is generated) turns pinning off.
* The caller waits for each helper's *done flag* (an atomic store-release in the
  trampoline after the part returns) by spinning with ``pause`` for a while, then
  ``sched_yield``, then ``usleep(20)``. Sleeping in ``pthread_join`` instead cost
  a further ~20-40 µs per call: a halted vCPU takes that long to wake up.
* If thread attributes cannot be set up, the thread is created joinable and
  joined; if ``pthread_create`` fails, that part runs inline on the calling
  thread. The work is always done completely.

Every call has its own state (thread table, done flags, argument records on
the caller's stack; scratch memory is malloc'ed per call by the kernels), so
concurrent calls from several threads are independent. Generated model modules
call the support library's runner (support_library.py), which is never freed: a
detached helper still executes the runner's last instructions after its done
flag is set.

MCJIT resolves the pthread and sched functions from the running process (see
:mod:`.target`). Even so a parallel call costs ~10-20 µs more than a serial
one, so callers only split work whose parts take well over that.
"""
from __future__ import annotations

import os
import platform

import llvmlite.ir as ir

__all__ = [
    "MAX_PARTS",
    "PART_FN_TYPE",
    "default_nthreads",
    "emit_parallel_call",
    "get_parallel_runner",
    "pinning_enabled",
    "threads_available",
]

i8 = ir.IntType(8)
i32 = ir.IntType(32)
i64 = ir.IntType(64)
i8p = i8.as_pointer()
void = ir.VoidType()

#: the type of a part function: void (i8* ctx, i64 part, i64 nparts)
PART_FN_TYPE = ir.FunctionType(void, [i8p, i64, i64])
#: the runner clamps nparts to this (its thread table lives on the stack)
MAX_PARTS = 64

RUNNER_NAME = "kc_parallel_run"
TRAMPOLINE_NAME = "kc_parallel_trampoline"

# pthread_t is an unsigned long on Linux/glibc (x86-64 and aarch64).
_PTHREAD_T = i64
# argument record of a helper thread: part fn, ctx, part, nparts, &done
_ARG_T = ir.LiteralStructType([PART_FN_TYPE.as_pointer(), i8p, i64, i64, i64.as_pointer()])

_CPUSET_WORDS = 16  # cpu_set_t: 1024 bits
_CPUSET_BYTES = 8 * _CPUSET_WORDS
_ATTR_BYTES = 128  # >= sizeof(pthread_attr_t) (56 on x86-64 glibc, 64 on aarch64)
_PTHREAD_CREATE_DETACHED = 1

# waiting for a helper: spin with pause, then sched_yield, then usleep(_SLEEP_US)
_SPIN_PAUSE = 20000  # ~0.3 ms of pause on this CPU
_SPIN_YIELD = 20000 + 20000
_SLEEP_US = 20

# per-part state kept by the runner
_INLINE, _DETACHED, _JOINABLE = 0, 1, 2


def threads_available() -> bool:
    """True when MCJIT can resolve pthread_create/pthread_join in this process."""
    import llvmlite.binding as llvm

    from . import jit

    jit.initialize()
    return bool(llvm.address_of_symbol("pthread_create")) and bool(
        llvm.address_of_symbol("pthread_join")
    )


def default_nthreads() -> int:
    """Number of threads generated kernels split large work into: the CPUs this
    process may run on (capped at MAX_PARTS), or 1 without pthreads."""
    if not threads_available():
        return 1
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_PARTS))


def pinning_enabled() -> bool:
    """Whether runners emitted now pin helper threads to CPUs (``Options.pin_threads``;
    ``KCOMPILER_PIN_THREADS=0`` turns it off)."""
    from .irutil import generation_options
    return generation_options().pin_threads


def _get_or_declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name=name)
    return fn


def _emit_trampoline(module: ir.Module) -> ir.Function:
    fn = module.globals.get(TRAMPOLINE_NAME)
    if fn is not None:
        return fn
    fn = ir.Function(module, ir.FunctionType(i8p, [i8p]), name=TRAMPOLINE_NAME)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], _ARG_T.as_pointer())
    zero = ir.Constant(i32, 0)
    vals = [b.load(b.gep(rec, [zero, ir.Constant(i32, k)], inbounds=True)) for k in range(5)]
    b.call(vals[0], [vals[1], vals[2], vals[3]])
    # last access to the caller's memory: after this the caller may return
    b.store_atomic(ir.Constant(i64, 1), vals[4], "release", 8)
    b.ret(ir.Constant(i8p, None))
    return fn


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def get_parallel_runner(module: ir.Module) -> ir.Function:
    """Return (adding it on first use) ``void kc_parallel_run(part_fn*, i8* ctx, i64 nparts)``.

    See the module docstring for what it does. ``nparts <= 1`` runs part 0 of 1
    inline; ``nparts`` is clamped to :data:`MAX_PARTS`.
    """
    fn = module.globals.get(RUNNER_NAME)
    if fn is not None:
        return fn
    pin = pinning_enabled()
    d = lambda name, ret, *args: _get_or_declare(module, name, ir.FunctionType(ret, list(args)))  # noqa: E731
    create = d("pthread_create", i32, _PTHREAD_T.as_pointer(), i8p,
               ir.FunctionType(i8p, [i8p]).as_pointer(), i8p)
    join = d("pthread_join", i32, _PTHREAD_T, i8p.as_pointer())
    attr_init = d("pthread_attr_init", i32, i8p)
    attr_destroy = d("pthread_attr_destroy", i32, i8p)
    attr_detach = d("pthread_attr_setdetachstate", i32, i8p, i32)
    sched_yield = d("sched_yield", i32)
    usleep = d("usleep", i32, i32)
    pause = d("llvm.x86.sse2.pause", void) if _is_x86() else None
    if pin:
        getcpu = d("sched_getcpu", i32)
        getaff = d("sched_getaffinity", i32, i32, i64, i8p)
        attr_setaff = d("pthread_attr_setaffinity_np", i32, i8p, i64, i8p)
    tramp = _emit_trampoline(module)

    fn = ir.Function(module, ir.FunctionType(void, [PART_FN_TYPE.as_pointer(), i8p, i64]),
                     name=RUNNER_NAME)
    fn.linkage = "internal"
    part_fn, ctx, nparts_in = fn.args
    part_fn.name, ctx.name, nparts_in.name = "part_fn", "ctx", "nparts"
    c32 = lambda v: ir.Constant(i32, v)  # noqa: E731
    c64 = lambda v: ir.Constant(i64, v)  # noqa: E731
    one, zero = c64(1), c64(0)

    b = ir.IRBuilder(fn.append_basic_block("entry"))
    tids = b.alloca(ir.ArrayType(_PTHREAD_T, MAX_PARTS), name="tids")
    args = b.alloca(ir.ArrayType(_ARG_T, MAX_PARTS), name="args")
    state = b.alloca(ir.ArrayType(i8, MAX_PARTS), name="state")
    done = b.alloca(ir.ArrayType(i64, MAX_PARTS), name="done")
    attr = b.alloca(ir.ArrayType(i64, _ATTR_BYTES // 8), name="attr")
    attr_p = b.bitcast(attr, i8p)
    if pin:
        mask = b.alloca(ir.ArrayType(i64, _CPUSET_WORDS), name="mask")
        one_cpu = b.alloca(ir.ArrayType(i64, _CPUSET_WORDS), name="one_cpu")
        cpus = b.alloca(ir.ArrayType(i32, MAX_PARTS), name="cpus")
        ncpus_slot = b.alloca(i64, name="ncpus.slot")
    nparts = b.select(b.icmp_signed(">", nparts_in, c64(MAX_PARTS)), c64(MAX_PARTS), nparts_in,
                      name="np")
    with b.if_then(b.icmp_signed("<=", nparts, one), likely=False):
        b.call(part_fn, [ctx, zero, one])
        b.ret_void()

    def loop(start, stop, name):
        """Open a counted loop; returns (iv, close) where close() ends it."""
        pre = b.block
        hdr = fn.append_basic_block(f"{name}.hdr")
        body = fn.append_basic_block(f"{name}.body")
        end = fn.append_basic_block(f"{name}.end")
        b.branch(hdr)
        b.position_at_end(hdr)
        iv = b.phi(i64, name=name)
        iv.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", iv, stop), body, end)
        b.position_at_end(body)

        def close():
            iv.add_incoming(b.add(iv, one), b.block)
            b.branch(hdr)
            b.position_at_end(end)

        return iv, close

    # ---- CPUs for the helpers: allowed CPUs cyclically after the current one
    if pin:
        b.store(zero, ncpus_slot)
        cur = b.call(getcpu, [])
        rc_aff = b.call(getaff, [c32(0), c64(_CPUSET_BYTES), b.bitcast(mask, i8p)])
        usable = b.and_(b.and_(b.icmp_signed(">=", cur, c32(0)),
                               b.icmp_signed("<", cur, c32(64 * _CPUSET_WORDS))),
                        b.icmp_signed("==", rc_aff, c32(0)))
        with b.if_then(usable):
            nbits = c64(64 * _CPUSET_WORDS)
            step, close = loop(one, b.add(nbits, one), "cpu")
            c = b.urem(b.add(b.sext(cur, i64), step), nbits)
            word = b.load(b.gep(mask, [zero, b.lshr(c, c64(6))], inbounds=True))
            bit = b.and_(b.lshr(word, b.and_(c, c64(63))), one)
            cnt = b.load(ncpus_slot)
            with b.if_then(b.and_(b.icmp_unsigned("!=", bit, zero),
                                  b.icmp_signed("<", cnt, c64(MAX_PARTS)))):
                b.store(b.trunc(c, i32), b.gep(cpus, [zero, cnt], inbounds=True))
                b.store(b.add(cnt, one), ncpus_slot)
            close()
        ncpus = b.load(ncpus_slot, name="ncpus")

    # ---- start parts 1..nparts-1
    p, close = loop(one, nparts, "spawn")
    rec = b.gep(args, [zero, p], inbounds=True)
    done_p = b.gep(done, [zero, p], inbounds=True)
    b.store(zero, done_p)
    for k, v in enumerate((part_fn, ctx, p, nparts, done_p)):
        b.store(v, b.gep(rec, [c32(0), c32(k)], inbounds=True))
    tid_ptr = b.gep(tids, [zero, p], inbounds=True)
    state_p = b.gep(state, [zero, p], inbounds=True)
    rec_i8 = b.bitcast(rec, i8p)
    rc_init = b.call(attr_init, [attr_p])
    with b.if_else(b.icmp_signed("==", rc_init, c32(0))) as (with_attr, without_attr):
        with with_attr:
            rc_det = b.call(attr_detach, [attr_p, c32(_PTHREAD_CREATE_DETACHED)])
            if pin:
                with b.if_then(b.icmp_signed(">", ncpus, zero)):
                    cpu = b.zext(b.load(b.gep(cpus, [zero, b.urem(b.sub(p, one), ncpus)],
                                              inbounds=True)), i64)
                    for w in range(_CPUSET_WORDS):
                        b.store(zero, b.gep(one_cpu, [zero, c64(w)], inbounds=True))
                    b.store(b.shl(one, b.and_(cpu, c64(63))),
                            b.gep(one_cpu, [zero, b.lshr(cpu, c64(6))], inbounds=True))
                    b.call(attr_setaff, [attr_p, c64(_CPUSET_BYTES), b.bitcast(one_cpu, i8p)])
            rc = b.call(create, [tid_ptr, attr_p, tramp, rec_i8])
            b.call(attr_destroy, [attr_p])
            st = b.select(b.icmp_signed("==", rc_det, c32(0)), ir.Constant(i8, _DETACHED),
                          ir.Constant(i8, _JOINABLE))
            b.store(b.select(b.icmp_signed("==", rc, c32(0)), st, ir.Constant(i8, _INLINE)),
                    state_p)
        with without_attr:
            rc2 = b.call(create, [tid_ptr, ir.Constant(i8p, None), tramp, rec_i8])
            b.store(b.select(b.icmp_signed("==", rc2, c32(0)), ir.Constant(i8, _JOINABLE),
                             ir.Constant(i8, _INLINE)), state_p)
    with b.if_then(b.icmp_unsigned("==", b.load(state_p), ir.Constant(i8, _INLINE)), likely=False):
        b.call(part_fn, [ctx, p, nparts])  # fall back: run this part here
    close()

    # ---- part 0 on the calling thread
    b.call(part_fn, [ctx, zero, nparts])

    # ---- wait for the helpers
    q, close = loop(one, nparts, "wait")
    st = b.load(b.gep(state, [zero, q], inbounds=True))
    with b.if_then(b.icmp_unsigned("!=", st, ir.Constant(i8, _INLINE))):
        flag = b.gep(done, [zero, q], inbounds=True)
        pre = b.block
        hdr = fn.append_basic_block("spin.hdr")
        body = fn.append_basic_block("spin.body")
        end = fn.append_basic_block("spin.end")
        b.branch(hdr)
        b.position_at_end(hdr)
        it = b.phi(i64, name="spins")
        it.add_incoming(zero, pre)
        v = b.load_atomic(flag, "acquire", 8)
        b.cbranch(b.icmp_unsigned("!=", v, zero), end, body)
        b.position_at_end(body)
        with b.if_else(b.icmp_signed("<", it, c64(_SPIN_PAUSE))) as (spin, slow):
            with spin:
                if pause is not None:
                    b.call(pause, [])
            with slow:
                with b.if_else(b.icmp_signed("<", it, c64(_SPIN_YIELD))) as (yld, slp):
                    with yld:
                        b.call(sched_yield, [])
                    with slp:
                        b.call(usleep, [c32(_SLEEP_US)])
        it.add_incoming(b.add(it, one), b.block)
        b.branch(hdr)
        b.position_at_end(end)
        with b.if_then(b.icmp_unsigned("==", st, ir.Constant(i8, _JOINABLE)), likely=False):
            b.call(join, [b.load(b.gep(tids, [zero, q], inbounds=True)),
                          ir.Constant(i8p.as_pointer(), None)])
    close()
    b.ret_void()
    return fn


def emit_parallel_call(builder: ir.IRBuilder, part_fn: ir.Function, ctx, nparts, runner=None) -> None:
    """Emit ``kc_parallel_run(part_fn, (i8*)ctx, nparts)`` at the builder's position.

    ``part_fn`` must have type :data:`PART_FN_TYPE`; ``ctx`` is any pointer
    (bitcast to ``i8*``) that stays valid until the call returns (e.g. an
    ``alloca`` of the caller); ``nparts`` an i64 value or a Python int.
    ``runner``: the runner to call (a declaration of the support library's, for
    modules that may be freed while a helper thread finishes); default: one
    defined in the builder's module.
    """
    module = builder.module
    if runner is None:
        runner = get_parallel_runner(module)
    if isinstance(nparts, int):
        nparts = ir.Constant(i64, nparts)
    if ctx.type != i8p:
        ctx = builder.bitcast(ctx, i8p)
    builder.call(runner, [part_fn, ctx, nparts])
