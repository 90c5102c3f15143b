"""Kernels of the recurrent ops (simple_rnn, lstm, gru) and their gradients: one kernel
runs the whole sequence, as cuDNN's RNN does. This module has what both kernels share (the
static layout, the emitter's memory and loop helpers, the forward recurrence, the kernel
skeleton) and registers the forward lowerings; the backward sweep and the ``<op>_grad``
lowerings are in rnn_backward.

Forward: one GEMM projects the inputs of ALL timesteps (x viewed as (B*T, F) times the
kernel, onto the input bias) into a workspace; then a loop over time does one small
product per step (h_{t-1} @ recurrent_kernel, rows_product.py: the recurrent kernel is
packed once per call into RP and stays in cache, no call into the SGEMM per step) and the
gate math as explicit vector code over units (``width`` floats per vector, the last vector
of a row masked when units is not a multiple of it).

Samples never interact inside the loop, so the loops run in parts over batch rows, one
part per core (each part does its rows' input projection, forward and backward sweep, with
no barrier per step); only the weight gradients, which sum over samples, come after the
parts have joined.

Dropout masks are per sample and per gate (mask[g % D]): gate g's matmul sees x * mask,
so with D = G the input projection is one GEMM per gate on its own masked copy of x,
and the recurrent step one GEMM per gate on its masked copy of h ("sources" below).
For GRU with reset_after=False the candidate's recurrent input is r * h (dropped), a
source of its own, computed after z and r.

Workspace (one malloc per call, freed before returning; sizes are static):
  RP     (U, G*Up)    recurrent_kernel packed for the forward product: gate g's columns at
                      g*Up, zero padded to Up (units rounded up to whole vectors)
  RT     (G*U, Up)    recurrent_kernel^T packed for the backward product (gradient only)
  XP     (B*T, G*U)   input projection + input bias; the gradient reuses it for the
                      input-side gate derivatives (row b*T + t)
  A      (slots, B, GA) gate pre-activations per step (+ c_new for lstm, + the
                      candidate's recurrent part for gru reset_after)
  HS, CS ((T+1), B, U) states before each step (gradient only; forward keeps its
                      state in the h_T/c_T outputs)
  SRC    (slots, B, NS*U) masked copies of h each gate group multiplies
  DR     (T, B, G*U)  recurrent-side gate derivatives (gradient)
  XD     (B*T, F)     x times a dropout mask; DX_PART (B*T, F) one gate group's part of dx
  TMP, CARRY (B, U)   per-step scratch; the previous output / its cotangent (masks)
"""
import math

import llvmlite.ir as ir

from ...ir.registry import lowering
from ...ir.types import num_elements
from ...ops.rnn import ACTIVATIONS, GATES, STATES, full_attrs, operand_names
from ...schedule.kernel import STATUS_INDEX_OUT_OF_RANGE
from . import threads
from .irutil import c64, f32, for_range, get_function, i8, i8p, i32, i64, void
from .render import scalar
from .scalar import ScalarEmitter
from .jit import vector_width_attrs
from .rows_product import Shape, host_vector_width, lane_mask, rows_product, tile_shape, vload, vstore
from .support_library import declare_gemm, declare_parallel_runner, declare_serial_gemm

# Below this many gate elements (T * B * G * U) the loops stay on the calling thread:
# starting a helper thread costs ~10-20 us.
PARALLEL_MIN_WORK = 1 << 15
# Tests set this: every index and every GEMM operand's extent is checked against its buffer
# (status 1 and a clamped index on a violation) -- proof that nothing outside is touched.
CHECK_BOUNDS = False
# Floats per vector of the gate math and the per-step products; None: the host's (16 with
# AVX-512, else 8). Tests set other widths (any width is correct on any host).
VECTOR_WIDTH = None
ALIGN_FLOATS = 16  # 64 bytes


def _activation(name):
    """The activation ``f(e, x)`` and its gradient ``df(e, x, dy) = dy * f'(x)`` as IR emitters,
    rendered from the neutral definitions of the op and its ``_grad`` (schedule/scalar.py)."""
    spec = ACTIVATIONS[name]
    if spec is None:
        return (lambda e, x: x), (lambda e, x, dy: dy)
    op, attrs = spec
    return ((lambda e, x: scalar(e.b, op, [x], **attrs)),
            (lambda e, x, dy: scalar(e.b, f"{op}_grad", [x, dy], **attrs)))


