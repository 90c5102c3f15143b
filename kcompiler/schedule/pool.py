"""Kernel descriptions of max and average pooling and their gradients (NHWC).

Every kernel walks the images (a parallel loop: the gradients' scatter-adds stay inside one
image), then the output pixels, then, innermost and contiguous, the channels. The window
geometry is static, so its clipping is too: each axis's output positions are cut into *spans*
whose windows hold the same taps inside the input (the interior, and the few positions at the
borders whose windows reach into the padding), and each pair of spans gets its own loops with
the tap offsets as constants. Padding is never read, and no element is tested for it.

A window of up to ``UNROLL_TAPS`` taps is one expression over all its taps inside the channel
loop, which is then a straight-line body that LLVM vectorises; a larger window loops over its
taps around the channel loop (its gradient loops over the channels outermost: a window's
maximum and whether its dy went out are per channel).

The gradients scatter into dx. When windows do not overlap (stride >= pool on both axes) each
dx element belongs to at most one window: windows store their taps' values, and only the
elements no window covers are zeroed. Otherwise dx is zeroed and the windows add into it.

Numerics follow the references (kcompiler/ops/pool_reference.py):

* max pooling propagates NaN (as np.max); padding counts as -inf, so it is never the maximum;
* max_pool2d_grad sends each window's dy to the first tap in row-major order, padding included,
  that equals the window's maximum: a window whose maximum is NaN routes it to its first NaN
  tap, one whose maximum is -inf with padding before its first valid tap routes it into the
  padding, i.e. nowhere; windows that overlap add up;
* average pooling divides by the number of valid taps of each window.

max_pool2d_argmax stores max_pool2d's y and, beside it, the position in the window of the tap
max_pool2d_grad would route to (-1: into the padding); max_pool2d_grad_argmax then stores each
tap's dy where its position is the window's idx, as max_pool2d_grad stores or adds it, so the
two give the same bits.
"""
from dataclasses import dataclass, replace

from ..ir.registry import description, get_op
from ..ops.conv import output_size, same_padding
from ..ops.fused import member_types
from ..ops.fused_contraction import head_type
from ..ops.pool import grad_input_shape, pool_attrs
from .elementwise import member_values
from .kernel import (INDEX, AtomicAdd, Assign, Const, If, Kernel, Load, Local, Loop, Store, Var, call, loop,
                     node_buffers, varies)

UNROLL_TAPS = 16
F32 = "float32"
I32 = "int32"
ZERO = Const(0.0, F32)
NOWHERE = Const(-1, I32)  # max_pool2d_argmax's idx of a window whose gradient goes into the padding


# ---- geometry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """Output positions ``first`` .. ``first + count - 1`` along one axis whose windows hold the
    same ``taps`` valid taps: the r-th position's first valid tap is at input index
    ``start + r * stride``; ``clipped_before``: the window's first taps lie in the padding."""
    first: int
    count: int
    start: int
    taps: int
    clipped_before: bool


def spans(size, window, stride, padding):
    out = output_size(size, window, stride, 1, padding)
    pad_before = same_padding(size, window, stride, 1, padding)[0]
    result = []
    for o in range(out):
        origin = o * stride - pad_before
        lo, hi = max(0, -origin), min(window, size - origin)
        span = Span(o, 1, origin + lo, hi - lo, lo > 0)
        last = result[-1] if result else None
        if last is not None and replace(last, first=o, count=1, start=last.start + last.count * stride) == span:
            result[-1] = replace(last, count=last.count + 1)
        else:
            result.append(span)
    return result


def uncovered(size, axis_spans, stride):
    """[lo, hi) runs of input indices along one axis that no window covers."""
    covered = [False] * size
    for s in axis_spans:
        for r in range(s.count):
            covered[s.start + r * stride:s.start + r * stride + s.taps] = [True] * s.taps
    runs, lo = [], None
    for i, c in enumerate(covered + [True]):
        if not c and lo is None:
            lo = i
        elif c and lo is not None:
            runs.append((lo, i))
            lo = None
    return runs


