"""One generated kernel: an LLVM function over the buffers of one IR node.

Every kernel has the signature ``void k(i8* out_0, ..., i8* in_0, ..., i32* status)``, where
``status`` is the head of the step's error record (passes/memory_plan.py: i32 status, i32
node id, i64 offending value);
``KernelBuilder`` gives lowerings typed pointers to those buffers, the node's types
and attrs, an IR builder positioned in the body, and shared helpers (the SGEMM,
error reporting). Element-wise nodes (fused or single) are lowered here, as loops
evaluating their scalar lowerings; every other op registers a kernel lowering
``fn(k: KernelBuilder)`` for the target 'llvm'.
"""
import llvmlite.ir as ir

from ...ir.registry import get_op
from ...ir.types import num_elements
from ...schedule.kernel import STATUS_OK
from .irutil import (MEM_TYPE, bounds_checking, broadcast_strides, c64, const, contiguous_strides, for_range, i8p, i32,
                     i64, linear_index, load, register_buffer, store, void)
from .scalar import ScalarEmitter


def types_of(t):
    return list(t) if isinstance(t, tuple) else [t]


class KernelBuilder:
    def __init__(self, module, name, node, in_types, inline_constants=None):
        self.module = module
        self.node = node
        self.attrs = node["attrs"]
        self.in_types = in_types
        self.out_types = types_of(node["type"])
        n_in, n_out = len(in_types), len(self.out_types)
        fnty = ir.FunctionType(void, [i8p] * (n_out + n_in) + [i32.as_pointer()])
        self.function = ir.Function(module, fnty, name=name)
        self.function.linkage = "internal"
        args = self.function.args
        for a in args[:n_out]:
            # The memory planner never gives an output bytes that an operand of the same
            # kernel still occupies, so outputs alias nothing: this lets LLVM vectorise.
            a.add_attribute("noalias")
        self.b = ir.IRBuilder(self.function.append_basic_block("entry"))
        self.outputs = [self.b.bitcast(a, MEM_TYPE[t.dtype].as_pointer()) for a, t in zip(args[:n_out], self.out_types)]
        self.inputs = [self.b.bitcast(a, MEM_TYPE[t.dtype].as_pointer()) for a, t in zip(args[n_out:n_out + n_in], in_types)]
        self.status = args[-1]
        if bounds_checking():
            for ptr, t in zip(self.outputs + self.inputs, self.out_types + list(in_types)):
                register_buffer(ptr, num_elements(t.shape), self.status)
        self.inline_constants = inline_constants or {}  # operand index -> scalar value known at compile time

    def buffer_sizes(self):
        """{id(pointer): element count} for every output and input buffer of the kernel."""
        return {id(p): num_elements(t.shape)
                for p, t in zip(self.outputs + self.inputs, self.out_types + list(self.in_types))}

    def finish(self):
        self.b.ret_void()
        return self.function

    def fail(self, code, value):
        """Record an error code and the offending i64 ``value`` in the error record (the first
        error wins). Only ops registered with ``index_error`` may call this: the entry point
        checks the status after their kernels, records the node id and returns."""
        b = self.b
        with b.if_then(b.icmp_signed("==", b.load(self.status), ir.Constant(i32, STATUS_OK))):
            b.store(ir.Constant(i32, code), self.status)
            b.store(value, b.gep(b.bitcast(self.status, i64.as_pointer()), [c64(1)], inbounds=True))

    def gemm(self):
        """The SGEMM of the support library (declared in this module, compiled once per process)."""
        from .support import declare_gemm
        return declare_gemm(self.module)

    def call_gemm(self, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, alpha=1.0, beta=0.0):
        f32 = ir.FloatType()
        self.b.call(self.gemm(), [ir.Constant(i32, int(trans_a)), ir.Constant(i32, int(trans_b)),
                                  _i64(M), _i64(N), _i64(K), ir.Constant(f32, alpha), A, _i64(lda), B, _i64(ldb),
                                  ir.Constant(f32, beta), C, _i64(ldc)])


def _i64(v):
    return c64(v) if isinstance(v, int) else v


# ---- element-wise kernels ---------------------------------------------------------------

def collapse_dims(out_shape, operand_strides):
    """Merge adjacent loop dimensions that every operand walks contiguously (fewer, longer
    loops: the innermost one is what LLVM vectorises)."""
    dims = list(out_shape)
    strides = [list(s) for s in operand_strides]
    out = contiguous_strides(dims)
    k = len(dims) - 1
    while k > 0:
        mergeable = all(s[k - 1] == s[k] * dims[k] for s in strides + [out])
        if mergeable:
            dims[k - 1] *= dims[k]
            del dims[k]
            for s in strides + [out]:
                s[k - 1] = s[k]
                del s[k]
        k -= 1
    return dims, strides


def body_of(node, n_inputs):
    """The member list of an element-wise node: a fused node's body, or the op itself."""
    if node["op"] == "fused":
        return node["attrs"]["body"], node["attrs"]["outputs"]
    n = n_inputs
    return [{"op": node["op"], "attrs": node["attrs"], "args": [["in", i] for i in range(n)]}], [0]


def lower_elementwise(k: KernelBuilder):
    b = k.b
    out_shape = k.out_types[0].shape
    body, outputs = body_of(k.node, len(k.in_types))
    operand_strides = [broadcast_strides(t.shape, out_shape) for t in k.in_types]
    dims, strides = collapse_dims(out_shape, operand_strides)
    out_strides = contiguous_strides(dims)

    def emit(idx):
        flat = linear_index(b, idx, out_strides)
        e = ScalarEmitter(b, flat_index=flat)
        loaded = {}

        def operand(i):
            if i in k.inline_constants:
                return const(k.inline_constants[i], k.in_types[i].dtype)
            if i not in loaded:
                loaded[i] = load(b, k.inputs[i], linear_index(b, idx, strides[i]), k.in_types[i].dtype)
            return loaded[i]

        values = []
        for m in body:
            if m["op"] == "constant":
                values.append(const(m["attrs"]["value"], m["attrs"]["dtype"]))
                continue
            args = [operand(i) if kind == "in" else values[i] for kind, i in m["args"]]
            lower = get_op(m["op"]).lowerings.get("llvm")
            if lower is None:
                raise NotImplementedError(f"op {m['op']!r} has no LLVM lowering")
            values.append(lower(e, args, m["attrs"]))
        for ptr, t, j in zip(k.outputs, k.out_types, outputs):
            store(b, values[j], ptr, flat, t.dtype)

    _nest(b, dims, emit)


def _nest(b, dims, fn, idx=()):
    if not dims:
        fn(list(idx))
        return
    with for_range(b, dims[0], name=f"d{len(idx)}") as i:
        _nest(b, dims[1:], fn, idx + (i,))