def _groups(keys):
    """Runs of consecutive gates with the same key: [(first gate, count, key)]."""
    out = []
    for g, key in enumerate(keys):
        if out and out[-1][2] == key:
            out[-1] = (out[-1][0], out[-1][1] + 1, key)
        else:
            out.append((g, 1, key))
    return out


class Layout:
    """Static facts of one recurrent node: sizes, optional operands, gate groups, workspace."""

    def __init__(self, op, in_types, attrs, grad):
        self.op, self.grad = op, grad
        self.attrs = a = full_attrs(attrs)
        names = operand_names(op, a)
        self.operand_index = {n: i for i, n in enumerate(names)}
        self.B, self.T, self.F = in_types[0].shape
        self.U, self.G = a["units"], GATES[op]
        self.GU = self.G * self.U
        self.W = VECTOR_WIDTH or host_vector_width()
        self.Up = -(-self.U // self.W) * self.W  # units rounded up to whole vectors
        self.lstm, self.gru = op == "lstm", op == "gru"
        self.gru_ra = self.gru and a["reset_after"]
        self.gru_nra = self.gru and not a["reset_after"]
        self.masked = a["masked"]
        self.carry = self.masked and not a["zero_output_for_mask"]  # masked steps repeat the last output
        self.D = in_types[self.operand_index["dropout_mask"]].shape[0] if a["dropout_mask"] else 0
        self.D2 = (in_types[self.operand_index["recurrent_dropout_mask"]].shape[0]
                   if a["recurrent_dropout_mask"] else 0)
        self.act, self.dact = _activation(a["activation"])
        self.ract, self.dract = _activation(a["recurrent_activation"])
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
        self.slots = self.T if grad else 1
        work = self.T * self.B * self.GU
        self.nparts = min(threads.default_nthreads(), self.B) if work >= PARALLEL_MIN_WORK else 1
        self._plan_workspace()

    def _plan_workspace(self):
        B, T, F, U, GU = self.B, self.T, self.F, self.U, self.GU
        sizes = {"XP": B * T * GU, "A": self.slots * B * self.GA, "SRC": self.slots * B * self.NS * U,
                 "RP": U * self.G * self.Up}
        if self.D:
            sizes["XD"] = B * T * F
        if self.grad:
            sizes.update(HS=(T + 1) * B * U, DR=T * B * GU, TMP=B * U, RT=GU * self.Up)
            if self.lstm:
                sizes["CS"] = (T + 1) * B * U
            if len(self.in_groups) > 1:
                sizes["DX_PART"] = B * T * F
        if self.carry:
            sizes["CARRY"] = B * U
        self.sizes = dict(sizes)  # elements per buffer (operands and outputs added by the lowering)
        self.offsets, total = {}, 0
        for name, n in sizes.items():
            self.offsets[name] = total
            total += (n + ALIGN_FLOATS - 1) // ALIGN_FLOATS * ALIGN_FLOATS
        self.ws_floats = total


def unit_vectors(L, gates, bstride, cstride):
    """The columns of a per-step product (rows_product.Shape's chunk, step, count, tail) whose
    vectors are the units of ``gates``: gate g's units j..j+W-1 are at column g*bstride + j
    of the packed matrix and g*cstride + j of C. A chunk holds whole vectors of the same
    units in every gate, as many as make whole register tiles (rows_product.tile_shape);
    the last units of a row, when units is not a multiple of W, make the masked vectors of
    the tail."""
    W, gates = L.W, list(gates)
    whole, rest = divmod(L.U, W)
    per_tile = tile_shape(W)[0]
    per_chunk = max(1, min(per_tile // math.gcd(per_tile, len(gates)), whole))
    count = whole // per_chunk
    chunk = tuple((g * bstride + q * W, g * cstride + q * W) for q in range(per_chunk) for g in gates)
    tail = [(g * bstride + q * W, g * cstride + q * W, W) for q in range(count * per_chunk, whole) for g in gates]
    tail += [(g * bstride + whole * W, g * cstride + whole * W, rest) for g in gates if rest]
    return (chunk if count else ()), (per_chunk * W, per_chunk * W), count, tuple(tail)


def pack_recurrent_kernel(em, transposed):
    """RP[k, g*Up + j] = recurrent_kernel[k, g*U + j] (the forward product's weights), or with
    ``transposed`` RT[g*U + k, j] = recurrent_kernel[j, g*U + k] (the backward product's);
    zeros in the padding j >= U."""
    L, b, U, Up = em.L, em.b, em.L.U, em.L.Up
    for g in range(L.G):
        with em.for_range(U, name="pk") as k, em.for_range(Up, name="pj") as j:
            inside = b.icmp_signed("<", j, c64(U))
            jr = b.select(inside, j, c64(0))  # the padding reads an element inside the matrix
            if transposed:
                value, dest = em.ld("recurrent_kernel", (jr, L.GU), g * U, k), ("RT", g * U * Up, (k, Up), j)
            else:
                value, dest = em.ld("recurrent_kernel", (k, L.GU), g * U, jr), ("RP", (k, L.G * Up), g * Up, j)
            em.st(b.select(inside, value, em.zero()), *dest)


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
    """Emits one part of a recurrent kernel: rows [b0, b1) of the batch, with builder ``b``
    and named buffer pointers ``p`` (operands, outputs and workspace regions); ``in_part``:
    inside one of the kernel's parts (False after they have joined).

    Inside ``each_unit`` values are vectors of ``L.W`` consecutive units (``lanes``), and
    ``load``/``store``/``ld``/``st`` move vectors (masked to the valid units in a row's last
    vector, ``tail``); elsewhere they move single floats."""

    def __init__(self, b, L, p, b0, b1, in_part=True):
        self.b, self.L, self.p, self.b0, self.b1, self.in_part = b, L, p, b0, b1, in_part
        self.e = ScalarEmitter(b)
        self.rows = b.sub(b1, b0) if not isinstance(b0, int) else c64(b1 - b0)
        self.lanes, self.tail, self.tail_lanes = 0, None, 0

    # -- memory
    def at(self, name, *terms):
        index = _lin(self.b, *terms)
        if CHECK_BOUNDS:
            last = index
            if self.lanes:
                last = self.b.add(index, c64((self.tail_lanes or self.lanes) - 1))
            bad = self._outside(index, last, self.L.sizes[name])
            index = self.b.select(bad, c64(0), index)
        return self.b.gep(self.p[name], [index], inbounds=True)

    def load(self, ptr):
        return vload(self.b, ptr, self.lanes, self.tail) if self.lanes else self.b.load(ptr)

    def store(self, value, ptr):
        if self.lanes:
            vstore(self.b, value, ptr, self.tail)
        else:
            self.b.store(value, ptr)

    def _outside(self, first, last, size, when=None):
        """i1: [first, last] is not inside a buffer of ``size`` elements (then report status 1)."""
        b = self.b
        bad = b.or_(b.icmp_signed("<", first, c64(0)), b.icmp_signed(">=", last, c64(size)))
        if when is not None:
            bad = b.and_(bad, when)
        with b.if_then(bad, likely=False):
            b.store(ir.Constant(i32, STATUS_INDEX_OUT_OF_RANGE), self.p["status"])
        return bad

    def ld(self, name, *terms):
        return self.load(self.at(name, *terms))

    def st(self, value, name, *terms):
        self.store(value, self.at(name, *terms))

    def _checked_rows(self, M, extents):
        """M, or 0 (after reporting status 1) when a matrix extent is outside its buffer;
        ``extents``: (buffer reference as for ``at``, rows, columns, row stride)."""
        b = self.b
        for ref, rows, cols, ld in extents:
            first = _lin(b, *ref[1:])
            last = b.add(first, b.add(b.mul(b.sub(rows, c64(1)), c64(ld)), b.sub(cols, c64(1))))
            nonempty = b.and_(b.icmp_signed(">", rows, c64(0)), b.icmp_signed(">", cols, c64(0)))
            M = b.select(self._outside(first, last, self.L.sizes[ref[0]], nonempty), c64(0), M)
        return M

    def gemm(self, ta, tb, M, N, K, A, lda, Bm, ldb, C, ldc, beta=0.0):
        """C = op(A) @ op(B) (+ C with beta=1) through the SGEMM; A, Bm, C are (buffer name,
        *index terms) of the first element, as for ``at``. Inside a part of several the
        single-threaded SGEMM: the parts already use the cores."""
        b = self.b
        as64 = lambda v: c64(v) if isinstance(v, int) else v  # noqa: E731
        M, N, K = as64(M), as64(N), as64(K)
        if CHECK_BOUNDS:  # the whole stored extent of each matrix must be inside its buffer
            M = self._checked_rows(M, ((A, K if ta else M, M if ta else K, lda),
                                       (Bm, N if tb else K, K if tb else N, ldb), (C, M, N, ldc)))
        sgemm = declare_serial_gemm if self.L.nparts > 1 and self.in_part else declare_gemm
        b.call(sgemm(b.module), [
            ir.Constant(i32, int(ta)), ir.Constant(i32, int(tb)), M, N, K, ir.Constant(f32, 1.0),
            self.at(*A), c64(lda), self.at(*Bm), c64(ldb), ir.Constant(f32, beta), self.at(*C), c64(ldc)])

    def product(self, shape, A, Bp, C):
        """The per-step product ``shape`` (rows_product.py) over this part's rows; A, Bp, C are
        buffer references as for ``at`` (A and C at this part's first row)."""
        rows = self.rows
        if CHECK_BOUNDS:
            vectors = [(bc + c * shape.step[0], cc + c * shape.step[1], shape.width)
                       for c in range(shape.count) for bc, cc in shape.chunk] + list(shape.tail)
            bcols = max(bc + shape.width for bc, _, _ in vectors)  # whole vectors of the packed matrix
            ccols = max(cc + lanes for _, cc, lanes in vectors)
            rows = self._checked_rows(rows, ((A, rows, c64(shape.K), shape.lda),
                                             (Bp, c64(shape.K), c64(bcols), shape.ldb),
                                             (C, rows, c64(ccols), shape.ldc)))
        self.b.call(rows_product(self.b.module, shape), [rows, self.at(*A), self.at(*Bp), self.at(*C)])

    # -- loops
    def for_range(self, stop, start=0, name="i"):
        return for_range(self.b, stop, start=start, name=name)

    def each_row(self, fn, name="b"):
        with self.for_range(self.b1, self.b0, name=name) as bi:
            fn(bi)

    def each_unit(self, fn, t=None, name="u"):
        """fn(bi, j, m) over this part's rows and the vectors of units j, j+1, ..., j+W-1
        (values are vectors there, see the class docstring); m is mask[b, t] (i1) or None."""
        L, b = self.L, self.b
        whole, rest = divmod(L.U, L.W)

        def row(bi):
            m = None
            if L.masked and t is not None:
                m = b.icmp_unsigned("!=", self.ld("mask", (bi, L.T), t), ir.Constant(i8, 0))
            self.lanes = L.W
            if whole:
                with self.for_range(whole, name=name) as q:
                    fn(bi, b.mul(q, c64(L.W)), m)
            if rest:  # the row's last units: a vector with only their lanes loaded and stored
                self.tail, self.tail_lanes = lane_mask(L.W, rest), rest
                fn(bi, c64(whole * L.W), m)
                self.tail, self.tail_lanes = None, 0
            self.lanes = 0
        self.each_row(row, name=name + "b")

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

    # -- the masked copies of x and h
    def masked_x(self, dest, d):
        """dest[b*T + t, f] = x[b, t, f] * dropout_mask[d, b, f] for this part's rows."""
        L = self.L

        def row(bi):
            with self.for_range(L.T, name="xt") as t, self.for_range(L.F, name="xf") as f:
                v = self.b.fmul(self.ld("x", (bi, L.T * L.F), (t, L.F), f), self.dropout("dropout_mask", d, bi, f))
                self.st(v, dest, (bi, L.T * L.F), (t, L.F), f)
        self.each_row(row, name="xb")

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
        if not L.grad:
            return ("hT" if which == "h" else "cT"), c64(0), L.U
        return ("HS" if which == "h" else "CS"), _lin(self.b, (slot, L.B * L.U)), L.U

    def view_at(self, view, bi, j):
        name, off, ld = view
        return self.at(name, off, (bi, ld), j)

    def view_ref(self, view):
        """This part's first row of a view, as a GEMM operand."""
        name, off, ld = view
        return name, off, (self.b0, ld)

    # -- forward ---------------------------------------------------------------------------
    def input_projection(self):
        """XP rows of this part = input bias + (x * mask) @ kernel, one GEMM per input group."""
        L, b = self.L, self.b

        def row(bi):  # the input bias (for gru reset_after, row 0 of bias) under every step
            with self.for_range(L.T, name="pt") as t, self.for_range(L.GU, name="pc") as c:
                self.st(self.ld("bias", c), "XP", (bi, L.T * L.GU), (t, L.GU), c)
        self.each_row(row, name="pb")
        nrows = b.mul(self.rows, c64(L.T))
        for g0, n, d in L.in_groups:
            if d is None:
                src = ("x", (self.b0, L.T * L.F))
            else:
                self.masked_x("XD", d)
                src = ("XD", (self.b0, L.T * L.F))
            self.gemm(False, False, nrows, n * L.U, L.F, src, L.F, ("kernel", g0 * L.U), L.GU,
                      ("XP", (self.b0, L.T * L.GU), g0 * L.U), L.GU, beta=1.0)

    def recurrent_gemms(self, slot, a_off, times_r):
        """A[slot][:, gates] = source @ recurrent_kernel[:, gates] for the groups whose source
        is (or is not, times_r=False) the candidate's r * h, from the packed RP."""
        L = self.L
        for g0, n, key in L.rec_groups:
            if key[1] != times_r:
                continue
            src = self.source(key, slot)
            shape = Shape(L.U, src[2], L.G * L.Up, L.GA, L.W,
                          *unit_vectors(L, range(g0, g0 + n), L.Up, L.U))
            self.product(shape, self.view_ref(src), ("RP", 0), ("A", a_off, (self.b0, L.GA)))

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
            slot = s if L.grad else c64(0)
            nxt = b.add(s, c64(1)) if L.grad else c64(0)
            a_off = _lin(b, (slot, L.B * L.GA))
            h_in, h_out = self.state_view("h", slot), self.state_view("h", nxt)
            c_in, c_out = (self.state_view("c", slot), self.state_view("c", nxt)) if L.lstm else (None, None)
            self.copy_sources(slot, h_in)
            self.recurrent_gemms(slot, a_off, times_r=False)
            xp = lambda bi, t, g, j: self.ld("XP", (bi, L.T * L.GU), (t, L.GU), g * U, j)  # noqa: E731
            a_at = lambda bi, col, j: self.at("A", a_off, (bi, L.GA), col, j)  # noqa: E731

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
                    if L.grad:
                        self.store(a, a_at(bi, 0, j))
                    finish(bi, j, m, L.act(e, a))
                self.each_unit(body, t)
            elif L.lstm:
                def body(bi, j, m):
                    a = [e.add(xp(bi, t, g, j), self.load(a_at(bi, g * U, j))) for g in range(4)]
                    if L.grad:
                        for g in range(4):
                            self.store(a[g], a_at(bi, g * U, j))
                    i, f, cc, o = L.ract(e, a[0]), L.ract(e, a[1]), L.act(e, a[2]), L.ract(e, a[3])
                    c_new = e.add(e.mul(f, self.load(self.view_at(c_in, bi, j))), e.mul(i, cc))
                    if L.grad:
                        self.store(c_new, a_at(bi, L.col_c_new, j))
                    finish(bi, j, m, e.mul(o, L.act(e, c_new)), c_new)
                self.each_unit(body, t)
            elif L.gru_ra:
                def body(bi, j, m):
                    rz, rr, rh = (e.add(self.load(a_at(bi, g * U, j)), self.ld("bias", L.GU + g * U, j)) for g in range(3))
                    az, ar = e.add(xp(bi, t, 0, j), rz), e.add(xp(bi, t, 1, j), rr)
                    z, r = L.ract(e, az), L.ract(e, ar)
                    ah = e.add(xp(bi, t, 2, j), e.mul(r, rh))
                    if L.grad:
                        for col, v in ((0, az), (U, ar), (2 * U, rh), (L.col_ah, ah)):
                            self.store(v, a_at(bi, col, j))
                    finish(bi, j, m, self._gru_state(z, self.load(self.view_at(h_in, bi, j)), L.act(e, ah)))
                self.each_unit(body, t)
            else:  # gru, reset_after=False: r gates the candidate's recurrent input
                r_key = L.rec_groups[-1][2]
                r_src = self.source(r_key, slot)

                def gates_zr(bi, j, m):
                    az, ar = (e.add(xp(bi, t, g, j), self.load(a_at(bi, g * U, j))) for g in range(2))
                    self.store(az, a_at(bi, 0, j))
                    self.store(ar, a_at(bi, U, j))
                    h = self.load(self.view_at(h_in, bi, j))
                    if r_key[0] is not None:
                        h = e.mul(h, self.dropout("recurrent_dropout_mask", r_key[0], bi, j))
                    self.store(e.mul(L.ract(e, ar), h), self.view_at(r_src, bi, j))
                self.each_unit(gates_zr, name="zr")
                self.recurrent_gemms(slot, a_off, times_r=True)

                def candidate(bi, j, m):
                    ah = e.add(xp(bi, t, 2, j), self.load(a_at(bi, 2 * U, j)))
                    if L.grad:
                        self.store(ah, a_at(bi, 2 * U, j))
                    z = L.ract(e, self.load(a_at(bi, 0, j)))
                    finish(bi, j, m, self._gru_state(z, self.load(self.view_at(h_in, bi, j)), L.act(e, ah)))
                self.each_unit(candidate, t)

    def _gru_state(self, z, h, hh):
        e = self.e
        return e.add(e.mul(z, h), e.mul(e.sub(e.c(1, z), z), hh))


# ---- kernel skeleton: workspace, parts -----------------------------------------------------------

def _buffer_names(L):
    names = [n for n, _ in sorted(L.operand_index.items(), key=lambda kv: kv[1])]
    if L.grad:
        ins = names + ["d_seq", "d_hT"] + (["d_cT"] if L.lstm else [])
        outs = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "dh0"] + (["dc0"] if L.lstm else [])
    else:
        ins, outs = names, ["seq", "hT"] + (["cT"] if L.lstm else [])
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
    vectorise the loops over units without runtime overlap checks."""
    names = list(pointers)
    types = [pointers[n].type for n in names]
    body_fn = ir.Function(k.module, ir.FunctionType(void, [i64, i64] + types), name=f"{k.function.name}.rows")
    body_fn.linkage = "internal"
    vector_width_attrs(body_fn)
    for arg in body_fn.args[2:]:
        arg.add_attribute("noalias")
    b = ir.IRBuilder(body_fn.append_basic_block("entry"))
    body(emitter(b, L, dict(zip(names, body_fn.args[2:])), body_fn.args[0], body_fn.args[1]))
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
    b.call(body_fn, [b0, b1] + p)
    b.ret_void()

    kb = k.b
    ctx = kb.alloca(ctx_t)
    for j, n in enumerate(names):
        kb.store(pointers[n], kb.gep(ctx, [zero, ir.Constant(i32, j)], inbounds=True))
    if L.nparts > 1:
        threads.emit_parallel_call(kb, fn, ctx, L.nparts, runner=declare_parallel_runner(kb.module))
    else:
        kb.call(fn, [kb.bitcast(ctx, i8p), c64(0), c64(1)])


def _lower(op, grad=False, emitter=Emitter, weight_gradients=None):
    """The lowering of ``op``, or with ``grad`` of ``<op>_grad``: then rnn_backward passes
    ``emitter`` (with the backward sweep) and ``weight_gradients(k, L, pointers)``."""
    def lower(k):
        L = Layout(op, k.in_types, k.attrs, grad)
        ins, outs = _buffer_names(L)
        pointers = dict(zip(outs, k.outputs))
        pointers.update(zip(ins, k.inputs))
        raw, regions = _workspace(k, L)
        pointers.update(regions)
        pointers["status"] = k.status
        L.sizes.update((n, num_elements(t.shape)) for n, t in zip(ins, k.in_types))
        L.sizes.update((n, num_elements(t.shape)) for n, t in zip(outs, k.out_types))

        whole = Emitter(k.b, L, pointers, 0, L.B, in_part=False)
        pack_recurrent_kernel(whole, transposed=False)
        if grad:
            pack_recurrent_kernel(whole, transposed=True)

        def part(em):
            em.input_projection()
            em.forward_loop()
            if grad:
                em.backward_loop()
                em.input_backward()
        _run_parts(k, L, pointers, part, emitter)
        if grad:
            weight_gradients(k, L, pointers)
        k.b.call(get_function(k.module, "free", void, [i8p]), [raw])
    return lower


for _op in GATES:  # the <op>_grad lowerings are registered by rnn_backward
    lowering("llvm", _op)(_lower(_op, grad=False))
