"""The `fused_contraction` kernel: the head (matmul or conv2d) writes its product into the
node's first output buffer; the epilogue then finishes those elements in place — reading the
product, evaluating the element-wise members, storing every output — while they are in
cache. A matmul whose product is one SGEMM hands the epilogue to the SGEMM as a function
(``kc_sgemm_epilogue``), which calls it on each block of the product as soon as the block
is final, on the core that computed it; a convolution calls the epilogue after each block
of rows it computes (its input gradient: after each group of images is complete), and then
pools the rows of windows the block completed when the node also pools an output (attr
``pool``: the max-pooling layer after a convolution reads its input while it is in cache)."""
import llvmlite.ir as ir

from ...errors import KCompilerError
from ...ir.registry import get_op, lowering
from ...ir.types import TensorType, num_elements
from ...ops.conv import conv_geometry
from ...ops.fused import member_types
from ...ops.pool import pool_attrs
from ...schedule.elementwise import member_values
from ...schedule.kernel import Const, Load, Var
from .conv import lower_conv2d, lower_conv2d_backward_input, lower_conv2d_backward_kernel, smin
from .gemm import EPILOGUE_FN_TYPE
from .irutil import MEM_TYPE, bounds_checking, c64, for_range, i8p, i32, load, register_buffer, store
from .render import RangeBuilder, Renderer, ValueRenderer
from .jit import vector_width_attrs


class HeadView:
    """The KernelBuilder as the head's lowering sees it: the head's operands, its attrs, and
    the fused node's first output as its result buffer."""

    def __init__(self, k, head_type):
        n = k.attrs["n_head"]
        self._k = k
        self.b, self.module, self.status, self.function = k.b, k.module, k.status, k.function
        self.node = {"op": k.attrs["head"], "attrs": k.attrs["head_attrs"], "type": head_type}
        self.attrs = k.attrs["head_attrs"]
        self.inputs, self.in_types = k.inputs[:n], list(k.in_types[:n])
        self.outputs, self.out_types = k.outputs[:1], [head_type]
        self.inline_constants = {}

    def __getattr__(self, name):  # gemm, fail, ...
        return getattr(self._k, name)

    def finish_in_gemm(self, epilogue):
        """Let the head's one SGEMM over the whole product apply ``epilogue`` block by block;
        ``self.epilogue_applied`` tells afterwards whether it did."""
        self._block_epilogue, self.epilogue_applied = epilogue, False

    def call_gemm(self, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, alpha=1.0, beta=0.0):
        epilogue = getattr(self, "_block_epilogue", None)
        whole = (C is self.outputs[0] and isinstance(M, int) and isinstance(N, int) and N == ldc
                 and N == epilogue.width and M * N == epilogue.elements) if epilogue is not None else False
        if not whole:
            self._k.call_gemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, alpha, beta)
            return
        self._k.call_gemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, alpha, beta,
                          epilogue=epilogue.block_functions(self._k))
        self.epilogue_applied = True


# What the epilogue's expressions read: the product's element, its column and flat index.
ACC, COLUMN, FLAT = Var("acc", "float32"), Var("column"), Var("flat")


