"""Small helpers for emitting LLVM IR with llvmlite: types, constants, loops, math functions."""
import threading
from contextlib import contextmanager

import llvmlite.ir as ir

from ...schedule.kernel import broadcast_strides, contiguous_strides  # noqa: F401  (shared with the old kernels)

i1, i8, i32, i64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
f32, f64 = ir.FloatType(), ir.DoubleType()
void = ir.VoidType()
i8p = i8.as_pointer()

# How each IR dtype is held: in registers (scalar type) and in memory (element type).
REG_TYPE = {"float32": f32, "float64": f64, "int32": i32, "int64": i64, "bool": i1}
MEM_TYPE = {"float32": f32, "float64": f64, "int32": i32, "int64": i64, "bool": i8}
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}


def c64(v):
    return ir.Constant(i64, int(v))


def cf(v, t=f32):
    return ir.Constant(t, float(v))


def const(value, dtype):
    t = REG_TYPE[dtype]
    if dtype.startswith("float"):
        return ir.Constant(t, float(value))
    return ir.Constant(t, int(bool(value)) if dtype == "bool" else int(value))


@contextmanager
def for_range(b, stop, start=0, step=1, name="i"):
    """``for (iv = start; iv < stop; iv += step)`` over i64; yields iv."""
    start = c64(start) if isinstance(start, int) else start
    stop = c64(stop) if isinstance(stop, int) else stop
    step = c64(step) if isinstance(step, int) else step
    pre = b.block
    fn = pre.parent
    header = fn.append_basic_block(f"{name}.header")
    body = fn.append_basic_block(f"{name}.body")
    done = fn.append_basic_block(f"{name}.done")
    b.branch(header)
    b.position_at_end(header)
    iv = b.phi(i64, name=name)
    iv.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", iv, stop), body, done)
    b.position_at_end(body)
    yield iv
    nxt = b.add(iv, step, name=f"{name}.next")
    iv.add_incoming(nxt, b.block)
    b.branch(header)
    b.position_at_end(done)


@contextmanager
def loop_nest(b, shape, name="d"):
    """Nested loops over a static shape (outermost first); yields the list of index values."""
    if not shape:
        yield []
        return
    with for_range(b, shape[0], name=f"{name}0") as i0:
        if len(shape) == 1:
            yield [i0]
        else:
            with loop_nest(b, shape[1:], name=name + "_") as rest:
                yield [i0] + rest


def linear_index(b, idx, strides):
    """sum(idx[k] * strides[k]) as i64 (strides static ints; zero strides skipped)."""
    total = None
    for i, s in zip(idx, strides):
        if s == 0:
            continue
        term = i if s == 1 else b.mul(i, c64(s))
        total = term if total is None else b.add(total, term)
    return total if total is not None else c64(0)


def opaque(b, value):
    """``value`` (an i64) through an empty inline asm: the same number at run time, but one the
    optimiser cannot see, so a loop counting to it is neither fully unrolled nor specialised."""
    return b.call(ir.InlineAsm(ir.FunctionType(value.type, [value.type]), "", "=r,0"), [value])


def get_function(module, name, ret, args):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name=name)
    return fn


def intrinsic(b, name, ret, args):
    """Call an LLVM intrinsic or a libm function by name."""
    fn = get_function(b.module, name, ret, [a.type for a in args])
    return b.call(fn, args)


# Bounds-checked builds (Options.bounds_check, KCOMPILER_BOUNDS_CHECK=1): kernels register each buffer pointer
# with its element count and the kernel's status word; every load/store through these
# helpers then checks its index, reports STATUS_OUT_OF_BOUNDS and skips the access.
from ...schedule.kernel import STATUS_OUT_OF_BOUNDS  # noqa: E402  (status codes are shared)
_checked = {}  # id(pointer value) -> (pointer, element count, status pointer)


_generation = threading.local()


@contextmanager
def generating(options):
    """Generate code under ``options`` (kcompiler/options.py) in this thread: the settings that
    shape the IR (bounds checks, profiling, thread pinning) are read from here."""
    previous = getattr(_generation, "options", None)
    _generation.options = options
    try:
        yield
    finally:
        _generation.options = previous


def generation_options():
    options = getattr(_generation, "options", None)
    if options is None:
        from ...options import default_options
        options = default_options()
    return options


def bounds_checking():
    """Whether the code generated now checks every buffer access (``Options.bounds_check``)."""
    return generation_options().bounds_check


def register_buffer(ptr, count, status):
    _checked[id(ptr)] = (ptr, int(count), status)


def _guarded(b, ptr, index, access):
    entry = _checked.get(id(ptr))
    if entry is None or entry[0] is not ptr:
        return access()
    _, count, status = entry
    inside = b.and_(b.icmp_signed(">=", index, c64(0)), b.icmp_signed("<", index, c64(count)))
    result = None
    with b.if_else(inside) as (then, otherwise):
        with then:
            result = access()
            then_block = b.block
        with otherwise:
            b.store(ir.Constant(i32, STATUS_OUT_OF_BOUNDS), status)
            else_block = b.block
    if result is not None and not isinstance(result.type, ir.VoidType):
        phi = b.phi(result.type)
        phi.add_incoming(result, then_block)
        zero = 0.0 if isinstance(result.type, (ir.FloatType, ir.DoubleType)) else 0
        phi.add_incoming(ir.Constant(result.type, zero), else_block)
        return phi
    return None


def load(b, ptr, index, dtype):
    v = _guarded(b, ptr, index, lambda: b.load(b.gep(ptr, [index], inbounds=True)))
    return b.trunc(v, i1) if dtype == "bool" else v


def store(b, value, ptr, index, dtype):
    if dtype == "bool":
        value = b.zext(value, i8)
    _guarded(b, ptr, index, lambda: b.store(value, b.gep(ptr, [index], inbounds=True)))
