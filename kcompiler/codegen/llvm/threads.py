"""Fork-join parallelism inside generated code (pthreads declared in the IR).

A kernel that wants to use several cores writes its work as a *part function*

    void part(i8* ctx, i64 part, i64 nparts)

that does the ``part``-th of ``nparts`` independent slices of the work described
by ``ctx``, and calls ``kc_parallel_run(part, ctx, nparts)`` (added to the module
by :func:`get_parallel_runner`). The runner starts ``nparts - 1`` threads with
``pthread_create`` (each runs a trampoline that unpacks its argument record and
calls the part function), runs part 0 on the calling thread and joins the
others. If ``pthread_create`` fails, that part runs inline on the calling
thread, so the result is always complete. MCJIT resolves ``pthread_create`` and
``pthread_join`` from the running process (see :mod:`.target`).

Thread creation and join cost about 20 µs on this machine, so callers should
only split work whose parts take well over that (see gemm's threshold).
"""
from __future__ import annotations

import os

import llvmlite.ir as ir

__all__ = [
    "MAX_PARTS",
    "PART_FN_TYPE",
    "default_nthreads",
    "emit_parallel_call",
    "get_parallel_runner",
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
_ARG_T = ir.LiteralStructType([PART_FN_TYPE.as_pointer(), i8p, i64, i64])


def threads_available() -> bool:
    """True when MCJIT can resolve pthread_create/pthread_join in this process."""
    from . import target

    target.initialize()
    import llvmlite.binding as llvm

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


def _get_or_declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name=name)
    return fn


def _declare_pthreads(module: ir.Module):
    start_routine = ir.FunctionType(i8p, [i8p]).as_pointer()
    create = _get_or_declare(
        module,
        "pthread_create",
        ir.FunctionType(i32, [_PTHREAD_T.as_pointer(), i8p, start_routine, i8p]),
    )
    join = _get_or_declare(
        module, "pthread_join", ir.FunctionType(i32, [_PTHREAD_T, i8p.as_pointer()])
    )
    return create, join


def _emit_trampoline(module: ir.Module) -> ir.Function:
    fn = module.globals.get(TRAMPOLINE_NAME)
    if fn is not None:
        return fn
    fn = ir.Function(module, ir.FunctionType(i8p, [i8p]), name=TRAMPOLINE_NAME)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], _ARG_T.as_pointer())
    zero = ir.Constant(i32, 0)
    vals = [b.load(b.gep(rec, [zero, ir.Constant(i32, k)], inbounds=True)) for k in range(4)]
    b.call(vals[0], [vals[1], vals[2], vals[3]])
    b.ret(ir.Constant(i8p, None))
    return fn


def _declare_affinity(module: ir.Module):
    """glibc functions used to place helper threads on other CPUs."""
    return dict(
        getcpu=_get_or_declare(module, "sched_getcpu", ir.FunctionType(i32, [])),
        getaff=_get_or_declare(module, "sched_getaffinity",
                               ir.FunctionType(i32, [i32, i64, i8p])),
        attr_init=_get_or_declare(module, "pthread_attr_init", ir.FunctionType(i32, [i8p])),
        attr_destroy=_get_or_declare(module, "pthread_attr_destroy", ir.FunctionType(i32, [i8p])),
        attr_setaff=_get_or_declare(module, "pthread_attr_setaffinity_np",
                                    ir.FunctionType(i32, [i8p, i64, i8p])),
    )


_CPUSET_WORDS = 16  # cpu_set_t: 1024 bits
_CPUSET_BYTES = 8 * _CPUSET_WORDS
_ATTR_BYTES = 128  # >= sizeof(pthread_attr_t) (56 on x86-64 glibc, 64 on aarch64)


def pinning_enabled() -> bool:
    """Whether runners emitted now pin helper threads (``KCOMPILER_PIN_THREADS=0``
    turns it off; read when the IR is generated)."""
    return os.environ.get("KCOMPILER_PIN_THREADS", "1") not in ("0", "false", "no")


