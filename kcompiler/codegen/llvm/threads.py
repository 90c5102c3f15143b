"""Fork-join parallelism inside generated code (pthreads declared in the IR).

A kernel that wants to use several cores writes its work as a *part function*

    void part(i8* ctx, i64 part, i64 nparts)

that does the ``part``-th of ``nparts`` independent slices of the work described
by ``ctx``, and calls ``kc_parallel_run(part, ctx, nparts)`` (added to the module
by :func:`get_parallel_runner`; :func:`emit_parallel_call` emits the call).

The support library's runner (the one generated modules call) keeps a pool of helper
threads for the life of the process (_emit_pool_runner): a call hands parts 1..nparts-1 to
helpers that spin, then sleep on a futex, between calls, and costs ~0.4 us more than a serial
one instead of 20-40 us. When the pool is busy (a concurrent call, or a part calling the runner
again), and in modules other than the support library, the runner starts threads per call.

What the per-call runner does, and why (all measured on the 2-vCPU VM, see
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
:mod:`.target`). Even so a parallel call that starts threads costs 20-40 µs more than a
serial one.
"""
from __future__ import annotations

import functools
import os
import platform

import llvmlite.ir as ir

from .irutil import for_range

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
SPAWNING_RUNNER_NAME = "kc_parallel_run.spawning"
TRAMPOLINE_NAME = "kc_parallel_trampoline"
RUNNER_FN_TYPE = ir.FunctionType(void, [PART_FN_TYPE.as_pointer(), i8p, i64])

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


@functools.cache
def threads_available() -> bool:
    """True when MCJIT can resolve pthread_create/pthread_join in this process. Asked once: every
    llvmlite call waits for the one in progress (its FFI lock), and kernel generation asks for
    every kernel while the support library compiles (support_library.start_support_library)."""
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


def _back_off(b, turns, pause_turns, yield_turns, last):
    """One turn of a wait loop, the i64 ``turns`` before it: ``pause`` for ``pause_turns`` turns,
    then ``sched_yield`` until ``yield_turns``, then ``last(b)`` (a sleep)."""
    module = b.module
    with b.if_else(b.icmp_signed("<", turns, ir.Constant(i64, pause_turns))) as (spin, slow):
        with spin:
            if _is_x86():
                b.call(_get_or_declare(module, "llvm.x86.sse2.pause", ir.FunctionType(void, [])), [])
        with slow:
            with b.if_else(b.icmp_signed("<", turns, ir.Constant(i64, yield_turns))) as (yld, rest):
                with yld:
                    b.call(_get_or_declare(module, "sched_yield", ir.FunctionType(i32, [])), [])
                with rest:
                    last(b)


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def get_parallel_runner(module: ir.Module, pool: bool = False) -> ir.Function:
    """Return (adding it on first use) ``void kc_parallel_run(part_fn*, i8* ctx, i64 nparts)``.

    See the module docstring for what it does. ``nparts <= 1`` runs part 0 of 1
    inline; ``nparts`` is clamped to :data:`MAX_PARTS`. With ``pool`` (the support library
    only: its helper threads run its code for the life of the process) the runner hands the
    parts to the library's persistent helper threads (_emit_pool_runner), and starts threads
    per call as below only when the pool is busy.
    """
    fn = module.globals.get(RUNNER_NAME)
    if fn is not None:
        return fn
    if pool:
        return _emit_pool_runner(module, _emit_spawning_runner(module, SPAWNING_RUNNER_NAME))
    return _emit_spawning_runner(module, RUNNER_NAME)


def _emit_spawning_runner(module: ir.Module, name: str) -> ir.Function:
    """The runner that starts a thread per part and call (module docstring)."""
    pin = pinning_enabled()
    d = lambda name, ret, *args: _get_or_declare(module, name, ir.FunctionType(ret, list(args)))  # noqa: E731
    create = d("pthread_create", i32, _PTHREAD_T.as_pointer(), i8p,
               ir.FunctionType(i8p, [i8p]).as_pointer(), i8p)
    join = d("pthread_join", i32, _PTHREAD_T, i8p.as_pointer())
    attr_init = d("pthread_attr_init", i32, i8p)
    attr_destroy = d("pthread_attr_destroy", i32, i8p)
    attr_detach = d("pthread_attr_setdetachstate", i32, i8p, i32)
    usleep = d("usleep", i32, i32)
    if pin:
        getcpu = d("sched_getcpu", i32)
        getaff = d("sched_getaffinity", i32, i32, i64, i8p)
        attr_setaff = d("pthread_attr_setaffinity_np", i32, i8p, i64, i8p)
    tramp = _emit_trampoline(module)

    fn = ir.Function(module, RUNNER_FN_TYPE, name=name)
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
        _back_off(b, it, _SPIN_PAUSE, _SPIN_YIELD, lambda b: b.call(usleep, [c32(_SLEEP_US)]))
        it.add_incoming(b.add(it, one), b.block)
        b.branch(hdr)
        b.position_at_end(end)
        with b.if_then(b.icmp_unsigned("==", st, ir.Constant(i8, _JOINABLE)), likely=False):
            b.call(join, [b.load(b.gep(tids, [zero, q], inbounds=True)),
                          ir.Constant(i8p.as_pointer(), None)])
    close()
    b.ret_void()
    return fn