@dataclass(frozen=True)
class Geometry:
    batch: int
    in_h: int
    in_w: int
    channels: int
    out_h: int
    out_w: int
    stride_h: int
    stride_w: int
    rows: tuple      # Spans of output rows
    cols: tuple      # Spans of output columns
    overlapping: bool
    pool_w: int
    pad_top: int
    pad_left: int

    @property
    def image(self):
        """Elements of one input image."""
        return self.in_h * self.in_w * self.channels


def geometry(op, x_shape, attrs):
    (ph, pw), (sh, sw), padding = pool_attrs(op, attrs)
    batch, in_h, in_w, channels = x_shape
    return Geometry(batch, in_h, in_w, channels, output_size(in_h, ph, sh, 1, padding),
                    output_size(in_w, pw, sw, 1, padding), sh, sw, tuple(spans(in_h, ph, sh, padding)),
                    tuple(spans(in_w, pw, sw, padding)), sh < ph or sw < pw, pw,
                    same_padding(in_h, ph, sh, 1, padding)[0], same_padding(in_w, pw, sw, 1, padding)[0])


# ---- index expressions -------------------------------------------------------------------------

def affine(offset, *terms):
    """offset + sum(coeff * var) as an index expression (zero terms left out; the offset last,
    so that the taps of one window share the rest)."""
    e = None
    for var, coeff in terms:
        if coeff:
            term = var if coeff == 1 else var * coeff
            e = term if e is None else e + term
    if e is None:
        return Const(offset, INDEX)
    return e + offset if offset else e


class Window:
    """The windows of one row span x column span of image ``n``: loop variables r (position in
    the row span), q (in the column span) and c (channel). ``out`` is the flat index of
    (n, oh, ow, c) in y/dy, ``tap(i, j)`` that of valid tap (i, j) in x/dx (i, j ints or loop
    variables)."""

    def __init__(self, g, n, rows, cols):
        self.g, self.rows, self.cols = g, rows, cols
        self.r, self.q, self.c = Var("r"), Var("q"), Var("c")
        C = g.channels
        self.out = affine((rows.first * g.out_w + cols.first) * C, (n, g.out_h * g.out_w * C),
                          (self.r, g.out_w * C), (self.q, C), (self.c, 1))
        self.tap_terms = ((n, g.image), (self.r, g.stride_h * g.in_w * C), (self.q, g.stride_w * C), (self.c, 1))

    @property
    def taps(self):
        """(i, j) of every valid tap, in row-major order."""
        return [(i, j) for i in range(self.rows.taps) for j in range(self.cols.taps)]

    @property
    def count(self):
        return self.rows.taps * self.cols.taps

    @property
    def padding_first(self):
        """Whether the window's first tap in row-major order lies in the padding."""
        return self.rows.clipped_before or self.cols.clipped_before

    def tap(self, i, j):
        g, C = self.g, self.g.channels
        offset = (self.rows.start * g.in_w + self.cols.start) * C
        terms = list(self.tap_terms)
        for v, coeff in ((i, g.in_w * C), (j, C)):
            if isinstance(v, int):
                offset += v * coeff
            else:
                terms.append((v, coeff))
        return affine(offset, *terms)

    def position(self, i, j):
        """The int32 position ``kh * pool_w + kw`` of valid tap (i, j) in the whole window, padding
        counted (max_pool2d_argmax's idx). The taps before the first valid one, padding, are as
        many in every window of a span (only a span of one window starts in the padding)."""
        g = self.g
        top = self.rows.start - (self.rows.first * g.stride_h - g.pad_top)
        left = self.cols.start - (self.cols.first * g.stride_w - g.pad_left)
        if isinstance(i, int) and isinstance(j, int):
            return Const((top + i) * g.pool_w + left + j, I32)
        return call("cast", affine(top * g.pool_w + left, (i, g.pool_w), (j, 1)), dtype=I32)

    def channels(self, body):
        return loop("c", self.g.channels, body)

    def tap_loops(self, body):
        """Loops over the window's taps (row-major) around ``body(i, j)``."""
        i, j = Var("i"), Var("j")
        return loop("i", self.rows.taps, [loop("j", self.cols.taps, body(i, j))])


