"""One generated kernel: an LLVM function over the buffers of one IR node.

Every kernel has the signature ``void k(i8* out_0, ..., i8* in_0, ..., i32* status)``, where
``status`` is the head of the step's error record (passes/memory_plan.py: i32 status, i32
node id, i64 offending value);
``KernelBuilder`` gives lowerings typed pointers to those buffers, the node's types
and attrs, an IR builder positioned in the body, and shared helpers (the SGEMM,
error reporting). A node with a target-neutral description (kcompiler/schedule/) is
rendered into it by render.py; every other op registers a kernel lowering
``fn(k: KernelBuilder)`` for the target 'llvm'.
"""
import llvmlite.ir as ir

from ...ir.types import num_elements
from ...schedule.kernel import STATUS_OK
from .irutil import MEM_TYPE, bounds_checking, c64, for_range, i8p, i32, i64, register_buffer, void


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
            # kernel still occupies, so outputs alias nothing: this lets LLVM vectorise. (An
            # output computed in place, attrs["in_place"], is stored through its operand's
            # pointer; its own argument, the same address, is never accessed.)
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
        from .support_library import declare_gemm
        return declare_gemm(self.module)

    def call_gemm(self, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, alpha=1.0, beta=0.0, epilogue=None):
        """C = alpha op(A) op(B) + beta C through the support library's SGEMM; ``epilogue``:
        (function, context, prefetch function or null) the SGEMM calls on each finished block of C
        (gemm.py)."""
        from .support_library import declare_epilogue_gemm
        f32 = ir.FloatType()
        args = [ir.Constant(i32, int(trans_a)), ir.Constant(i32, int(trans_b)), _i64(M), _i64(N), _i64(K),
                ir.Constant(f32, alpha), A, _i64(lda), B, _i64(ldb), ir.Constant(f32, beta), C, _i64(ldc)]
        if epilogue is None:
            self.b.call(self.gemm(), args)
        else:
            self.b.call(declare_epilogue_gemm(self.module), args + list(epilogue))

    def call_batched_gemm(self, trans_a, trans_b, M, N, K, A, lda, stride_a, B, ldb, stride_b, C, ldc, stride_c,
                          batch):
        """``batch`` products C_i = op(A_i) op(B_i), X_i = X + i * stride_x, through the support
        library's batched SGEMM (which deals small products out whole to the cores)."""
        from .support_library import declare_batched_gemm
        f32 = ir.FloatType()
        args = [ir.Constant(i32, int(trans_a)), ir.Constant(i32, int(trans_b)), _i64(M), _i64(N), _i64(K),
                ir.Constant(f32, 1.0), A, _i64(lda), _i64(stride_a), B, _i64(ldb), _i64(stride_b),
                ir.Constant(f32, 0.0), C, _i64(ldc), _i64(stride_c), _i64(batch)]
        self.b.call(declare_batched_gemm(self.module), args)


def _i64(v):
    return c64(v) if isinstance(v, int) else v


def _nest(b, dims, fn, idx=()):
    if not dims:
        fn(list(idx))
        return
    with for_range(b, dims[0], name=f"d{len(idx)}") as i:
        _nest(b, dims[1:], fn, idx + (i,))