class Epilogue:
    """The element-wise members after the head, evaluated per element of the product through
    the fused body's neutral expressions (schedule.elementwise.member_values): the product as
    ``Var("acc")``, the other operands as loads at the element, along the last axis, or of
    the one scalar."""

    def __init__(self, k, head_type):
        attrs = k.attrs
        self.body, self.out_index = attrs["body"], attrs["outputs"]
        n = attrs["n_head"]
        self.width = head_type.shape[-1]
        self.elements = 1
        for d in head_type.shape:
            self.elements *= d
        self.out_types = k.out_types
        self.extra_types = list(k.in_types[n:])
        self.member_types = member_types(self.extra_types, attrs, acc=head_type)
        constants = {i - n: v for i, v in k.inline_constants.items() if i >= n}
        self.operands = [self._operand(i, t, constants) for i, t in enumerate(self.extra_types)]
        # (with attr pool, out_types and pointers also hold the pooled result, last: the
        # members' outputs, out_index, are the ones before it)
        # output -> epilogue operand it is computed in (passes/memory_plan.py: a state update in
        # its variable's buffer; never output 0, which holds the product first). Every member is
        # bound before the first store, so the operand's element is read before it is written.
        self.in_place = {k: i - n for k, i in attrs.get("in_place", {}).items()}
        # output 0 is only the product, read by nothing after this node (fusion.py: an optimizer
        # update fused into a weight gradient): never rewritten here, and the SGEMM may keep it
        # in its workspace instead of writing it at all (gemm.py)
        self.private_product = bool(attrs.get("private_product"))
        self.pointers = list(k.outputs) + list(k.inputs[n:])  # what a part function must receive

    def _operand(self, i, t, constants):
        if i in constants:
            return Const(constants[i], t.dtype)
        if tuple(t.shape) == ():
            index = Const(0, "int64")
        elif len(t.shape) == 1 and t.shape[0] == self.width and len(self.out_types[0].shape) > 1:
            index = COLUMN
        else:
            index = FLAT
        return Load(f"in{i}", index, t.dtype)

    def block_functions(self, k):
        """For the SGEMM: ``void epilogue(i8* context, i64 row0, i64 rows, i64 col0, i64 cols,
        float* product, i64 ld)`` in k's module, the context it needs (this kernel's output and
        operand pointers), a function of the same type that only asks for the cache lines of
        the block's elements of the state the epilogue updates in place (null when it updates
        none), and whether only the epilogue reads the product (i32)."""
        b = k.b
        types = list(self.out_types) + self.extra_types
        slots = ir.ArrayType(i8p, len(self.pointers))
        context = b.alloca(slots, name="epilogue.context")
        for j, p in enumerate(self.pointers):
            b.store(b.bitcast(p, i8p), b.gep(context, [c64(0), ir.Constant(i32, j)], inbounds=True))

        def block_function(suffix, body):
            fn = ir.Function(k.module, EPILOGUE_FN_TYPE, name=f"{k.function.name}.{suffix}")
            fn.linkage = "internal"
            ctx, row0, rows, col0, cols, product, ld = fn.args
            fb = ir.IRBuilder(fn.append_basic_block("entry"))
            table = fb.bitcast(ctx, slots.as_pointer())
            pointers = [fb.bitcast(fb.load(fb.gep(table, [c64(0), ir.Constant(i32, j)], inbounds=True)),
                                   MEM_TYPE[t.dtype].as_pointer()) for j, t in enumerate(types)]
            body(fb, pointers, row0, rows, col0, cols, product, ld)
            fb.ret_void()
            return fn

        finish = block_function("epilogue", self.emit)
        private = ir.Constant(i32, int(self.private_product))
        # the state an update rewrites in place (a variable, its optimizer slots) is read once a
        # step and has left the caches since; an activation operand (a residual) was just written
        # and is still in them, and asking for it only evicted the product's operands (TX's
        # residual epilogues 5-10 % slower)
        streamed = [len(self.out_types) + i for i in sorted(set(self.in_place.values()))
                    if isinstance(self.operands[i], Load) and self.operands[i].index is FLAT]
        if not streamed:
            return finish, b.bitcast(context, i8p), ir.Constant(EPILOGUE_FN_TYPE.as_pointer(), None), private

        def ask(fb, pointers, row0, rows, col0, cols, product, ld):
            with for_range(fb, rows, name="pr") as r:
                base = fb.add(fb.mul(fb.add(row0, r), c64(self.width)), col0)
                last = fb.add(base, fb.sub(cols, c64(1)))
                for j in streamed:
                    with for_range(fb, last, start=base, step=16, name="pc") as e:
                        prefetch(fb, pointers[j], e)
                    prefetch(fb, pointers[j], last)

        return finish, b.bitcast(context, i8p), block_function("prefetch", ask), private

    def emit(self, b, pointers, first_row, rows, first_col=None, cols=None, product=None, ld=None):
        """Finish rows [first_row, first_row + rows) of the product (i64 values or ints), or of
        those rows the columns [first_col, first_col + cols); the product is read from output 0
        or, given ``product`` and ``ld``, from ``product[r * ld + c]`` for the block's row r and
        column c (the SGEMM's block, wherever it computed it)."""
        width = self.width
        first_row = c64(first_row) if isinstance(first_row, int) else first_row
        first_col = c64(0) if first_col is None else first_col
        cols = c64(width) if cols is None else (c64(cols) if isinstance(cols, int) else cols)
        with for_range(b, rows, name="er") as r:
            row_base = b.mul(b.add(first_row, r), c64(width))
            block_row = None if product is None else b.gep(product, [b.mul(r, ld)], inbounds=True)
            with for_range(b, b.add(first_col, cols), start=first_col, name="ec") as c:
                flat = b.add(row_base, c)
                acc = (load(b, pointers[0], flat, "float32") if product is None
                       else b.load(b.gep(block_row, [b.sub(c, first_col)], inbounds=True)))
                for k, (target, dtype, value) in enumerate(self.values(b, pointers, acc, c, flat)):
                    if not (k == 0 and self.private_product):
                        store(b, value, target, flat, dtype)

    def values(self, b, pointers, acc, column, flat):
        """The node's outputs at one element of the product, ``acc`` (at ``column`` and index
        ``flat``): (where it is stored: its buffer or the operand it updates in place, dtype,
        value) for each. Every value is computed before the caller stores any."""
        outs, extras = pointers[:len(self.out_types)], pointers[len(self.out_types):]
        loads = {f"in{i}": (p, t.dtype) for i, (p, t) in enumerate(zip(extras, self.extra_types))}
        values = ValueRenderer(b, {ACC.name: acc, COLUMN.name: column, FLAT.name: flat}, loads)
        members = member_values(self.body, self.member_types, lambda i: self.operands[i], acc=ACC,
                                index=FLAT, bind=lambda j, e: values.bind(f"m{j}", e))
        return [(extras[self.in_place[k]] if k in self.in_place else ptr, t.dtype, values.expr(members[j]))
                for k, (ptr, t, j) in enumerate(zip(outs, self.out_types, self.out_index))]


