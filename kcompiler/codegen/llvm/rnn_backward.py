"""Gradient kernels of the recurrent ops (``<op>_grad``): backprop through time.

The forward loop (rnn.Emitter.forward_loop) runs again, keeping every step's gate
pre-activations and states in a workspace (T x B x ...), then the loop walks the steps
backwards. Per step, over a part's rows: the element-wise gate derivatives (input side in
DX, recurrent side in DR), then the products of the step (rows_product.py, all operands in
cache): dh_{t-1} += dgates @ recurrent_kernel^T and dx_t = dgates @ kernel^T from the
packed RT and WT, and the part's sums of the weight gradients d_recurrent_kernel +=
h_{t-1}^T @ dgates, d_kernel += x_t^T @ dgates, d_bias += the rows of dgates. Once the
parts have joined, their sums are added into the outputs.

The layout, the workspace regions (KEPT, HS/CS, SRC, DR, DX, GRADS, ...), the parts over batch
rows and the kernel skeleton are shared with the forward kernel: see rnn.
"""
import llvmlite.ir as ir

from ...ir.registry import lowering
from ...ops.rnn import GATES
from .irutil import c64, get_function, i8, i8p, i64, void
from .rnn import Emitter, _lin, _lower, column_vectors, pack
from .rows_product import Shape


