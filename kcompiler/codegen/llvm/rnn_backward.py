"""Gradient kernels of the recurrent ops (``<op>_grad``): backprop through time.

The forward loop (rnn.Emitter.forward_loop) runs again, keeping every step's gate
pre-activations and states in a workspace (T x B x ...), then the loop walks the steps
backwards: per step the element-wise gate derivatives and one GEMM for
dh_{t-1} = dgates @ recurrent_kernel^T. The weight gradients are big GEMMs over all
steps at the end: d_kernel = x^T @ dgates, d_recurrent_kernel = h_prev^T @ dgates,
dx = dgates @ kernel^T.

The layout, the workspace regions (XP, A, HS/CS, SRC, DR, ...), the parts over batch rows
and the kernel skeleton are shared with the forward kernel: see rnn.
"""
from ...ir.registry import lowering
from ...ops.rnn import GATES
from .irutil import c64
from .rnn import Emitter, _lin, _lower, unit_vectors
from .rows_product import Shape


class GradEmitter(Emitter):
    """An Emitter that also emits the backward sweep of its part of the batch rows."""

    # -- backward ----------------------------------------------------------------------------
    def backward_loop(self):
        """Backprop through time over this part's rows; leaves dh0/dc0 in the outputs, the
        input-side gate derivatives in XP (rows b*T + t) and the recurrent-side ones in DR."""
        L, b, e = self.L, self.b, self.e
        U, GU = L.U, L.GU
        # dH / dC live in the dh0 / dc0 outputs: the cotangent of the state after each step.
        self.each_unit(lambda bi, j, m: self.st(self.ld("d_hT", (bi, U), j), "dh0", (bi, U), j), name="dh")
        if L.lstm:
            self.each_unit(lambda bi, j, m: self.st(self.ld("d_cT", (bi, U), j), "dc0", (bi, U), j), name="dc")
        if L.carry:
            self.each_unit(lambda bi, j, m: self.st(self.zero(), "CARRY", (bi, U), j), name="z")
        with self.for_range(L.T, name="r") as i:
            s = b.sub(c64(L.T - 1), i)
            t = self.step_time(s)
            a_off = _lin(b, (s, L.B * L.GA))
            dr_off = _lin(b, (s, L.B * GU))
            h_prev = self.state_view("h", s)
            a_ld = lambda bi, col, j: self.ld("A", a_off, (bi, L.GA), col, j)  # noqa: E731

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
                self.st(dx_value, "XP", (bi, L.T * GU), (t, GU), g * U, j)
                self.st(dx_value if dr_value is None else dr_value, "DR", dr_off, (bi, GU), g * U, j)

            if L.op == "simple_rnn":
                def body(bi, j, m):
                    dnh, _, kept_h, _ = incoming(bi, j, m)
                    store_da(bi, j, 0, L.dact(e, a_ld(bi, 0, j), dnh))
                    self.st(kept_h, "dh0", (bi, U), j)
                self.each_unit(body, t)
            elif L.lstm:
                c_prev = self.state_view("c", s)

                def body(bi, j, m):
                    dnh, dnc, kept_h, kept_c = incoming(bi, j, m)
                    a = [a_ld(bi, g * U, j) for g in range(4)]
                    c_new = a_ld(bi, L.col_c_new, j)
                    i, f, cc, o = L.ract(e, a[0]), L.ract(e, a[1]), L.act(e, a[2]), L.ract(e, a[3])
                    do = e.mul(dnh, L.act(e, c_new))
                    dc = e.add(dnc, L.dact(e, c_new, e.mul(dnh, o)))
                    store_da(bi, j, 0, L.dract(e, a[0], e.mul(dc, cc)))
                    store_da(bi, j, 1, L.dract(e, a[1], e.mul(dc, self.load(self.view_at(c_prev, bi, j)))))
                    store_da(bi, j, 2, L.dact(e, a[2], e.mul(dc, i)))
                    store_da(bi, j, 3, L.dract(e, a[3], do))
                    dc_prev = e.mul(dc, f)
                    self.st(dc_prev if m is None else e.add(dc_prev, kept_c), "dc0", (bi, U), j)
                    self.st(kept_h, "dh0", (bi, U), j)
                self.each_unit(body, t)
            elif L.gru_ra:
                def body(bi, j, m):
                    dnh, _, kept_h, _ = incoming(bi, j, m)
                    az, ar, rh, ah = (a_ld(bi, col, j) for col in (0, U, 2 * U, L.col_ah))
                    h = self.load(self.view_at(h_prev, bi, j))
                    z, r, hh = L.ract(e, az), L.ract(e, ar), L.act(e, ah)
                    dah = L.dact(e, ah, e.mul(dnh, e.sub(e.c(1, z), z)))
                    dr = e.mul(dah, rh)
                    store_da(bi, j, 0, L.dract(e, az, e.mul(dnh, e.sub(h, hh))))
                    store_da(bi, j, 1, L.dract(e, ar, dr))
                    store_da(bi, j, 2, dah, e.mul(dah, r))
                    self.st(e.add(kept_h, e.mul(dnh, z)), "dh0", (bi, U), j)
                self.each_unit(body, t)
            else:
                r_key = L.rec_groups[-1][2]

                def zh(bi, j, m):
                    dnh, _, kept_h, _ = incoming(bi, j, m)
                    az, ah = a_ld(bi, 0, j), a_ld(bi, 2 * U, j)
                    h = self.load(self.view_at(h_prev, bi, j))
                    z, hh = L.ract(e, az), L.act(e, ah)
                    store_da(bi, j, 0, L.dract(e, az, e.mul(dnh, e.sub(h, hh))))
                    store_da(bi, j, 2, L.dact(e, ah, e.mul(dnh, e.sub(e.c(1, z), z))))
                    self.st(e.add(kept_h, e.mul(dnh, z)), "dh0", (bi, U), j)
                self.each_unit(zh, t, name="zh")
                # d(r * h_dropped) = d ah @ U_h^T
                self.transposed_product(2, 1, dr_off, ("TMP", (self.b0, U)))

                def reset(bi, j, m):
                    ar = a_ld(bi, U, j)
                    r = L.ract(e, ar)
                    h = self.load(self.view_at(h_prev, bi, j))
                    rm = r
                    if r_key[0] is not None:
                        mask = self.dropout("recurrent_dropout_mask", r_key[0], bi, j)
                        h, rm = e.mul(h, mask), e.mul(r, mask)
                    dhr = self.ld("TMP", (bi, U), j)
                    store_da(bi, j, 1, L.dract(e, ar, e.mul(dhr, h)))
                    self.st(e.add(self.ld("dh0", (bi, U), j), e.mul(dhr, rm)), "dh0", (bi, U), j)
                self.each_unit(reset, name="rs")
            self.recurrent_backward_gemms(dr_off)

    def transposed_product(self, g0, n, dr_off, C, accumulate=False):
        """C (+)= dgates[:, gates g0..g0+n) @ recurrent_kernel[:, gates]^T over this part's rows,
        from the packed RT (rows_product.py)."""
        L = self.L
        shape = Shape(n * L.U, L.GU, L.Up, L.U, L.W, *unit_vectors(L, [0], 0, 0), accumulate=accumulate)
        self.product(shape, ("DR", dr_off, (self.b0, L.GU), g0 * L.U), ("RT", (g0 * L.U, L.Up)), C)

    def recurrent_backward_gemms(self, dr_off):
        """dh_prev += sum over gate groups of (dgates @ recurrent_kernel^T) * recurrent mask."""
        L, e = self.L, self.e
        U = L.U
        for g0, n, (d, times_r) in L.rec_groups:
            if times_r:
                continue  # done with the candidate above
            if d is None:
                self.transposed_product(g0, n, dr_off, ("dh0", (self.b0, U)), accumulate=True)
                continue
            self.transposed_product(g0, n, dr_off, ("TMP", (self.b0, U)))

            def add(bi, j, m, d=d):
                v = e.mul(self.ld("TMP", (bi, U), j), self.dropout("recurrent_dropout_mask", d, bi, j))
                self.st(e.add(self.ld("dh0", (bi, U), j), v), "dh0", (bi, U), j)
            self.each_unit(add, name="rm")

    def input_backward(self):
        """dx rows of this part = sum over input groups of (dgates @ kernel^T) * dropout mask."""
        L, b, e = self.L, self.b, self.e
        F, GU = L.F, L.GU
        nrows = b.mul(self.rows, c64(L.T))
        for k, (g0, n, d) in enumerate(L.in_groups):
            dest = "dx" if k == 0 else "DX_PART"
            self.gemm(False, True, nrows, F, n * L.U, ("XP", (self.b0, L.T * GU), g0 * L.U), GU,
                      ("kernel", g0 * L.U), GU, (dest, (self.b0, L.T * F)), F)
            if d is None:
                continue

            def row(bi, dest=dest, d=d):
                with self.for_range(L.T, name="dt") as t, self.for_range(F, name="df") as f:
                    v = e.mul(self.ld(dest, (bi, L.T * F), (t, F), f), self.dropout("dropout_mask", d, bi, f))
                    if dest != "dx":
                        v = e.add(self.ld("dx", (bi, L.T * F), (t, F), f), v)
                    self.st(v, "dx", (bi, L.T * F), (t, F), f)
            self.each_row(row, name="db")