def kernel(name, g, buffers, body, before=lambda n: (), independent_windows=True):
    """The kernel: for every image (parallel), ``before(n)``, then for every pair of spans the
    loops over its windows around ``body(window)`` (statements)."""
    n = Var("n")
    nests = [loop("r", rows.count, [loop("q", cols.count, body(Window(g, n, rows, cols)),
                                         parallel=independent_windows)], parallel=independent_windows)
             for rows in g.rows for cols in g.cols]
    return Kernel(name, buffers, (loop("n", g.batch, list(before(n)) + nests, parallel=True),))


def zero_dx(g, n):
    """Zero image ``n`` of dx where the windows' stores do not reach: all of it when windows
    overlap (they add up), else the rows and columns no window covers."""
    W, C = g.in_w, g.channels
    if g.overlapping:
        return [_zeros(n * g.image, g.image)]
    empty_rows = uncovered(g.in_h, g.rows, g.stride_h)
    statements = [_zeros(affine(h0 * W * C, (n, g.image)), (h1 - h0) * W * C) for h0, h1 in empty_rows]
    h = Var("h")
    for w0, w1 in uncovered(g.in_w, g.cols, g.stride_w):
        for h0, h1 in _complement(empty_rows, g.in_h):
            row = affine((h0 * W + w0) * C, (n, g.image), (h, W * C))
            statements.append(loop("h", h1 - h0, [_zeros(row, (w1 - w0) * C)]))
    return statements


def _zeros(base, count):
    """out0[base .. base + count) = 0."""
    return loop("e", count, [Store("out0", base + Var("e"), ZERO)])


def _complement(runs, size):
    result, lo = [], 0
    for a, b in runs + [(size, size)]:
        if a > lo:
            result.append((lo, a))
        lo = b
    return result


def _into_dx(g, index, value):
    """dx[index] gets ``value``: stored, or added when windows overlap."""
    if g.overlapping:
        value = call("add", Load("out0", index, F32), value)
    return Store("out0", index, value)


# ---- the six ops -------------------------------------------------------------------------------

def _max(a, b):
    return call("max", a, b)


def _over_taps(w, load, combine):
    """combine() over the loads of every valid tap, as a balanced tree: short dependency chains
    (max and the float sum of a few taps do not care about the order)."""
    values = [load(w.tap(i, j)) for i, j in w.taps]
    while len(values) > 1:
        values = [combine(*values[k:k + 2]) if k + 1 < len(values) else values[k] for k in range(0, len(values), 2)]
    return values[0]


@description("max_pool2d")
def describe_max_pool2d(node, in_types, name):
    x_shape = in_types[0].shape
    g = geometry("max_pool2d", x_shape, node["attrs"])

    def window(w):
        if w.count <= UNROLL_TAPS:
            return [w.channels([Store("out0", w.out, _over_taps(w, lambda t: Load("in0", t, F32), _max))])]
        # y starts as tap 0, which the tap loops visit again harmlessly (max(v, v) is v, NaN
        # included): no -inf is needed
        return [w.channels([Store("out0", w.out, Load("in0", w.tap(0, 0), F32))]),
                w.tap_loops(lambda i, j: [w.channels([
                    Store("out0", w.out, _max(Load("out0", w.out, F32), Load("in0", w.tap(i, j), F32)))])])]

    return kernel(name, g, node_buffers(node, in_types), window)


def _is_peak(value, peak):
    """Whether a tap of value ``value`` takes the gradient of a window whose maximum is ``peak``,
    if no tap before it does (a NaN maximum is its first NaN)."""
    return call("or", call("eq", value, peak), call("isnan", value))


def _lost(w, peak):
    """Whether the window's gradient goes into the padding: padding before the first valid tap
    equals a -inf maximum first."""
    return call("eq", peak, Const(float("-inf"), F32)) if w.padding_first else Const(False, "bool")