class GradEmitter(Emitter):
    """An Emitter that also emits the backward sweep of its part of the batch rows."""

    # -- backward ----------------------------------------------------------------------------
    def backward_loop(self):
        """Backprop through time over this part's rows; leaves dh0/dc0 and dx in the outputs
        and the part's weight-gradient sums in GRADS."""
        L, b, e = self.L, self.b, self.e
        U = L.U
        # dH / dC live in the dh0 / dc0 outputs: the cotangent of the state after each step.
        self.each_unit(lambda bi, j, m: self.st(self.ld("d_hT", (bi, U), j), "dh0", (bi, U), j), name="dh")
        if L.lstm:
            self.each_unit(lambda bi, j, m: self.st(self.ld("d_cT", (bi, U), j), "dc0", (bi, U), j), name="dc")
        if L.carry:
            self.each_unit(lambda bi, j, m: self.st(self.zero(), "CARRY", (bi, U), j), name="z")
        with self.for_range(L.T, name="r") as i:
            s = b.sub(c64(L.T - 1), i)
            t = self.step_time(s)
            kept_off = _lin(b, (s, L.B * L.GA))
            h_prev = self.state_view("h", s)
            a_ld = lambda bi, col, j: self.ld("KEPT", kept_off, (bi, L.GA), col, j)  # noqa: E731

            def incoming(bi, j, m):
                """(d new h, d new c) entering this step's cell; what masked samples keep goes
                straight into dh0/dc0 (the cell's contributions are added to it)."""
                dh_old = self.ld("dh0", (bi, U), j)
                d_out = self.ld("d_seq", (bi, L.T * U), (self.out_pos(s, t), U), j)
                if L.carry:
                    d_out = e.add(d_out, self.ld("CARRY", (bi, U), j))
                dnh = e.add(dh_old, d_out)
                dc_old = self.ld("dc0", (bi, U), j) if L.lstm else None
                if m is None:
                    return dnh, dc_old, self.zero(), self.zero()
                if L.carry:
                    self.st(self.select(m, self.zero(), d_out), "CARRY", (bi, U), j)
                kept_h = self.select(m, self.zero(), dh_old)
                kept_c = self.select(m, self.zero(), dc_old) if L.lstm else None
                return (self.select(m, dnh, self.zero()), self.select(m, dc_old, self.zero()) if L.lstm else None,
                        kept_h, kept_c)

            def store_da(bi, j, g, dx_value, dr_value=None):
                self.st(dx_value, "DX", (bi, L.GUp), g * L.Up, j)
                self.st(dx_value if dr_value is None else dr_value, "DR", (bi, L.GUp), g * L.Up, j)

            if L.op == "simple_rnn":
                def body(bi, j, m):
                    dnh, _, kept_h, _ = incoming(bi, j, m)
                    _, dh = L.act.from_kept(e, a_ld(bi, 0, j))
                    store_da(bi, j, 0, dh(dnh))
                    self.st(kept_h, "dh0", (bi, U), j)
                self.each_unit(body, t)
            elif L.lstm:
                c_prev = self.state_view("c", s)

                def body(bi, j, m):
                    dnh, dnc, kept_h, kept_c = incoming(bi, j, m)
                    (i, di), (f, df), (cc, dcc), (o, do) = (
                        fn.from_kept(e, a_ld(bi, g * U, j)) for g, fn in enumerate((L.ract, L.ract, L.act, L.ract)))
                    tc, dtc = L.act.from_kept(e, a_ld(bi, L.col_c_new, j))
                    dc = e.add(dnc, dtc(e.mul(dnh, o)))
                    store_da(bi, j, 0, di(e.mul(dc, cc)))
                    store_da(bi, j, 1, df(e.mul(dc, self.load(self.view_at(c_prev, bi, j)))))
                    store_da(bi, j, 2, dcc(e.mul(dc, i)))
                    store_da(bi, j, 3, do(e.mul(dnh, tc)))
                    dc_prev = e.mul(dc, f)
                    self.st(dc_prev if m is None else e.add(dc_prev, kept_c), "dc0", (bi, U), j)
                    self.st(kept_h, "dh0", (bi, U), j)
                self.each_unit(body, t)
            elif L.gru_ra:
                def body(bi, j, m):
                    dnh, _, kept_h, _ = incoming(bi, j, m)
                    (z, dz), (r, dr), (hh, dhh) = (fn.from_kept(e, a_ld(bi, col, j))
                                                   for fn, col in ((L.ract, 0), (L.ract, U), (L.act, L.col_ah)))
                    rh = a_ld(bi, 2 * U, j)
                    h = self.load(self.view_at(h_prev, bi, j))
                    dah = dhh(e.mul(dnh, e.sub(e.c(1, z), z)))
                    store_da(bi, j, 0, dz(e.mul(dnh, e.sub(h, hh))))
                    store_da(bi, j, 1, dr(e.mul(dah, rh)))
                    store_da(bi, j, 2, dah, e.mul(dah, r))
                    self.st(e.add(kept_h, e.mul(dnh, z)), "dh0", (bi, U), j)
                self.each_unit(body, t)
            else:
                r_key = L.rec_groups[-1][2]

                def zh(bi, j, m):
                    dnh, _, kept_h, _ = incoming(bi, j, m)
                    (z, dz), (hh, dhh) = L.ract.from_kept(e, a_ld(bi, 0, j)), L.act.from_kept(e, a_ld(bi, 2 * U, j))
                    h = self.load(self.view_at(h_prev, bi, j))
                    store_da(bi, j, 0, dz(e.mul(dnh, e.sub(h, hh))))
                    store_da(bi, j, 2, dhh(e.mul(dnh, e.sub(e.c(1, z), z))))
                    self.st(e.add(kept_h, e.mul(dnh, z)), "dh0", (bi, U), j)
                self.each_unit(zh, t, name="zh")
                # d(r * h_dropped) = d ah @ U_h^T
                self.transposed_product(2, 1, ("TMP", (self.b0, U)))

                def reset(bi, j, m):
                    r, dr = L.ract.from_kept(e, a_ld(bi, U, j))
                    h = self.load(self.view_at(h_prev, bi, j))
                    rm = r
                    if r_key[0] is not None:
                        mask = self.dropout("recurrent_dropout_mask", r_key[0], bi, j)
                        h, rm = e.mul(h, mask), e.mul(r, mask)
                    dhr = self.ld("TMP", (bi, U), j)
                    store_da(bi, j, 1, dr(e.mul(dhr, h)))
                    self.st(e.add(self.ld("dh0", (bi, U), j), e.mul(dhr, rm)), "dh0", (bi, U), j)
                self.each_unit(reset, name="rs")
            self.recurrent_backward_gemms()
            self.weight_products(s, t)
            self.input_gradient(t)

    def transposed_product(self, g0, n, C, accumulate=False):
        """C (+)= dgates[:, gates g0..g0+n) @ recurrent_kernel[:, gates]^T over this part's
        rows, from RT."""
        L = self.L
        shape = Shape(L.part_rows, L.GUp, L.Up, L.U, L.W, *column_vectors(L.W, L.U, [0], 0, 0), accumulate=accumulate)
        self.product(shape, self.rows, n * L.Up, ("DR", (self.b0, L.GUp), g0 * L.Up), ("RT", (g0 * L.Up, L.Up)), C)

    def recurrent_backward_gemms(self):
        """dh_prev += sum over gate groups of (dgates @ recurrent_kernel^T) * recurrent mask."""
        L, e = self.L, self.e
        U = L.U
        for g0, n, (d, times_r) in L.rec_groups:
            if times_r:
                continue  # done with the candidate above
            if d is None:
                self.transposed_product(g0, n, ("dh0", (self.b0, U)), accumulate=True)
                continue
            self.transposed_product(g0, n, ("TMP", (self.b0, U)))

            def add(bi, j, m, d=d):
                v = e.mul(self.ld("TMP", (bi, U), j), self.dropout("recurrent_dropout_mask", d, bi, j))
                self.st(e.add(self.ld("dh0", (bi, U), j), v), "dh0", (bi, U), j)
            self.each_unit(add, name="rm")

    def weight_products(self, s, t):
        """This part's sums over its rows of step s: d_recurrent_kernel[:, gates] += source^T @
        dgates (the source each gate group multiplied), d_kernel[:, gates] += (x_t * mask)^T @
        dgates, d_bias += dgates (input side; for gru reset_after the recurrent bias too)."""
        L, e = self.L, self.e
        sums = ("GRADS", (self.part, L.PG))

        def add_rows_transposed(src, ld, n, dgates, g0, g, where):
            shape = Shape((n,), 1, L.GUp, L.GU, L.W, *column_vectors(L.W, L.U, range(g0, g0 + g), L.Up, L.U),
                          accumulate=True, ldk=ld)
            self.product(shape, c64(n), self.rows, src, (dgates, (self.b0, L.GUp)), sums + (L.grad_offsets[where],))

        for g0, n, key in L.rec_groups:
            src = self.source(key, s)
            add_rows_transposed(self.view_ref(src), src[2], L.U, "DR", g0, n, "d_recurrent_kernel")
        for g0, n, d in L.in_groups:
            src, ld = self.input_source(t, d)
            add_rows_transposed(src, ld, L.F, "DX", g0, n, "d_kernel")
        bias = [("DX", 0)] + ([("DR", L.GU)] if L.gru_ra else [])

        def add_bias(bi, j, m):
            for dgates, row in bias:
                for g in range(L.G):
                    at = sums + (L.grad_offsets["d_bias"], row + g * L.U, j)
                    self.st(e.add(self.ld(*at), self.ld(dgates, (bi, L.GUp), g * L.Up, j)), *at)
        self.each_unit(add_bias, name="db")

    def input_gradient(self, t):
        """dx_t = sum over input groups of (dgates @ kernel^T) * dropout mask, from WT."""
        L, e = self.L, self.e
        F = L.F
        dx_t = ("dx", (self.b0, L.T * F), (t, F))
        for k, (g0, n, d) in enumerate(L.in_groups):
            into_dx = d is None
            shape = Shape(L.part_rows, L.GUp, L.Fp, L.T * F if into_dx else F, L.W, *column_vectors(L.W, F, [0], 0, 0),
                          accumulate=into_dx and k > 0)
            self.product(shape, self.rows, n * L.Up, ("DX", (self.b0, L.GUp), g0 * L.Up),
                         ("WT", (g0 * L.Up, L.Fp)), dx_t if into_dx else ("TMPX", (self.b0, F)))
            if into_dx:
                continue

            def masked(bi, j, m, k=k, d=d):
                v = e.mul(self.ld("TMPX", (bi, F), j), self.dropout("dropout_mask", d, bi, j))
                if k:
                    v = e.add(self.ld("dx", (bi, L.T * F), (t, F), j), v)
                self.st(v, "dx", (bi, L.T * F), (t, F), j)
            self.each_vector(masked, F, name="dxm")