class PooledOutput:
    """A fused contraction's pooling of one of its outputs (attr ``pool``: max pooling whose
    windows tile the output; passes/fusion.py) into its last result (max_pool2d_argmax: y and
    idx, its last two), rows of windows at a time."""

    def __init__(self, k, epilogue=None):
        pool = k.attrs["pool"]
        (self.ph, self.pw), _, _ = pool_attrs(pool["op"], pool["attrs"])
        self.argmax = pool["op"] == "max_pool2d_argmax"
        self.source = pool["of"]  # indices into Epilogue.pointers
        self.target = len(k.out_types) - (2 if self.argmax else 1)
        self.store_input = pool.get("store_input", True)  # else the head's lowering keeps it in scratch
        _, self.height, self.width, self.channels = k.out_types[self.source].shape
        self.rows_out, self.cols_out = k.out_types[self.target].shape[1:3]
        # An input kept in scratch is the bare product: the pooling finishes each tap it reads
        # with the epilogue (its one output, from per-channel or scalar operands: fusion.py), so
        # the product is not read and rewritten in between, and the taps no window reads are
        # never finished (W2's first convolution: 1.4 M elements a step; its step 0.6-1 % faster).
        self.finish = None if self.store_input else epilogue

    def emit(self, b, pointers, image, first, end, source_image=None):
        """Pool the rows of windows of image ``image`` that its pixels [first, end) complete
        (i64 values; row-major pixels of that image, earlier ones already pooled); the source
        holds that image as its image ``source_image`` (default: ``image``)."""
        source_image = image if source_image is None else source_image
        c = self.channels
        unit = self.ph * self.width  # the pixels of one row of windows
        lo = b.sdiv(first, c64(unit))
        hi = smin(b, b.sdiv(end, c64(unit)), self.rows_out)
        src, dst = pointers[self.source], pointers[self.target]
        with for_range(b, hi, start=lo, name="pr") as r:
            top = b.mul(b.add(b.mul(source_image, c64(self.height)), b.mul(r, c64(self.ph))), c64(self.width))
            out_row = b.mul(b.add(b.mul(image, c64(self.rows_out)), r), c64(self.cols_out))
            with for_range(b, self.cols_out, name="pc") as pc:
                base = b.mul(b.add(top, b.mul(pc, c64(self.pw))), c64(c))
                out = b.mul(b.add(out_row, pc), c64(c))
                with for_range(b, c, name="pch") as ch:
                    taps = [self.tap(b, pointers, src, b.add(b.add(base, ch), c64((i * self.width + j) * c)), ch)
                            for i in range(self.ph) for j in range(self.pw)]
                    peak, position = self.first_peak(b, taps)
                    store(b, peak, dst, b.add(out, ch), "float32")
                    if self.argmax:
                        store(b, position, pointers[self.target + 1], b.add(out, ch), "int32")

    def tap(self, b, pointers, src, index, channel):
        value = load(b, src, index, "float32")
        if self.finish is None:
            return value
        ((_, _, finished),) = self.finish.values(b, pointers, value, channel, index)
        return finished

    @staticmethod
    def first_peak(b, taps):
        """A window's peak and the position of its first tap that equals it (max_pool2d_argmax's y
        and idx without padding, schedule/pool.py): a balanced tree of the taps in row-major order
        whose every merge keeps the earlier side unless the later one is greater, or is NaN while
        the earlier one is not. This gives np.max's NaN (the first NaN tap) and, for ties, the
        first tap: the same bits as a tree of maxf followed by a search for the first equal tap,
        in half the instructions (5 a merge; W2's 2x2 windows: 15 against 31 for 16 channels).
        W2's step: 1 % faster, mostly in its first convolution, whose epilogue and pooling took
        ~0.1 ms."""
        sides = [(tap, ir.Constant(i32, position)) for position, tap in enumerate(taps)]
        while len(sides) > 1:
            merged = []
            for m in range(0, len(sides) - 1, 2):
                (early, at_early), (late, at_late) = sides[m], sides[m + 1]
                later = b.and_(b.fcmp_unordered(">", late, early), b.fcmp_ordered("ord", early, early))
                merged.append((b.select(later, late, early), b.select(later, at_late, at_early)))
            sides = merged + sides[len(sides) - len(sides) % 2:]
        return sides[0]