@description("max_pool2d_argmax")
def describe_max_pool2d_argmax(node, in_types, name):
    g = geometry("max_pool2d_argmax", in_types[0].shape, node["attrs"])

    def window(w):
        peak, idx, routed = Var("peak", F32), Var("idx", I32), Var("routed", "bool")
        x = lambda t: Load("in0", t, F32)  # noqa: E731
        stores = [Store("out0", w.out, peak), Store("out1", w.out, idx)]
        if w.count <= UNROLL_TAPS:
            # the first tap that is the peak: selects from the last tap to the first, one
            # straight-line expression as the maximum's (-1 stays only where the gradient is lost)
            first = NOWHERE
            for i, j in reversed(w.taps):
                first = call("select", _is_peak(x(w.tap(i, j)), peak), w.position(i, j), first)
            return [w.channels([Local(peak, _over_taps(w, x, _max)),
                                Local(idx, call("select", _lost(w, peak), NOWHERE, first))] + stores)]

        def route(i, j):  # as max_pool2d_grad's route, keeping the position instead of storing dy
            is_peak = _is_peak(x(w.tap(i, j)), peak)
            hit = call("and", call("not", routed), is_peak)
            return [Assign(idx, call("select", hit, w.position(i, j), idx)),
                    Assign(routed, call("or", routed, is_peak))]

        return [w.channels([Local(peak, x(w.tap(0, 0))),
                            w.tap_loops(lambda i, j: [Assign(peak, _max(peak, x(w.tap(i, j))))]),
                            Local(routed, _lost(w, peak)), Local(idx, NOWHERE), w.tap_loops(route)] + stores)]

    return kernel(name, g, node_buffers(node, in_types), window)


@description("max_pool2d_grad_argmax")
def describe_max_pool2d_grad_argmax(node, in_types, name):
    x_shape = grad_input_shape(in_types[1].shape, node["attrs"])
    g = geometry("max_pool2d_grad_argmax", x_shape, node["attrs"])

    def window(w):
        def route(i, j):  # dy where the tap is the window's idx, else 0, as max_pool2d_grad stores it
            hit = call("eq", Load("in0", w.out, I32), w.position(i, j))
            return _into_dx(g, w.tap(i, j), call("select", hit, Load("in1", w.out, F32), ZERO))

        if w.count <= UNROLL_TAPS:
            return [w.channels([route(i, j) for i, j in w.taps])]
        return [w.tap_loops(lambda i, j: [w.channels([route(i, j)])])]

    return kernel(name, g, node_buffers(node, in_types), window, lambda n: zero_dx(g, n), not g.overlapping)


@description("max_pool2d_grad")
def describe_max_pool2d_grad(node, in_types, name):
    x_shape = in_types[0].shape
    g = geometry("max_pool2d_grad", x_shape, node["attrs"])

    def window(w):
        peak, routed, hit = Var("peak", F32), Var("routed", "bool"), Var("hit", "bool")
        dy = Load("in1", w.out, F32)
        x = lambda t: Load("in0", t, F32)  # noqa: E731
        lost = _lost(w, peak)

        def route(t):
            is_peak = _is_peak(x(t), peak)
            return [Assign(hit, call("and", call("not", routed), is_peak)),
                    _into_dx(g, t, call("select", hit, dy, ZERO)),
                    Assign(routed, call("or", routed, is_peak))]

        if w.count <= UNROLL_TAPS:
            body = [Local(peak, _over_taps(w, x, _max)), Local(routed, lost), Local(hit, Const(False, "bool"))]
            for i, j in w.taps:
                body += route(w.tap(i, j))
            return [w.channels(body)]
        return [w.channels([Local(peak, x(w.tap(0, 0))),
                            w.tap_loops(lambda i, j: [Assign(peak, _max(peak, x(w.tap(i, j))))]),
                            Local(routed, lost), Local(hit, Const(False, "bool")),
                            w.tap_loops(lambda i, j: route(w.tap(i, j)))])]

    return kernel(name, g, node_buffers(node, in_types), window, lambda n: zero_dx(g, n), not g.overlapping)


