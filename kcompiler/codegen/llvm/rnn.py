"""Kernels of the recurrent ops (simple_rnn, lstm, gru) and their gradients: one kernel
runs the whole sequence, as cuDNN's RNN does. This module has what both kernels share (the
static layout, the emitter's memory and loop helpers, the forward recurrence, the kernel
skeleton) and registers the forward lowerings; the backward sweep and the ``<op>_grad``
lowerings are in rnn_backward.

Every product is a per-step product of a part's rows (rows_product.py) by a matrix packed
once per call and held in cache: forward, per step, x_t @ kernel into XA and h_{t-1} @
recurrent_kernel into A, then the gate math as explicit vector code over units (``W``
floats per vector, the last vector of a row masked when units is not a multiple of W).
Nothing is projected for all steps up front: the data of a step stays in the caches, and
no SGEMM is called (its per-call packing would cost more than these products).

Samples never interact inside the loop, so the loops run in parts over batch rows, one
part per core (each part does its rows' forward and backward sweep, with no barrier per
step); the weight gradients, which sum over samples, are summed per part during the
backward sweep (rnn_backward) and the parts' sums added once the parts have joined.

Dropout masks are per sample and per gate (mask[g % D]): gate g's product sees x * mask,
so with D = G there is one input product per gate on its own masked copy of x_t (XS), and
one recurrent product per gate on its masked copy of h ("sources" below). For GRU with
reset_after=False the candidate's recurrent input is r * h (dropped), a source of its own,
computed after z and r.

Workspace (one malloc per call, freed before returning; sizes are static; Up and Fp are
units and features rounded up to whole vectors, GUp = G*Up):
  RP     (U, GUp)     recurrent_kernel packed for the forward product: gate g's columns at
                      g*Up, zeros in the padding; WP (F, GUp) the kernel, alike
  XA     (B, GUp)     this step's input products x_t @ kernel (the gate math adds the bias)
  A      (B, GU)      this step's recurrent products h_{t-1} @ recurrent_kernel
  SRC    (slots, B, NS*U) masked copies of h each gate group multiplies
  XS     (B, F)       x_t times a dropout mask
  CARRY  (B, U)       the previous output (masks)
Kept per step (gradient kernel, and the forward kernel of a training step with a reserve):
  HS, CS ((T+1), B, U) states before each step (a forward kernel without a reserve keeps its
                      state in the h_T/c_T outputs)
  KEPT   (T, B, GA)   per step what the backward sweep needs of the gates, f(x) or x each
                      (Activation.kept); lstm adds c_new's at column 4U, gru reset_after has
                      the candidate's recurrent part at 2U and the candidate at 3U. Written
                      once per step, while the products write into the small A (in cache)
  SRC then has a slot per step (T, B, NS*U).
With attr ``reserve`` (ops/rnn.py, passes/recurrent_reserve.py) HS, CS, KEPT and SRC are not
in the workspace but in the reserve: the forward kernel writes them there as it runs, and the
gradient kernel reads them and runs no forward sweep.
Gradient only:
  RT     (GUp, Up)    recurrent_kernel^T packed for the backward product (row g*Up + k:
                      column g*U + k), zero rows and columns in the padding; WT (GUp, Fp)
                      the kernel^T, alike
  DR, DX (B, GUp)     this step's recurrent-side and input-side gate derivatives (zero in
                      the padding, which the products then skip as zero terms)
  TMP (B, U), TMPX (B, F) a product before its dropout mask
  GRADS  (parts, PG)  each part's sums of d_kernel, d_recurrent_kernel and d_bias
"""
import math

import llvmlite.ir as ir

from ...ir.registry import lowering
from ...ir.types import num_elements
from ...ops.rnn import ACTIVATIONS, GATES, RESERVE_ALIGN, STATES, full_attrs, operand_names, reserve_regions
from ...schedule.kernel import STATUS_INDEX_OUT_OF_RANGE, Var, call
from ...schedule.scalar import DERIVATIVES, mul
from . import threads
from .irutil import c64, f32, for_range, get_function, i8, i8p, i32, i64, void
from .jit import vector_width_attrs
from .render import ValueRenderer, scalar
from .rows_product import Shape, host_vector_width, lane_mask, rows_product, tile_shape, vload, vstore
from .scalar import ScalarEmitter
from .support_library import declare_pack, declare_parallel_runner