def prefetch(b, ptr, index):
    """Ask for the cache line of ptr[index] into L2 (prefetcht1); a prefetch never faults. Not
    into L1, nor for writing: a strip's state (W5: 144 rows x 128 columns of a weight and its
    momentum, 147 KB) does not fit in L1, where it evicted the product's packed operands (W5's
    step, the two alternating in one process: 0.8 % faster than prefetchw into L1)."""
    fn = b.module.globals.get("llvm.prefetch.p0i8") or ir.Function(
        b.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name="llvm.prefetch.p0i8")
    b.call(fn, [b.bitcast(b.gep(ptr, [index]), i8p), ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])


# Heads whose lowering applies the epilogue itself, chunk by chunk, while the rows are in cache.
CHUNKED_HEADS = {"conv2d": lower_conv2d, "conv2d_backward_input": lower_conv2d_backward_input}


@lowering("llvm", "fused_contraction")
def lower_fused_contraction(k):
    from ...ops.fused_contraction import head_type as infer_head_type
    head_type = infer_head_type(list(k.in_types), k.attrs)
    head = HeadView(k, head_type)
    epilogue = Epilogue(k, head_type)
    rows = 1
    for d in head_type.shape[:-1]:
        rows *= d
    if k.attrs.get("pool") is not None:  # (a backend declares conv2d only: Capabilities.pool_epilogue_heads)
        lower_conv2d(head, epilogue=epilogue, pool=PooledOutput(k, epilogue))
        return
    if k.attrs["head"] in CHUNKED_HEADS:
        CHUNKED_HEADS[k.attrs["head"]](head, epilogue=epilogue)
        return
    if not bounds_checking():  # (the block function's pointers are not registered for checks)
        head.finish_in_gemm(epilogue)
    get_op(k.attrs["head"]).lowerings["llvm"](head)
    if not getattr(head, "epilogue_applied", False):
        epilogue.emit(k.b, epilogue.pointers, 0, rows)