def get_parallel_runner(module: ir.Module) -> ir.Function:
    """Return (adding it on first use) ``void kc_parallel_run(part_fn*, i8* ctx, i64 nparts)``.

    Helper thread ``p`` (1 <= p < nparts) is created pinned to the p-th CPU of the
    caller's affinity mask counting cyclically after the CPU the caller runs on:
    left to itself, Linux often queues a new thread on its creator's busy CPU, where
    it only starts after part 0 is done (measured: the 2-thread GEMM then runs at
    1-thread speed for ~0.5-1 ms calls). If any affinity call fails the thread is
    created without a CPU, and if ``pthread_create`` fails the part runs inline.
    """
    fn = module.globals.get(RUNNER_NAME)
    if fn is not None:
        return fn
    pin = pinning_enabled()
    create, join = _declare_pthreads(module)
    aff = _declare_affinity(module) if pin else None
    tramp = _emit_trampoline(module)
    fn = ir.Function(
        module, ir.FunctionType(void, [PART_FN_TYPE.as_pointer(), i8p, i64]), name=RUNNER_NAME
    )
    fn.linkage = "internal"
    part_fn, ctx, nparts_in = fn.args
    part_fn.name, ctx.name, nparts_in.name = "part_fn", "ctx", "nparts"

    entry = fn.append_basic_block("entry")
    serial = fn.append_basic_block("serial")
    spawn_setup = fn.append_basic_block("spawn.setup")
    b = ir.IRBuilder(entry)
    one = ir.Constant(i64, 1)
    zero64 = ir.Constant(i64, 0)
    z32 = ir.Constant(i32, 0)
    tids = b.alloca(ir.ArrayType(_PTHREAD_T, MAX_PARTS), name="tids")
    args = b.alloca(ir.ArrayType(_ARG_T, MAX_PARTS), name="args")
    ok = b.alloca(ir.ArrayType(i8, MAX_PARTS), name="created")
    if pin:
        mask = b.alloca(ir.ArrayType(i64, _CPUSET_WORDS), name="mask")
        one_cpu = b.alloca(ir.ArrayType(i64, _CPUSET_WORDS), name="one_cpu")
        attr = b.alloca(ir.ArrayType(i64, _ATTR_BYTES // 8), name="attr")
        cpus = b.alloca(ir.ArrayType(i32, MAX_PARTS), name="cpus")
        ncpus_slot = b.alloca(i64, name="ncpus")
    too_many = b.icmp_signed(">", nparts_in, ir.Constant(i64, MAX_PARTS))
    nparts = b.select(too_many, ir.Constant(i64, MAX_PARTS), nparts_in, name="np")
    b.cbranch(b.icmp_signed("<=", nparts, one), serial, spawn_setup)

    b.position_at_end(serial)
    b.call(part_fn, [ctx, zero64, one])
    b.ret_void()

    b.position_at_end(spawn_setup)
    if pin:
        # cpus[0..ncpus) = allowed CPUs in cyclic order after the current one
        # (the current CPU last); ncpus = 0 disables pinning
        b.store(zero64, ncpus_slot)
        cur = b.call(aff["getcpu"], [])
        rc_aff = b.call(aff["getaff"], [z32, ir.Constant(i64, _CPUSET_BYTES), b.bitcast(mask, i8p)])
        usable = b.and_(b.icmp_signed(">=", cur, z32),
                        b.and_(b.icmp_signed("==", rc_aff, z32),
                               b.icmp_signed("<", cur, ir.Constant(i32, 64 * _CPUSET_WORDS))))
        with b.if_then(usable):
            nbits = ir.Constant(i64, 64 * _CPUSET_WORDS)
            cur64 = b.sext(cur, i64)
            hdr = fn.append_basic_block("cpus.hdr")
            body = fn.append_basic_block("cpus.body")
            take = fn.append_basic_block("cpus.take")
            nxt = fn.append_basic_block("cpus.next")
            end = fn.append_basic_block("cpus.end")
            pre = b.block
            b.branch(hdr)
            b.position_at_end(hdr)
            step = b.phi(i64, name="step")
            step.add_incoming(one, pre)
            b.cbranch(b.icmp_signed("<=", step, nbits), body, end)
            b.position_at_end(body)
            c = b.urem(b.add(cur64, step), nbits, name="c")
            word = b.load(b.gep(mask, [zero64, b.lshr(c, ir.Constant(i64, 6))], inbounds=True))
            bit = b.and_(b.lshr(word, b.and_(c, ir.Constant(i64, 63))), one)
            cnt = b.load(ncpus_slot)
            room = b.icmp_signed("<", cnt, ir.Constant(i64, MAX_PARTS))
            b.cbranch(b.and_(b.icmp_unsigned("!=", bit, zero64), room), take, nxt)
            b.position_at_end(take)
            b.store(b.trunc(c, i32), b.gep(cpus, [zero64, cnt], inbounds=True))
            b.store(b.add(cnt, one), ncpus_slot)
            b.branch(nxt)
            b.position_at_end(nxt)
            step.add_incoming(b.add(step, one), nxt)
            b.branch(hdr)
            b.position_at_end(end)
        ncpus = b.load(ncpus_slot, name="ncpus")

    spawn_hdr = fn.append_basic_block("spawn.hdr")
    spawn_body = fn.append_basic_block("spawn.body")
    spawn_fail = fn.append_basic_block("spawn.fail")
    spawn_next = fn.append_basic_block("spawn.next")
    main_part = fn.append_basic_block("main")
    join_hdr = fn.append_basic_block("join.hdr")
    join_body = fn.append_basic_block("join.body")
    join_do = fn.append_basic_block("join.do")
    join_next = fn.append_basic_block("join.next")
    done = fn.append_basic_block("done")
    setup_end = b.block
    b.branch(spawn_hdr)

    # for p in 1..nparts-1: create a thread (or run inline if that fails)
    b.position_at_end(spawn_hdr)
    p = b.phi(i64, name="p")
    p.add_incoming(one, setup_end)
    b.cbranch(b.icmp_signed("<", p, nparts), spawn_body, main_part)

    b.position_at_end(spawn_body)
    rec = b.gep(args, [zero64, p], inbounds=True)
    for k, v in enumerate((part_fn, ctx, p, nparts)):
        b.store(v, b.gep(rec, [z32, ir.Constant(i32, k)], inbounds=True))
    tid_ptr = b.gep(tids, [zero64, p], inbounds=True)
    null_attr = ir.Constant(i8p, None)
    if pin:
        attr_p = b.bitcast(attr, i8p)
        pinned = fn.append_basic_block("spawn.pinned")
        plain = fn.append_basic_block("spawn.plain")
        created_bb = fn.append_basic_block("spawn.created")
        b.cbranch(b.icmp_signed(">", ncpus, zero64), pinned, plain)

        b.position_at_end(pinned)
        cpu = b.load(b.gep(cpus, [zero64, b.urem(b.sub(p, one), ncpus)], inbounds=True))
        cpu64 = b.zext(cpu, i64)
        for w in range(_CPUSET_WORDS):
            b.store(zero64, b.gep(one_cpu, [zero64, ir.Constant(i64, w)], inbounds=True))
        b.store(b.shl(one, b.and_(cpu64, ir.Constant(i64, 63))),
                b.gep(one_cpu, [zero64, b.lshr(cpu64, ir.Constant(i64, 6))], inbounds=True))
        rc_init = b.call(aff["attr_init"], [attr_p])
        rc_set = b.call(aff["attr_setaff"], [attr_p, ir.Constant(i64, _CPUSET_BYTES),
                                             b.bitcast(one_cpu, i8p)])
        good = b.and_(b.icmp_signed("==", rc_init, z32), b.icmp_signed("==", rc_set, z32))
        use_attr = b.select(good, attr_p, null_attr)
        rc_pinned = b.call(create, [tid_ptr, use_attr, tramp, b.bitcast(rec, i8p)])
        with b.if_then(b.icmp_signed("==", rc_init, z32)):
            b.call(aff["attr_destroy"], [attr_p])
        pinned_end = b.block
        b.branch(created_bb)

        b.position_at_end(plain)
        rc_plain = b.call(create, [tid_ptr, null_attr, tramp, b.bitcast(rec, i8p)])
        b.branch(created_bb)

        b.position_at_end(created_bb)
        rc = b.phi(i32, name="rc")
        rc.add_incoming(rc_pinned, pinned_end)
        rc.add_incoming(rc_plain, plain)
    else:
        rc = b.call(create, [tid_ptr, null_attr, tramp, b.bitcast(rec, i8p)])
    created = b.icmp_signed("==", rc, z32)
    b.store(b.zext(created, i8), b.gep(ok, [zero64, p], inbounds=True))
    b.cbranch(created, spawn_next, spawn_fail)

    b.position_at_end(spawn_fail)
    b.call(part_fn, [ctx, p, nparts])  # fall back: run this part inline
    b.branch(spawn_next)

    b.position_at_end(spawn_next)
    p.add_incoming(b.add(p, one), spawn_next)
    b.branch(spawn_hdr)

    b.position_at_end(main_part)
    b.call(part_fn, [ctx, zero64, nparts])
    b.branch(join_hdr)

    b.position_at_end(join_hdr)
    q = b.phi(i64, name="q")
    q.add_incoming(one, main_part)
    b.cbranch(b.icmp_signed("<", q, nparts), join_body, done)

    b.position_at_end(join_body)
    was_created = b.load(b.gep(ok, [zero64, q], inbounds=True))
    b.cbranch(b.icmp_unsigned("!=", was_created, ir.Constant(i8, 0)), join_do, join_next)

    b.position_at_end(join_do)
    tid = b.load(b.gep(tids, [zero64, q], inbounds=True))
    b.call(join, [tid, ir.Constant(i8p.as_pointer(), None)])
    b.branch(join_next)

    b.position_at_end(join_next)
    q.add_incoming(b.add(q, one), join_next)
    b.branch(join_hdr)

    b.position_at_end(done)
    b.ret_void()
    return fn


def emit_parallel_call(builder: ir.IRBuilder, part_fn: ir.Function, ctx, nparts) -> None:
    """Emit ``kc_parallel_run(part_fn, (i8*)ctx, nparts)`` at the builder's position.

    ``part_fn`` must have type :data:`PART_FN_TYPE`; ``ctx`` is any pointer
    (bitcast to ``i8*``) that stays valid until the call returns (e.g. an
    ``alloca`` of the caller); ``nparts`` an i64 value or a Python int.
    """
    module = builder.module
    runner = get_parallel_runner(module)
    if isinstance(nparts, int):
        nparts = ir.Constant(i64, nparts)
    if ctx.type != i8p:
        ctx = builder.bitcast(ctx, i8p)
    builder.call(runner, [part_fn, ctx, nparts])