# ---- the support library's pool of helper threads -------------------------------------------

# a helper's slot, one cache line: the job sequence number the caller bumps (the futex word),
# the last one the helper finished, whether it sleeps, then the job (part fn, ctx, part, nparts)
# then the CPU it is pinned to plus one (0: not pinned) and its thread id
_SLOT_T = ir.LiteralStructType([i32, i32, i32, i32, PART_FN_TYPE.as_pointer(), i8p, i64, i64, _PTHREAD_T, i64])
_SEQ, _DONE, _SLEEPING, _CPU, _FN, _CTX, _PART, _NPARTS, _TID = 0, 1, 2, 3, 4, 5, 6, 7, 8
# a helper waiting for work spins with pause (~50 us), then with sched_yield (~0.5 ms in all:
# the gaps between the kernels of a step, and between steps, are shorter; a thread that shares
# its CPU gets it meanwhile), then sleeps on the futex; the caller waiting for a helper's part
# pauses as long, then yields, then sleeps
_POOL_PAUSE = 2000
_POOL_YIELD = _POOL_PAUSE + 2000
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129


def _cpus_after_current(module, b):
    """(cpus, n): an alloca of up to MAX_PARTS i32 CPU numbers, the CPUs this process may run on
    in cyclic order after the one the caller runs on, and how many (an i64; 0 when unknown)."""
    d = lambda name, ret, *args: _get_or_declare(module, name, ir.FunctionType(ret, list(args)))  # noqa: E731
    getcpu, getaff = d("sched_getcpu", i32), d("sched_getaffinity", i32, i32, i64, i8p)
    c64 = lambda v: ir.Constant(i64, v)  # noqa: E731
    with b.goto_entry_block():
        mask = b.alloca(ir.ArrayType(i64, _CPUSET_WORDS), name="mask")
        cpus = b.alloca(ir.ArrayType(i32, MAX_PARTS), name="cpus")
        count = b.alloca(i64, name="ncpus.slot")
    b.store(c64(0), count)
    cur = b.call(getcpu, [])
    rc = b.call(getaff, [ir.Constant(i32, 0), c64(_CPUSET_BYTES), b.bitcast(mask, i8p)])
    usable = b.and_(b.and_(b.icmp_signed(">=", cur, ir.Constant(i32, 0)),
                           b.icmp_signed("<", cur, ir.Constant(i32, 64 * _CPUSET_WORDS))),
                    b.icmp_signed("==", rc, ir.Constant(i32, 0)))
    with b.if_then(usable):
        nbits = c64(64 * _CPUSET_WORDS)
        with for_range(b, b.add(nbits, c64(1)), start=c64(1), name="cpu") as step:
            c = b.urem(b.add(b.sext(cur, i64), step), nbits)
            word = b.load(b.gep(mask, [c64(0), b.lshr(c, c64(6))], inbounds=True))
            n = b.load(count)
            with b.if_then(b.and_(b.icmp_unsigned("!=", b.and_(b.lshr(word, b.and_(c, c64(63))), c64(1)), c64(0)),
                                  b.icmp_signed("<", n, c64(MAX_PARTS)))):
                b.store(b.trunc(c, i32), b.gep(cpus, [c64(0), n], inbounds=True))
                b.store(b.add(n, c64(1)), count)
    return cpus, b.load(count, name="ncpus")