# ---- a convolution's two gradients reading dy once ---------------------------------------------------

class _Gradient:
    """One of a `fused_conv2d_grads`'s two gradients as its node's lowering would see the kernel:
    that node's attrs, operands and results."""

    def __init__(self, k, part, inputs, in_types, outputs, out_types, inline_constants):
        self._k = k
        self.b, self.module, self.status, self.function = k.b, k.module, k.status, k.function
        self.node, self.attrs = part, part["attrs"]
        self.inputs, self.in_types = list(inputs), list(in_types)
        self.outputs, self.out_types = list(outputs), list(out_types)
        self.inline_constants = inline_constants

    def __getattr__(self, name):  # buffer_sizes, ...
        return getattr(self._k, name)


@lowering("llvm", "fused_conv2d_grads")
def lower_fused_conv2d_grads(k):
    """The input gradient (bare, or with its epilogue) and the kernel gradient (bare, or with
    the bias gradient) of one convolution, both by Winograd from one transform of dy
    (winograd.lower_winograd_conv2d_gradients; the pass pairs only geometries that take it)."""
    from .winograd import lower_winograd_conv2d_gradients, winograd_algorithm
    from ...ops.fused_contraction import conv_grads_types, head_type as infer_head_type
    n = k.attrs["n_input_grad"]
    dx_part, dk_part = k.attrs["input_grad"], k.attrs["kernel_grad"]
    dx_in, dk_in = conv_grads_types(list(k.in_types), k.attrs)
    dx_type = get_op(dx_part["op"]).shape_rule(dx_in, dx_part["attrs"])
    dx_count = len(dx_type) if isinstance(dx_type, tuple) else 1
    # with a dy producer, the input gradient's operands lack dy: a None stands for it
    computed = k.attrs.get("dy") is not None
    dx_inputs = [None] + k.inputs[:n - 1] if computed else k.inputs[:n]
    x = k.inputs[n - 1] if computed else k.inputs[n]
    dx_view = _Gradient(k, dx_part, dx_inputs, dx_in, k.outputs[:dx_count], k.out_types[:dx_count],
                        {i + computed: v for i, v in k.inline_constants.items() if i + computed < n})
    epilogue = None
    if dx_part["op"] == "fused_contraction":
        head_type = infer_head_type(dx_in, dx_part["attrs"])
        epilogue = Epilogue(dx_view, head_type)
        dx_view = HeadView(dx_view, head_type)
    dk_out, bias = k.outputs[dx_count], (k.outputs[dx_count + 1] if dk_part["op"] == "fused_bias_grad" else None)
    g = conv_geometry("conv2d_backward_input", dx_view.out_types[0].shape, dx_in[1].shape, dx_view.attrs)
    algorithm = winograd_algorithm(g)
    if algorithm is None or g != conv_geometry("conv2d_backward_kernel", dk_in[0].shape, k.out_types[dx_count].shape,
                                               dk_part["attrs"].get("head_attrs", dk_part["attrs"])):
        raise KCompilerError(f"fused_conv2d_grads: geometry {g} does not run by Winograd on this target; "
                             "passes/fusion.py pairs only those that do (Capabilities.conv_grads_sharing_dy)")
    lower_winograd_conv2d_gradients(k, g, algorithm, dx_inputs[0], input_grad=(dx_inputs[1], dx_view.outputs[0], epilogue),
                                    kernel_grad=(x, dk_out, bias), dy_source=DyProducer(k, first=n) if computed else None)