# ---- before and after the parts -----------------------------------------------------------------

def _prepare(em):
    """Pack RT and WT; zero DR and DX (their padding stays zero: the sweep never stores
    there) and the parts' weight-gradient sums."""
    L = em.L
    pack(em, "recurrent_kernel", L.U, "RT", transposed=True)
    pack(em, "kernel", L.F, "WT", transposed=True)
    b = em.b
    memset = get_function(b.module, "llvm.memset.p0.i64", void, [i8p, i8, i64, ir.IntType(1)])
    for region in ("DR", "DX", "GRADS"):
        b.call(memset, [b.bitcast(em.p[region], i8p), ir.Constant(i8, 0), c64(4 * L.sizes[region]),
                        ir.Constant(ir.IntType(1), 0)])


def _weight_gradients(em):
    """d_kernel, d_recurrent_kernel, d_bias: the sums of the parts, added."""
    L = em.L
    for name, offset in L.grad_offsets.items():
        n = L.n_bias if name == "d_bias" else L.sizes[name]
        with em.for_range(n, name="wg") as i:
            total = em.ld("GRADS", offset, i)
            for part in range(1, L.nparts):
                total = em.e.add(total, em.ld("GRADS", part * L.PG + offset, i))
            em.st(total, name, i)


for _op in GATES:
    lowering("llvm", f"{_op}_grad")(_lower(_op, grad=True, emitter=GradEmitter, prepare=_prepare,
                                           weight_gradients=_weight_gradients))