# Below this many gate elements (T * B * G * U) the loops stay on the calling thread:
# starting a helper thread costs ~10-20 us.
PARALLEL_MIN_WORK = 1 << 15
# Tests set this: every index and every product operand's extent is checked against its
# buffer (status 1 and a clamped index on a violation) -- proof that nothing outside is touched.
CHECK_BOUNDS = False
# Floats per vector of the gate math and the per-step products; None: the host's (16 with
# AVX-512, else 8). Tests set other widths (any width is correct on any host).
VECTOR_WIDTH = None
ALIGN_FLOATS = 16  # 64 bytes


class Activation:
    """An activation of a cell, as IR emitters rendered from the neutral definitions of the
    op and its derivative (schedule/scalar.py): ``act(e, x)`` is f(x).

    What the gradient kernel keeps of a gate (``kept(value, x)``) is f(x) itself when the
    derivative is a function of f(x) alone (sigmoid: s (1 - s), tanh: 1 - t^2, the identity:
    1): the backward sweep then evaluates no transcendental function, and its f'(x),
    written with the kept f(x), has the bits of evaluating f(x) again. Otherwise the kernel
    keeps x. ``from_kept(e, k)`` gives back (f(x), dy -> dy * f'(x))."""

    def __init__(self, name):
        spec = ACTIVATIONS[name]
        self.op, self.attrs = spec if spec else (None, {})
        self.x = Var("x", "float32")
        self.of_value = self.op is None or _only_through(DERIVATIVES[self.op](self.x, **self.attrs), self._call())

    def _call(self):
        return call(self.op, self.x, **self.attrs)

    def __call__(self, e, x):
        return x if self.op is None else scalar(e.b, self.op, [x], **self.attrs)

    def kept(self, value, x):
        return value if self.of_value else x

    def from_kept(self, e, k):
        if self.op is None:
            return k, lambda dy: dy
        if not self.of_value:
            return self(e, k), lambda dy: scalar(e.b, f"{self.op}_grad", [k, dy], **self.attrs)

        def grad(dy):  # dy * f'(x) with every f(x) in it read as k (x itself is never bound)
            lanes = dy.type.count if isinstance(dy.type, ir.VectorType) else 0
            r = ValueRenderer(e.b, {"dy": dy}, lanes=lanes)
            r.cache[self._call()] = k
            return r.expr(mul(Var("dy", "float32"), DERIVATIVES[self.op](self.x, **self.attrs)))
        return k, grad


def _only_through(expr, inner):
    """Whether every use of a variable in ``expr`` is inside the subexpression ``inner``."""
    if expr == inner:
        return True
    if isinstance(expr, Var):
        return False
    return all(_only_through(a, inner) for a in getattr(expr, "args", ()))


def _groups(keys):
    """Runs of consecutive gates with the same key: [(first gate, count, key)]."""
    out = []
    for g, key in enumerate(keys):
        if out and out[-1][2] == key:
            out[-1] = (out[-1][0], out[-1][1] + 1, key)
        else:
            out.append((g, 1, key))
    return out