def _one_cpu(b, cpu):
    """An i8* to a cpu_set_t (on the stack) holding only ``cpu`` (an i64)."""
    with b.goto_entry_block():
        one_cpu = b.alloca(ir.ArrayType(i64, _CPUSET_WORDS), name="one_cpu")
    b.store(ir.Constant(ir.ArrayType(i64, _CPUSET_WORDS), None), one_cpu)
    b.store(b.shl(ir.Constant(i64, 1), b.and_(cpu, ir.Constant(i64, 63))),
            b.gep(one_cpu, [ir.Constant(i64, 0), b.lshr(cpu, ir.Constant(i64, 6))], inbounds=True))
    return b.bitcast(one_cpu, i8p)


def _set_affinity(module, b, attr_p, cpu):
    """Thread attributes ``attr_p`` pin the thread to ``cpu`` (an i64)."""
    setaff = _get_or_declare(module, "pthread_attr_setaffinity_np", ir.FunctionType(i32, [i8p, i64, i8p]))
    b.call(setaff, [attr_p, ir.Constant(i64, _CPUSET_BYTES), _one_cpu(b, cpu)])


def _sys_futex():
    machine = platform.machine().lower()
    return {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(machine)


def _emit_pool_runner(module: ir.Module, spawning: ir.Function) -> ir.Function:
    """``kc_parallel_run`` over persistent helper threads: starting a thread per part and call
    cost 20-40 us a call on the 2-vCPU VM, more than many kernels' parts take.

    Helper p (1 .. MAX_PARTS-1, started when a call first needs it, detached, never stopped)
    waits on slot p: it spins on the slot's sequence number, then sleeps on it (futex). A call
    takes the pool (a try-lock: a concurrent call, or a part calling the runner again, uses the
    spawning runner instead), writes each helper's job into its slot and bumps its sequence
    number (waking a sleeping helper), runs part 0, and waits for each helper's done number to
    reach it. The pool records the process id that started its helpers: a forked child (which
    has none of them) starts its own. The work is always done completely: a part whose helper
    cannot be started runs on the calling thread."""
    futex = _sys_futex()
    if futex is None:  # no futex number known for this machine: threads per call
        spawning.name = RUNNER_NAME
        return spawning
    d = lambda name, ret, *args, **kw: _get_or_declare(module, name, ir.FunctionType(ret, list(args), **kw))  # noqa: E731
    create = d("pthread_create", i32, _PTHREAD_T.as_pointer(), i8p, ir.FunctionType(i8p, [i8p]).as_pointer(), i8p)
    attr_init = d("pthread_attr_init", i32, i8p)
    attr_destroy = d("pthread_attr_destroy", i32, i8p)
    attr_detach = d("pthread_attr_setdetachstate", i32, i8p, i32)
    getpid = d("getpid", i32)
    syscall = d("syscall", i64, i64, var_arg=True)
    usleep = d("usleep", i32, i32)
    c32 = lambda v: ir.Constant(i32, v)  # noqa: E731
    c64 = lambda v: ir.Constant(i64, v)  # noqa: E731

    def global_(name, t, align=8):
        g = ir.GlobalVariable(module, t, name=name)
        g.linkage, g.initializer, g.align = "internal", ir.Constant(t, None), align
        return g

    slots = global_("kc_pool.slots", ir.ArrayType(_SLOT_T, MAX_PARTS), align=64)
    lock, owner, started = global_("kc_pool.lock", i32, 4), global_("kc_pool.pid", i32, 4), global_("kc_pool.started", i64)

    def field(b, slot, k):
        return b.gep(slot, [c32(0), c32(k)], inbounds=True)

    def futex_call(b, word, op, value):
        b.call(syscall, [c64(futex), b.ptrtoint(word, i64), c64(op), b.zext(value, i64) if value.type == i32 else value,
                         c64(0), c64(0), c64(0)])

    def spin_then_rest(fn, b, done_test, name, rest):
        """Loop until ``done_test(b)`` (an i1) is true, calling ``rest(b, turns)`` between tests."""
        pre = b.block
        hdr, body, end = (fn.append_basic_block(f"{name}.{t}") for t in ("hdr", "body", "end"))
        b.branch(hdr)
        b.position_at_end(hdr)
        turns = b.phi(i64, name=f"{name}.turns")
        turns.add_incoming(c64(0), pre)
        b.cbranch(done_test(b), end, body)
        b.position_at_end(body)
        rest(b, turns)
        turns.add_incoming(b.add(turns, c64(1)), b.block)
        b.branch(hdr)
        b.position_at_end(end)

    # ---- the helper: void* kc_pool.helper(void* slot)
    helper = ir.Function(module, ir.FunctionType(i8p, [i8p]), name="kc_pool.helper")
    helper.linkage = "internal"
    b = ir.IRBuilder(helper.append_basic_block("entry"))
    slot = b.bitcast(helper.args[0], _SLOT_T.as_pointer())
    seq_p, done_p, sleeping_p = field(b, slot, _SEQ), field(b, slot, _DONE), field(b, slot, _SLEEPING)
    entry = b.block
    wait = helper.append_basic_block("wait")
    b.branch(wait)
    b.position_at_end(wait)
    last = b.phi(i32, name="last")
    last.add_incoming(c32(0), entry)

    def sleep(b):  # announce the sleep, then sleep only if no job came meanwhile
        b.store_atomic(c32(1), sleeping_p, "seq_cst", 4)
        with b.if_then(b.icmp_unsigned("==", b.load_atomic(seq_p, "seq_cst", 4), last)):
            futex_call(b, seq_p, _FUTEX_WAIT_PRIVATE, last)
        b.store_atomic(c32(0), sleeping_p, "seq_cst", 4)

    def idle(b, turns):
        _back_off(b, turns, _POOL_PAUSE, _POOL_YIELD, sleep)

    spin_then_rest(helper, b, lambda b: b.icmp_unsigned("!=", b.load_atomic(seq_p, "acquire", 4), last), "job", idle)
    seq = b.load_atomic(seq_p, "acquire", 4)
    b.call(b.load(field(b, slot, _FN)), [b.load(field(b, slot, _CTX)), b.load(field(b, slot, _PART)),
                                         b.load(field(b, slot, _NPARTS))])
    b.store_atomic(seq, done_p, "release", 4)
    last.add_incoming(seq, b.block)
    b.branch(wait)

    # ---- the runner
    fn = ir.Function(module, RUNNER_FN_TYPE, name=RUNNER_NAME)
    fn.linkage = "internal"
    part_fn, ctx, nparts_in = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    tid = b.alloca(_PTHREAD_T, name="tid")
    attr = b.alloca(ir.ArrayType(i64, _ATTR_BYTES // 8), name="attr")
    attr_p = b.bitcast(attr, i8p)
    with b.if_then(b.icmp_signed("<=", nparts_in, c64(1)), likely=False):
        b.call(part_fn, [ctx, c64(0), c64(1)])
        b.ret_void()
    nparts = b.select(b.icmp_signed(">", nparts_in, c64(MAX_PARTS)), c64(MAX_PARTS), nparts_in, name="np")
    pid = b.call(getpid, [])
    seen = b.load_atomic(owner, "acquire", 4)
    with b.if_else(b.icmp_signed("==", seen, pid), likely=True) as (ours, new_process):
        with ours:
            taken = b.extract_value(b.cmpxchg(lock, c32(0), c32(1), "acquire", "monotonic"), 1)
            ours_block = b.block
        with new_process:
            # the first call in this process, or in a forked child (whose helpers do not
            # exist): the call that claims the pool (owner -1 while it resets) starts it afresh,
            # holding its lock; a call meanwhile spawns threads
            claim = b.cmpxchg(owner, seen, c32(-1), "acq_rel", "acquire")
            claimed = b.and_(b.icmp_signed("!=", seen, c32(-1)), b.extract_value(claim, 1))
            with b.if_then(claimed):
                b.store(c64(0), started)
                b.store(ir.Constant(ir.ArrayType(_SLOT_T, MAX_PARTS), None), slots)
                b.store_atomic(c32(1), lock, "release", 4)
                b.store_atomic(pid, owner, "release", 4)
            new_block = b.block
    holds = b.phi(ir.IntType(1), name="holds")
    holds.add_incoming(taken, ours_block)
    holds.add_incoming(claimed, new_block)
    with b.if_then(b.not_(holds), likely=False):
        b.call(spawning, [part_fn, ctx, nparts])
        b.ret_void()

    def slot_of(b, p):
        return b.gep(slots, [c64(0), p], inbounds=True)

    # start the helpers this call needs that are not running yet: helper p pinned (unless
    # pinning is off) to the p-th CPU this process may use after the caller's, as the spawning
    # runner pins its threads (left alone, Linux may start a helper on its creator's CPU)
    have = b.load(started)
    with b.if_then(b.icmp_signed("<", have, b.sub(nparts, c64(1))), likely=False):
        cpus, ncpus = _cpus_after_current(module, b) if pinning_enabled() else (None, None)
        rc_init = b.call(attr_init, [attr_p])
        with b.if_then(b.icmp_signed("==", rc_init, c32(0))):
            with for_range(b, nparts, start=b.add(have, c64(1)), name="start") as p:
                with b.if_then(b.icmp_signed("==", b.load(started), b.sub(p, c64(1)))):  # the ones before it started
                    b.call(attr_detach, [attr_p, c32(_PTHREAD_CREATE_DETACHED)])
                    if cpus is not None:
                        with b.if_then(b.icmp_signed(">", ncpus, c64(0))):
                            cpu = b.zext(b.load(b.gep(cpus, [c64(0), b.urem(b.sub(p, c64(1)), ncpus)], inbounds=True)),
                                         i64)
                            _set_affinity(module, b, attr_p, cpu)
                            b.store(b.trunc(b.add(cpu, c64(1)), i32), field(b, slot_of(b, p), _CPU))
                    rc = b.call(create, [tid, attr_p, helper, b.bitcast(slot_of(b, p), i8p)])
                    with b.if_then(b.icmp_signed("==", rc, c32(0))):
                        b.store(b.load(tid), field(b, slot_of(b, p), _TID))
                        b.store(p, started)
            b.call(attr_destroy, [attr_p])
    ready = b.load(started, name="ready")  # helpers 1 .. ready run; the other parts run here
    helped = b.select(b.icmp_signed("<", ready, b.sub(nparts, c64(1))), ready, b.sub(nparts, c64(1)), name="helped")

    if pinning_enabled():
        # the caller may since have moved onto a helper's CPU (it is not pinned): that helper
        # and this thread would then take turns on one CPU, each parallel call run serially
        # after spin-waits (W6 steps ran 2-3x slower in some processes, as they also do while
        # the host puts the two CPUs far apart: benchmarks/placement.py); the helper moves to
        # the CPU it would be given now
        setaff = _get_or_declare(module, "pthread_setaffinity_np", ir.FunctionType(i32, [_PTHREAD_T, i64, i8p]))
        here = b.add(b.call(_get_or_declare(module, "sched_getcpu", ir.FunctionType(i32, [])), []), c32(1))
        with for_range(b, b.add(helped, c64(1)), start=c64(1), name="repin") as p:
            slot = slot_of(b, p)
            with b.if_then(b.icmp_signed("==", b.load(field(b, slot, _CPU)), here), likely=False):
                cpus, ncpus = _cpus_after_current(module, b)
                with b.if_then(b.icmp_signed(">", ncpus, c64(0))):
                    cpu = b.zext(b.load(b.gep(cpus, [c64(0), b.urem(b.sub(p, c64(1)), ncpus)], inbounds=True)), i64)
                    rc = b.call(setaff, [b.load(field(b, slot, _TID)), c64(_CPUSET_BYTES), _one_cpu(b, cpu)])
                    with b.if_then(b.icmp_signed("==", rc, c32(0))):
                        b.store(b.trunc(b.add(cpu, c64(1)), i32), field(b, slot, _CPU))
    with for_range(b, b.add(helped, c64(1)), start=c64(1), name="give") as p:
        slot = slot_of(b, p)
        b.store(part_fn, field(b, slot, _FN))
        b.store(ctx, field(b, slot, _CTX))
        b.store(p, field(b, slot, _PART))
        b.store(nparts, field(b, slot, _NPARTS))
        seq_p = field(b, slot, _SEQ)
        b.store_atomic(b.add(b.load(seq_p), c32(1)), seq_p, "seq_cst", 4)
        with b.if_then(b.icmp_unsigned("!=", b.load_atomic(field(b, slot, _SLEEPING), "seq_cst", 4), c32(0))):
            futex_call(b, seq_p, _FUTEX_WAKE_PRIVATE, c32(1))
    b.call(part_fn, [ctx, c64(0), nparts])
    with for_range(b, nparts, start=b.add(helped, c64(1)), name="inline") as p:
        b.call(part_fn, [ctx, p, nparts])

    def rest(b, turns):
        _back_off(b, turns, _POOL_PAUSE, _POOL_PAUSE + _SPIN_YIELD, lambda b: b.call(usleep, [c32(_SLEEP_US)]))

    with for_range(b, b.add(helped, c64(1)), start=c64(1), name="join") as p:
        slot = slot_of(b, p)
        target = b.load(field(b, slot, _SEQ))
        spin_then_rest(fn, b, lambda b: b.icmp_unsigned("==", b.load_atomic(field(b, slot, _DONE), "acquire", 4),
                                                        target), "done", rest)
    b.store_atomic(c32(0), lock, "release", 4)
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