@description("avg_pool2d")
def describe_avg_pool2d(node, in_types, name):
    x_shape = in_types[0].shape
    g = geometry("avg_pool2d", x_shape, node["attrs"])

    def window(w):
        inverse = Const(1.0 / w.count, F32)
        if w.count <= UNROLL_TAPS:
            total = _over_taps(w, lambda t: Load("in0", t, F32), lambda a, b: call("add", a, b))
            return [w.channels([Store("out0", w.out, call("mul", total, inverse))])]
        y = Load("out0", w.out, F32)
        return [w.channels([Store("out0", w.out, ZERO)]),
                w.tap_loops(lambda i, j: [w.channels([
                    Store("out0", w.out, call("add", y, Load("in0", w.tap(i, j), F32)))])]),
                w.channels([Store("out0", w.out, call("mul", y, inverse))])]

    return kernel(name, g, node_buffers(node, in_types), window)


@description("avg_pool2d_grad")
def describe_avg_pool2d_grad(node, in_types, name):
    x_shape = grad_input_shape(in_types[0].shape, node["attrs"])
    g = geometry("avg_pool2d_grad", x_shape, node["attrs"])

    def window(w):
        share = call("mul", Load("in0", w.out, F32), Const(1.0 / w.count, F32))
        if w.count <= UNROLL_TAPS:
            return [w.channels([_into_dx(g, w.tap(i, j), share) for i, j in w.taps])]
        return [w.tap_loops(lambda i, j: [w.channels([_into_dx(g, w.tap(i, j), share)])])]

    return kernel(name, g, node_buffers(node, in_types), window, lambda n: zero_dx(g, n), not g.overlapping)


# ---- a pooling gradient with an element-wise epilogue (fused_pool_grad) ------------------------

@description("fused_pool_grad", constants=True)
def describe_fused_pool_grad(node, in_types, name, constants):
    """The head's kernel, every store of its result replaced by the stores of the epilogue's
    outputs at that element (windows that do not overlap store each element once, and the
    head never reads its result back: the fusion pass fuses no other)."""
    attrs = node["attrs"]
    n = attrs["n_head"]
    acc_type = head_type(in_types, attrs)
    head = get_op(attrs["head"]).describe({"op": attrs["head"], "attrs": attrs["head_attrs"], "type": acc_type},
                                          in_types[:n], name)
    extra_types = in_types[n:]
    types = member_types(extra_types, attrs, acc=acc_type)
    width = acc_type.shape[-1]
    stores = []  # one local per store: a renderer may declare each name once per scope

    def operand(index, k):
        t = extra_types[k]
        if n + k in constants:
            return Const(constants[n + k], t.dtype)
        if tuple(t.shape) == ():
            return Load(f"in{n + k}", Const(0, INDEX), t.dtype)
        if tuple(t.shape) == (width,) and len(acc_type.shape) > 1:
            return Load(f"in{n + k}", call("mod", index, Const(width, INDEX)), t.dtype)
        return Load(f"in{n + k}", index, t.dtype)

    def rewrite(statements):
        out = []
        for s in statements:
            if _reads_result(s):
                raise ValueError(f"{attrs['head']} reads its result back: it takes no epilogue at its stores")
            if isinstance(s, Store) and s.buffer == "out0":
                acc = Var(f"epilogue_acc{len(stores)}", acc_type.dtype)
                stores.append(acc)
                values = member_values(attrs["body"], types, lambda k: operand(s.index, k), acc=acc, index=s.index)
                out.append(Local(acc, s.value))
                out += [Store(f"out{j}", s.index, values[m]) for j, m in enumerate(attrs["outputs"])]
            elif isinstance(s, Loop):
                out.append(Loop(s.var, s.extent, tuple(rewrite(s.body)), s.parallel))
            elif isinstance(s, If):
                out.append(If(s.cond, tuple(rewrite(s.then)), tuple(rewrite(s.orelse))))
            else:
                out.append(s)
        return out

    return Kernel(name, node_buffers(node, in_types), tuple(rewrite(head.body)))


def _reads_result(s):
    """Whether statement ``s`` (not looking into nested bodies) reads the result or adds to it."""
    exprs = [getattr(s, f) for f in ("index", "value", "init", "cond") if hasattr(s, f)]
    return (isinstance(s, AtomicAdd) and s.buffer == "out0") or any(varies(e, set(), {"out0"}) for e in exprs)