def _whole(n, width):
    """n rounded up to whole vectors."""
    return -(-n // width) * width


class Layout:
    """Static facts of one recurrent node: sizes, optional operands, gate groups, workspace."""

    def __init__(self, op, in_types, attrs, grad):
        self.op, self.grad = op, grad
        self.attrs = a = full_attrs(attrs)
        self.reserve = a["reserve"]
        self.keeps = grad or self.reserve  # every step's states and gate values are kept
        self.in_types = in_types
        names = operand_names(op, a)
        self.operand_index = {n: i for i, n in enumerate(names)}
        self.B, self.T, self.F = in_types[0].shape
        self.U, self.G = a["units"], GATES[op]
        self.GU = self.G * self.U
        self.W = VECTOR_WIDTH or host_vector_width()
        self.Up, self.Fp = _whole(self.U, self.W), _whole(self.F, self.W)
        self.GUp = self.G * self.Up
        self.lstm, self.gru = op == "lstm", op == "gru"
        self.gru_ra = self.gru and a["reset_after"]
        self.gru_nra = self.gru and not a["reset_after"]
        self.masked = a["masked"]
        self.carry = self.masked and not a["zero_output_for_mask"]  # masked steps repeat the last output
        self.D = in_types[self.operand_index["dropout_mask"]].shape[0] if a["dropout_mask"] else 0
        self.D2 = (in_types[self.operand_index["recurrent_dropout_mask"]].shape[0]
                   if a["recurrent_dropout_mask"] else 0)
        self.act, self.ract = Activation(a["activation"]), Activation(a["recurrent_activation"])
        U = self.U
        # column of each gate's pre-activation in A (and of the extras)
        if self.lstm:
            self.GA, self.col_c_new = 5 * U, 4 * U      # i f c o | c_new
        elif self.gru_ra:
            self.GA, self.col_ah = 4 * U, 3 * U         # z r rh | ah (rh: the candidate's recurrent part)
        else:
            self.GA = self.GU
        # Input side: gate g multiplies x * dropout_mask[g % D].
        self.in_groups = _groups([g % self.D if self.D else None for g in range(self.G)])
        # Recurrent side: the source of gate g is h * recurrent_mask[g % D2] (times r for the
        # candidate of gru reset_after=False). (None, False) is h itself; others get a copy.
        keys = [(g % self.D2 if self.D2 else None, self.gru_nra and g == 2) for g in range(self.G)]
        self.rec_groups = _groups(keys)
        copies = [k for k in dict.fromkeys(keys) if k != (None, False)]
        self.src_slot = {k: i for i, k in enumerate(copies)}
        self.NS = len(copies)
        self.slots = self.T if self.keeps else 1
        work = self.T * self.B * self.GU
        self.nparts = min(threads.default_nthreads(), self.B) if work >= PARALLEL_MIN_WORK else 1
        self.part_rows = tuple(sorted({self.B // self.nparts, -(-self.B // self.nparts)}))  # rows of a part
        # a part's weight-gradient sums: d_kernel (F, GU), d_recurrent_kernel (U, GU), d_bias
        self.n_bias = 2 * self.GU if self.gru_ra else self.GU
        self.grad_offsets = {"d_kernel": 0, "d_recurrent_kernel": self.F * self.GU,
                             "d_bias": (self.F + U) * self.GU}
        self.PG = (self.F + U) * self.GU + self.n_bias
        self._plan_workspace()

    def _plan_workspace(self):
        B, F, U, T, GUp = self.B, self.F, self.U, self.T, self.GUp
        sizes = {"RP": U * GUp, "WP": F * GUp, "XA": B * GUp, "A": B * self.GU,
                 "SRC": self.slots * B * self.NS * U}
        if self.D:
            sizes["XS"] = B * F
        if self.carry:
            sizes["CARRY"] = B * U
        if self.keeps:
            sizes.update(HS=(T + 1) * B * U, KEPT=T * B * self.GA)
            if self.lstm:
                sizes["CS"] = (T + 1) * B * U
        if self.grad:
            sizes.update(RT=GUp * self.Up, WT=GUp * self.Fp, DR=B * GUp, DX=B * GUp, TMP=B * U,
                         GRADS=self.nparts * self.PG)
            if self.D:
                sizes["TMPX"] = B * F
        self.sizes = dict(sizes)  # elements per buffer (operands and outputs added by the lowering)
        # the kept regions in the reserve, at the offsets its definition gives (ops/rnn.py)
        self.reserve_offsets, total = {}, 0
        if self.reserve:
            for name, n in reserve_regions(self.op, self.attrs, self.in_types).items():
                assert n == sizes[name], (name, n, sizes[name])  # the op's sizes are this layout's
                self.reserve_offsets[name] = total
                total += -(-n // RESERVE_ALIGN) * RESERVE_ALIGN
        self.offsets, total = {}, 0
        for name, n in sizes.items():
            if name in self.reserve_offsets:
                continue
            self.offsets[name] = total
            total += (n + ALIGN_FLOATS - 1) // ALIGN_FLOATS * ALIGN_FLOATS
        self.ws_floats = total


def column_vectors(width, n, gates, bstride, cstride):
    """The columns of a per-step product (rows_product.Shape's chunk, step, count, tail) whose
    vectors cover ``n`` columns of each gate in ``gates``: gate g's columns j..j+W-1 are at
    g*bstride + j of the packed matrix and g*cstride + j of C. A chunk holds whole vectors of
    the same columns in every gate, as many as make whole register tiles
    (rows_product.tile_shape); the last columns, when n is not a multiple of the width, make
    the masked vectors of the tail."""
    gates = list(gates)
    whole, rest = divmod(n, width)
    per_tile = tile_shape(width)[0]
    per_chunk = max(1, min(per_tile // math.gcd(per_tile, len(gates)), whole))
    count = whole // per_chunk
    chunk = tuple((g * bstride + q * width, g * cstride + q * width) for q in range(per_chunk) for g in gates)
    tail = [(g * bstride + q * width, g * cstride + q * width, width)
            for q in range(count * per_chunk, whole) for g in gates]
    tail += [(g * bstride + whole * width, g * cstride + whole * width, rest) for g in gates if rest]
    return (chunk if count else ()), (per_chunk * width, per_chunk * width), count, tuple(tail)


def pack(em, src, n, dest, transposed):
    """Pack matrix ``src`` (n, G*U) -- kernel or recurrent_kernel -- for the products with
    the support library's kc_pack_gates (rows_product.emit_pack): dest[r, g*Up + j] =
    src[r, g*U + j], or with ``transposed`` dest[g*Up + k, c] = src[c, g*U + k] (rows of n
    rounded up to whole vectors); zeros in the padding."""
    L, b = em.L, em.b
    cols = _whole(n, L.W) if transposed else L.Up
    if CHECK_BOUNDS:  # both matrices whole inside their buffers
        for name, size in ((src, n * L.GU), (dest, L.GUp * cols if transposed else n * L.GUp)):
            em._outside(c64(0), c64(size - 1), L.sizes[name])
    b.call(declare_pack(b.module), [em.p[src], em.p[dest], c64(n), c64(L.G), c64(L.U), c64(L.Up), c64(cols),
                                    c64(int(transposed))])


def _lin(b, *terms):
    """An i64 index: the sum of ints, i64 values and (value, static coefficient) pairs."""
    total, const = None, 0
    for term in terms:
        value, coeff = term if isinstance(term, tuple) else (term, 1)
        if isinstance(value, int):
            const += value * coeff
            continue
        if coeff == 0:
            continue
        v = value if coeff == 1 else b.mul(value, c64(coeff))
        total = v if total is None else b.add(total, v)
    if total is None:
        return c64(const)
    return total if const == 0 else b.add(total, c64(const))


class Emitter:
    """Emits one part of a recurrent kernel: rows [b0, b1) of the batch (part number
    ``part``), with builder ``b`` and named buffer pointers ``p`` (operands, outputs and
    workspace regions).

    Inside ``each_vector`` values are vectors of ``L.W`` consecutive units or features
    (``lanes``), and ``load``/``store``/``ld``/``st`` move vectors (masked to the valid
    columns in a row's last vector, ``tail``); elsewhere they move single floats."""

    def __init__(self, b, L, p, b0, b1, part=None):
        self.b, self.L, self.p, self.b0, self.b1, self.part = b, L, p, b0, b1, part
        self.e = ScalarEmitter(b)
        self.rows = b.sub(b1, b0) if not isinstance(b0, int) else c64(b1 - b0)
        self.lanes, self.tail, self.tail_lanes = 0, None, 0

    # -- memory
    def at(self, name, *terms):
        index = _lin(self.b, *terms)
        if CHECK_BOUNDS:
            last = self.b.add(index, c64((self.tail_lanes or self.lanes or 1) - 1))
            bad = self._outside(index, last, self.L.sizes[name])
            index = self.b.select(bad, c64(0), index)
        return self.b.gep(self.p[name], [index], inbounds=True)

    def _outside(self, first, last, size, when=None):
        """i1: [first, last] is not inside a buffer of ``size`` elements (then report status 1)."""
        b = self.b
        bad = b.or_(b.icmp_signed("<", first, c64(0)), b.icmp_signed(">=", last, c64(size)))
        if when is not None:
            bad = b.and_(bad, when)
        with b.if_then(bad, likely=False):
            b.store(ir.Constant(i32, STATUS_INDEX_OUT_OF_RANGE), self.p["status"])
        return bad

    def load(self, ptr):
        return vload(self.b, ptr, self.lanes, self.tail) if self.lanes else self.b.load(ptr)

    def store(self, value, ptr):
        if self.lanes:
            vstore(self.b, value, ptr, self.tail)
        else:
            self.b.store(value, ptr)

    def ld(self, name, *terms):
        return self.load(self.at(name, *terms))

    def st(self, value, name, *terms):
        self.store(value, self.at(name, *terms))

    def product(self, shape, rows, K, A, Bp, C):
        """The product ``shape`` (rows_product.py) of ``rows`` rows (an i64) over ``K`` terms;
        A, Bp, C are buffer references as for ``at`` (their first element)."""
        b = self.b
        K = c64(K) if isinstance(K, int) else K
        if CHECK_BOUNDS:  # the whole extent each operand is read or written at must be inside
            vectors = shape.vectors()
            last_b = max(bc for bc, _, _ in vectors) + shape.width - 1  # whole vectors of Bp are read
            last_c = max(cc + lanes for _, cc, lanes in vectors) - 1
            nonempty = b.and_(b.icmp_signed(">", rows, c64(0)), b.icmp_signed(">", K, c64(0)))
            km1, rm1 = b.sub(K, c64(1)), b.sub(rows, c64(1))
            for ref, last in ((A, _lin(b, (rm1, shape.lda), (km1, shape.ldk))),
                              (Bp, _lin(b, (km1, shape.ldb), last_b)),
                              (C, _lin(b, (rm1, shape.ldc), last_c))):
                first = _lin(b, *ref[1:])
                rows = b.select(self._outside(first, b.add(first, last), self.L.sizes[ref[0]], nonempty),
                                c64(0), rows)
        b.call(rows_product(b.module, shape), [rows, K, self.at(*A), self.at(*Bp), self.at(*C)])

    # -- loops
    def for_range(self, stop, start=0, name="i"):
        return for_range(self.b, stop, start=start, name=name)

    def each_row(self, fn, name="b"):
        with self.for_range(self.b1, self.b0, name=name) as bi:
            fn(bi)

    def each_vector(self, fn, n, t=None, name="u"):
        """fn(bi, j, m) over this part's rows and the vectors of columns j, j+1, ..., j+W-1 of
        n (values are vectors there, see the class docstring); m is mask[b, t] (i1) or None."""
        L, b = self.L, self.b
        whole, rest = divmod(n, L.W)

        def row(bi):
            m = None
            if L.masked and t is not None:
                m = b.icmp_unsigned("!=", self.ld("mask", (bi, L.T), t), ir.Constant(i8, 0))
            self.lanes = L.W
            if whole:
                with self.for_range(whole, name=name) as q:
                    fn(bi, b.mul(q, c64(L.W)), m)
            if rest:  # the row's last columns: a vector with only their lanes loaded and stored
                self.tail, self.tail_lanes = lane_mask(L.W, rest), rest
                fn(bi, c64(whole * L.W), m)
                self.tail, self.tail_lanes = None, 0
            self.lanes = 0
        self.each_row(row, name=name + "b")

    def each_unit(self, fn, t=None, name="u"):
        self.each_vector(fn, self.L.U, t, name)

    def zero(self):
        if self.lanes:
            return ir.Constant(ir.VectorType(f32, self.lanes), [0.0] * self.lanes)
        return ir.Constant(f32, 0.0)

    def select(self, m, x, y):
        return self.b.select(m, x, y)

    def step_time(self, s):
        """Input time index of processing step s."""
        return self.b.sub(c64(self.L.T - 1), s) if self.L.attrs["go_backwards"] else s

    def out_pos(self, s, t):
        return t if self.L.attrs["output_in_time_order"] else s

    def dropout(self, which, d, bi, j):
        """dropout_mask[d, b, j] or recurrent_dropout_mask[d, b, j]."""
        width = self.L.F if which == "dropout_mask" else self.L.U
        return self.ld(which, (d, self.L.B * width), (bi, width), j)

    # -- the inputs of the products
    def input_source(self, t, d):
        """(buffer reference, row stride) of x_t, or with dropout mask ``d`` of x_t * mask[d]
        (made now in XS), at this part's first row."""
        L = self.L
        if d is None:
            return ("x", (self.b0, L.T * L.F), (t, L.F)), L.T * L.F
        self.each_vector(lambda bi, j, m: self.st(self.e.mul(self.ld("x", (bi, L.T * L.F), (t, L.F), j),
                                                             self.dropout("dropout_mask", d, bi, j)),
                                                  "XS", (bi, L.F), j), L.F, name="xs")
        return ("XS", (self.b0, L.F)), L.F

    def source(self, key, slot):
        """(buffer, offset, row stride) of the h a gate group multiplies at a state slot."""
        L = self.L
        if key == (None, False):
            return self.state_view("h", slot)
        k, ld = L.src_slot[key], L.NS * L.U
        return "SRC", _lin(self.b, (slot, L.B * ld), k * L.U), ld

    def state_view(self, which, slot):
        """(buffer, offset, row stride) of state h/c before step ``slot``. The forward kernel
        updates its state in place in the h_T/c_T outputs; the gradient keeps every step's."""
        L = self.L
        if not L.keeps:
            return ("hT" if which == "h" else "cT"), c64(0), L.U
        return ("HS" if which == "h" else "CS"), _lin(self.b, (slot, L.B * L.U)), L.U

    def view_at(self, view, bi, j):
        name, off, ld = view
        return self.at(name, off, (bi, ld), j)

    def view_ref(self, view):
        """This part's first row of a view, as a product operand."""
        name, off, ld = view
        return name, off, (self.b0, ld)

    # -- forward ---------------------------------------------------------------------------
    def input_products(self, t):
        """XA[:, gates] = (x_t * mask) @ kernel[:, gates] for every input group, from WP."""
        L = self.L
        for g0, n, d in L.in_groups:
            src, lda = self.input_source(t, d)
            shape = Shape(L.part_rows, lda, L.GUp, L.GUp, L.W, *column_vectors(L.W, L.U, range(g0, g0 + n), L.Up, L.Up))
            self.product(shape, self.rows, L.F, src, ("WP", 0), ("XA", (self.b0, L.GUp)))

    def recurrent_gemms(self, slot, times_r):
        """A[:, gates] = source @ recurrent_kernel[:, gates] for the groups whose source is (or
        is not, times_r=False) the candidate's r * h, from RP."""
        L = self.L
        for g0, n, key in L.rec_groups:
            if key[1] != times_r:
                continue
            src = self.source(key, slot)
            shape = Shape(L.part_rows, src[2], L.GUp, L.GU, L.W, *column_vectors(L.W, L.U, range(g0, g0 + n), L.Up, L.U))
            self.product(shape, self.rows, L.U, self.view_ref(src), ("RP", 0), ("A", (self.b0, L.GU)))

    def copy_sources(self, slot, h_in):
        """SRC[slot] = h * recurrent_mask[d] for every masked source (not the r * h one)."""
        for key in self.L.src_slot:
            d, times_r = key
            if times_r:
                continue

            def body(bi, j, m, key=key):
                v = self.load(self.view_at(h_in, bi, j))
                v = self.b.fmul(v, self.dropout("recurrent_dropout_mask", d, bi, j))
                self.store(v, self.view_at(self.source(key, slot), bi, j))
            self.each_unit(body, name="src")

    def forward_loop(self):
        L, b, e = self.L, self.b, self.e
        U = L.U
        if L.carry:
            self.each_unit(lambda bi, j, m: self.st(self.zero(), "CARRY", (bi, U), j), name="z")
        # initial state
        for which in STATES[L.op]:
            view = self.state_view(which, c64(0))
            self.each_unit(lambda bi, j, m, which=which, view=view: self.store(self.ld(f"{which}0", (bi, U), j),
                                                                           self.view_at(view, bi, j)), name="init")
        with self.for_range(L.T, name="s") as s:
            t = self.step_time(s)
            slot = s if L.keeps else c64(0)
            nxt = b.add(s, c64(1)) if L.keeps else c64(0)
            kept_off = _lin(b, (slot, L.B * L.GA))
            h_in, h_out = self.state_view("h", slot), self.state_view("h", nxt)
            c_in, c_out = (self.state_view("c", slot), self.state_view("c", nxt)) if L.lstm else (None, None)
            self.input_products(t)
            self.copy_sources(slot, h_in)
            self.recurrent_gemms(slot, times_r=False)

            def xp(bi, t, g, j):
                """Gate g's input part: x_t @ kernel + the input bias (for gru reset_after row 0)."""
                return e.add(self.ld("XA", (bi, L.GUp), g * L.Up, j), self.ld("bias", g * U, j))
            a_at = lambda bi, col, j: self.at("A", (bi, L.GU), col, j)  # noqa: E731

            def keep(bi, col, j, value):
                """What the backward sweep reads of this step (when steps are kept)."""
                if L.keeps:
                    self.st(value, "KEPT", kept_off, (bi, L.GA), col, j)

            def finish(bi, j, m, h_new, c_new=None):
                """Masked carry, state update and the output of one element."""
                h_old = self.load(self.view_at(h_in, bi, j))
                h_state = self.select(m, h_new, h_old) if m is not None else h_new
                self.store(h_state, self.view_at(h_out, bi, j))
                if c_new is not None:
                    c_old = self.load(self.view_at(c_in, bi, j))
                    self.store(self.select(m, c_new, c_old) if m is not None else c_new, self.view_at(c_out, bi, j))
                if L.grad:
                    return
                out = h_new
                if m is not None:
                    out = self.select(m, h_new, self.ld("CARRY", (bi, U), j) if L.carry else self.zero())
                    if L.carry:
                        self.st(out, "CARRY", (bi, U), j)
                self.st(out, "seq", (bi, L.T * U), (self.out_pos(s, t), U), j)

            if L.op == "simple_rnn":
                def body(bi, j, m):
                    a = e.add(xp(bi, t, 0, j), self.load(a_at(bi, 0, j)))
                    h = L.act(e, a)
                    keep(bi, 0, j, L.act.kept(h, a))
                    finish(bi, j, m, h)
                self.each_unit(body, t)
            elif L.lstm:
                def body(bi, j, m):
                    a = [e.add(xp(bi, t, g, j), self.load(a_at(bi, g * U, j))) for g in range(4)]
                    gates = [L.ract, L.ract, L.act, L.ract]
                    i, f, cc, o = (fn(e, x) for fn, x in zip(gates, a))
                    c_new = e.add(e.mul(f, self.load(self.view_at(c_in, bi, j))), e.mul(i, cc))
                    tc = L.act(e, c_new)
                    for g, (fn, value) in enumerate(zip(gates, (i, f, cc, o))):
                        keep(bi, g * U, j, fn.kept(value, a[g]))
                    keep(bi, L.col_c_new, j, L.act.kept(tc, c_new))
                    finish(bi, j, m, e.mul(o, tc), c_new)
                self.each_unit(body, t)
            elif L.gru_ra:
                def body(bi, j, m):
                    rz, rr, rh = (e.add(self.load(a_at(bi, g * U, j)), self.ld("bias", L.GU + g * U, j)) for g in range(3))
                    az, ar = e.add(xp(bi, t, 0, j), rz), e.add(xp(bi, t, 1, j), rr)
                    z, r = L.ract(e, az), L.ract(e, ar)
                    ah = e.add(xp(bi, t, 2, j), e.mul(r, rh))
                    hh = L.act(e, ah)
                    for col, v in ((0, L.ract.kept(z, az)), (U, L.ract.kept(r, ar)), (2 * U, rh),
                                   (L.col_ah, L.act.kept(hh, ah))):
                        keep(bi, col, j, v)
                    finish(bi, j, m, self._gru_state(z, self.load(self.view_at(h_in, bi, j)), hh))
                self.each_unit(body, t)
            else:  # gru, reset_after=False: r gates the candidate's recurrent input
                r_key = L.rec_groups[-1][2]
                r_src = self.source(r_key, slot)

                def gates_zr(bi, j, m):
                    az, ar = (e.add(xp(bi, t, g, j), self.load(a_at(bi, g * U, j))) for g in range(2))
                    z, r = L.ract(e, az), L.ract(e, ar)
                    for col, v in ((0, L.ract.kept(z, az)), (U, L.ract.kept(r, ar))):
                        self.store(v, a_at(bi, col, j))  # the candidate reads z back
                        keep(bi, col, j, v)
                    h = self.load(self.view_at(h_in, bi, j))
                    if r_key[0] is not None:
                        h = e.mul(h, self.dropout("recurrent_dropout_mask", r_key[0], bi, j))
                    self.store(e.mul(r, h), self.view_at(r_src, bi, j))
                self.each_unit(gates_zr, name="zr")
                self.recurrent_gemms(slot, times_r=True)

                def candidate(bi, j, m):
                    ah = e.add(xp(bi, t, 2, j), self.load(a_at(bi, 2 * U, j)))
                    hh = L.act(e, ah)
                    keep(bi, 2 * U, j, L.act.kept(hh, ah))
                    z, _ = L.ract.from_kept(e, self.load(a_at(bi, 0, j)))
                    finish(bi, j, m, self._gru_state(z, self.load(self.view_at(h_in, bi, j)), hh))
                self.each_unit(candidate, t)
        if L.keeps and not L.grad:  # a forward kernel that keeps its steps: the final states
            for which in STATES[L.op]:
                view = self.state_view(which, c64(L.T))
                self.each_unit(lambda bi, j, m, which=which, view=view: self.st(
                    self.load(self.view_at(view, bi, j)), f"{which}T", (bi, U), j), name="final")

    def _gru_state(self, z, h, hh):
        e = self.e
        return e.add(e.mul(z, h), e.mul(e.sub(e.c(1, z), z), hh))


# ---- kernel skeleton: workspace, parts -----------------------------------------------------------

def _buffer_names(L):
    names = [n for n, _ in sorted(L.operand_index.items(), key=lambda kv: kv[1])]
    if L.grad:
        ins = names + ["d_seq", "d_hT"] + (["d_cT"] if L.lstm else []) + (["reserve"] if L.reserve else [])
        outs = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "dh0"] + (["dc0"] if L.lstm else [])
    else:
        ins, outs = names, ["seq", "hT"] + (["cT"] if L.lstm else []) + (["reserve"] if L.reserve else [])
    return ins, outs


def _workspace(k, L):
    """malloc the workspace (64-byte aligned); returns (raw pointer, {region: float*})."""
    b = k.b
    raw = b.call(get_function(k.module, "malloc", i8p, [i64]), [c64(L.ws_floats * 4 + 64)])
    with b.if_then(b.icmp_unsigned("==", b.ptrtoint(raw, i64), c64(0)), likely=False):
        b.call(get_function(k.module, "llvm.trap", void, []), [])  # out of memory, as the SGEMM does
        b.unreachable()
    base = b.inttoptr(b.and_(b.add(b.ptrtoint(raw, i64), c64(63)), c64(~63)), f32.as_pointer())
    return raw, {name: b.gep(base, [c64(off)], inbounds=True) for name, off in L.offsets.items()}


def _run_parts(k, L, pointers, body, emitter=Emitter):
    """Call ``body(emitter)`` for the batch rows of each part, in parallel when L.nparts > 1;
    ``emitter`` is the Emitter class (rnn_backward's GradEmitter for a gradient kernel).

    The body is a function of its own taking every buffer as a ``noalias`` argument: the
    buffers and workspace regions are disjoint (inputs only read), and saying so lets LLVM
    optimise the loops without runtime overlap checks."""
    names = list(pointers)
    types = [pointers[n].type for n in names]
    body_fn = ir.Function(k.module, ir.FunctionType(void, [i64, i64, i64] + types), name=f"{k.function.name}.rows")
    body_fn.linkage = "internal"
    vector_width_attrs(body_fn)
    for arg in body_fn.args[3:]:
        arg.add_attribute("noalias")
    b = ir.IRBuilder(body_fn.append_basic_block("entry"))
    b0, b1, part = body_fn.args[:3]
    body(emitter(b, L, dict(zip(names, body_fn.args[3:])), b0, b1, part))
    b.ret_void()

    ctx_t = ir.LiteralStructType(types)
    fn = ir.Function(k.module, threads.PART_FN_TYPE, name=f"{k.function.name}.part")
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rec = b.bitcast(fn.args[0], ctx_t.as_pointer())
    zero = ir.Constant(i32, 0)
    p = [b.load(b.gep(rec, [zero, ir.Constant(i32, j)], inbounds=True)) for j in range(len(names))]
    part, nparts = fn.args[1], fn.args[2]
    b0 = b.sdiv(b.mul(part, c64(L.B)), nparts)
    b1 = b.sdiv(b.mul(b.add(part, c64(1)), c64(L.B)), nparts)
    b.call(body_fn, [b0, b1, part] + p)
    b.ret_void()

    kb = k.b
    ctx = kb.alloca(ctx_t)
    for j, n in enumerate(names):
        kb.store(pointers[n], kb.gep(ctx, [zero, ir.Constant(i32, j)], inbounds=True))
    if L.nparts > 1:
        threads.emit_parallel_call(kb, fn, ctx, L.nparts, runner=declare_parallel_runner(kb.module))
    else:
        kb.call(fn, [kb.bitcast(ctx, i8p), c64(0), c64(1)])


def _lower(op, grad=False, emitter=Emitter, prepare=None, weight_gradients=None):
    """The lowering of ``op``, or with ``grad`` of ``<op>_grad``: then rnn_backward passes
    ``emitter`` (with the backward sweep), ``prepare(em)`` (run before the parts) and
    ``weight_gradients(em)`` (after them), both given an Emitter over all rows."""
    def lower(k):
        L = Layout(op, k.in_types, k.attrs, grad)
        ins, outs = _buffer_names(L)
        pointers = dict(zip(outs, k.outputs))
        pointers.update(zip(ins, k.inputs))
        raw, regions = _workspace(k, L)
        pointers.update(regions)
        pointers.update((name, k.b.gep(pointers["reserve"], [c64(off)], inbounds=True))
                        for name, off in L.reserve_offsets.items())
        pointers["status"] = k.status
        L.sizes.update((n, num_elements(t.shape)) for n, t in zip(ins, k.in_types))
        L.sizes.update((n, num_elements(t.shape)) for n, t in zip(outs, k.out_types))

        whole = Emitter(k.b, L, pointers, 0, L.B)  # all rows, before and after the parts
        sweeps_forward = not (grad and L.reserve)  # a gradient with a reserve reads the forward's steps
        if sweeps_forward:
            pack(whole, "recurrent_kernel", L.U, "RP", transposed=False)
            pack(whole, "kernel", L.F, "WP", transposed=False)
        if grad:
            prepare(whole)

        def part(em):
            if sweeps_forward:
                em.forward_loop()
            if grad:
                em.backward_loop()
        _run_parts(k, L, pointers, part, emitter)
        if grad:
            weight_gradients(whole)
        k.b.call(get_function(k.module, "free", void, [i8p]), [raw])
    return lower


for _op in GATES:  # the <op>_grad lowerings are registered by rnn_backward
    lowering("llvm", _op)(_lower(_op, grad=False))