# ---- a weight gradient computing its own dy ---------------------------------------------------------

class _SerialRenderer(Renderer):
    """Renders a description into a function of its own, every loop serial (the caller is
    already one part of a parallel kernel)."""

    def stmt_Loop(self, s):
        self.loop(s, 0, s.extent)


class DyProducer:
    """The dy of a `fused_bias_grad` with attr ``dy``: that pooling gradient (a `fused_pool_grad`,
    the activation gradient at its stores, or a bare one), rendered from its kernel description
    (schedule/pool.py) for one image as a function ``<kernel>.dy(dy, operands..., status)``
    that the weight gradient calls image by image, into its scratch memory."""

    def __init__(self, k, first=1):
        """The producer k.attrs["dy"] of operands ``first``... of kernel ``k``."""
        op, attrs = k.attrs["dy"]["op"], k.attrs["dy"]["attrs"]
        self.pointers = list(k.inputs[first:])  # what the part functions must receive
        types = list(k.in_types[first:])
        self.batched = [len(t.shape) == 4 for t in types]  # an activation-shaped operand, else a
        one = [TensorType((1,) + tuple(t.shape[1:]), t.dtype) if batched else t  # channel vector or scalar
               for t, batched in zip(types, self.batched)]
        self.in_floats = [num_elements(t.shape) for t in one]
        producer = get_op(op)
        out_type = producer.shape_rule(one, attrs)
        self.image_floats = num_elements(out_type.shape)
        node = {"op": op, "attrs": attrs, "type": out_type}
        if producer.describe_constants:
            constants = {i - first: v for i, v in k.inline_constants.items() if i >= first}
            kernel = producer.describe(node, one, f"{k.function.name}.dy", constants)
        else:
            kernel = producer.describe(node, one, f"{k.function.name}.dy")
        fnty = ir.FunctionType(ir.VoidType(), [MEM_TYPE["float32"].as_pointer()] + [p.type for p in self.pointers]
                               + [k.status.type])
        self.fn = ir.Function(k.module, fnty, name=k.module.get_unique_name(f"{k.function.name}.dy"))
        self.fn.linkage = "internal"
        vector_width_attrs(self.fn)
        self.fn.args[0].add_attribute("noalias")
        *buffers, status = self.fn.args
        if bounds_checking():
            for a, floats in zip(buffers, [self.image_floats] + self.in_floats):
                register_buffer(a, floats, status)
        sub = RangeBuilder(ir.IRBuilder(self.fn.append_basic_block("entry")), status, buffers, 1)
        _SerialRenderer(sub, kernel).body(kernel.body)
        sub.b.ret_void()

    def emit(self, b, sources, n0, n1, dst, status):
        """dy of images [n0, n1) (i64) into ``dst``, image after image; ``sources`` are this
        kernel's pointers to the producer's operands."""
        with for_range(b, n1, start=n0, name="dyimage") as n:
            out = b.gep(dst, [b.mul(b.sub(n, n0), c64(self.image_floats))], inbounds=True)
            ins = [b.gep(p, [b.mul(n, c64(floats))], inbounds=True) if batched else p
                   for p, floats, batched in zip(sources, self.in_floats, self.batched)]
            b.call(self.fn, [out] + ins + [status])


@lowering("llvm", "fused_bias_grad")
def lower_fused_bias_grad(k):
    """conv2d_backward_kernel and its bias gradient (the sum of dy over all but the channel
    axis), in one pass over dy; with attr ``dy``, dy computed where it is read (DyProducer)."""
    dy_source = DyProducer(k) if k.attrs.get("dy") is not None else None
    lower_conv2d_backward_kernel(k, k.attrs["head_attrs"], bias=k.outputs[1], dy_source=dy_source)