# ---- weight gradients: once the parts are done --------------------------------------------------

def _weight_gradients(k, L, p):
    """d_kernel, d_recurrent_kernel, d_bias: sums over every sample and step, once the parts are done."""
    em = Emitter(k.b, L, p, 0, L.B, in_part=False)
    e = em.e
    U, GU, F = L.U, L.GU, L.F
    for g0, n, d in L.in_groups:
        src = "x"
        if d is not None:
            if len(L.in_groups) > 1:  # XD holds the last gate's masked x: remake it for this gate
                em.masked_x("XD", d)
            src = "XD"
        em.gemm(True, False, F, n * U, L.B * L.T, (src, 0), F, ("XP", g0 * U), GU, ("d_kernel", g0 * U), GU)
    for g0, n, key in L.rec_groups:
        if key == (None, False):
            A, lda = ("HS", 0), U
        else:
            A, lda = ("SRC", L.src_slot[key] * U), L.NS * U
        em.gemm(True, False, U, n * U, L.T * L.B, A, lda, ("DR", g0 * U), GU, ("d_recurrent_kernel", g0 * U), GU)
    n_bias = 2 * GU if L.gru_ra else GU
    with em.for_range(n_bias, name="bz") as c:
        em.st(em.zero(), "d_bias", c)
    for source, rows, offset in [("XP", L.B * L.T, 0)] + ([("DR", L.T * L.B, GU)] if L.gru_ra else []):
        with em.for_range(rows, name="br") as r, em.for_range(GU, name="bc") as c:
            v = e.add(em.ld("d_bias", offset, c), em.ld(source, (r, GU), c))
            em.st(v, "d_bias", offset, c)


for _op in GATES:
    lowering("llvm", f"{_op}_grad")(_lower(_op, grad=True, emitter=GradEmitter,
                                           weight_gradients=_weight_gradients))
