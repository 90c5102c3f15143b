"""CUDA templates of the recurrent ops' gradients (``<op>_grad``): backprop through time.

The launches (see rnn.py for the forward ones and what they share: the Plan, the workspace,
the blocks over batch rows, the C spellings of every buffer):

  1. ``_project``: the input projection, as forward;
  2. ``_record``: the forward recurrence, keeping every step's states (HS, CS) and step
     records (A: gate pre-activations, and c_new or the candidate's recurrent part);
  3. ``_backward``: one persistent launch with the forward's blocks, the steps in reverse.
     Per step, region 1 computes each element's gate derivatives (input side into XP at
     row b*T + t, recurrent side into DR and the block's shared copy), a barrier, then
     region 2 adds dgates @ recurrent_kernel^T (the kernel staged TRANSPOSED in shared
     memory when it fits: consecutive threads read consecutive words) into dh; a barrier
     before the next step overwrites the shared copy. GRU with reset_after=False has a
     region between: the candidate's d(r * h) = d ah @ U_h^T needs d ah of every unit
     before the reset gate's derivative. dh and dc accumulate in the dh0/dc0 outputs
     (each element's own), as the CPU's kernel does;
  4. ``_dx``, ``_dkernel``, ``_drecurrent``: tiled GEMMs over all steps (tiles.Gemm):
     dx = dgates @ kernel^T (one k segment per gate, each times its dropout mask, when the
     gates have their own masks), d_kernel = (x * mask)^T @ dgates and d_recurrent_kernel =
     sources^T @ dgates, each with a row of ones under it for the bias gradients (the input
     bias; with reset_after the recurrent bias). Every gradient element is computed by ONE
     thread, which sums over all samples and steps in a fixed order: deterministic, no
     atomics.
"""
from ...ir.registry import lowering
from ...ops.rnn import GATES
from .rnn import RecurrentKernels, recurrent_kernel
from .tiles import Code, Gemm, function


class GradientKernels(RecurrentKernels):
    """Writes the launches of an ``<op>_grad`` node."""

    def functions(self):
        return [self.gemm("project", self.project()), self.recurrence("record", self.forward()),
                self.recurrence("backward", self.backward()), self.gemm("dx", self.dx()),
                self.gemm("dkernel", self.dkernel()), self.gemm("drecurrent", self.drecurrent())]

    def w_t(self, col, k):
        """recurrent_kernel[k, col] in the backward recurrence (staged transposed)."""
        if self.p.backward_weights_shared:
            return f"w_rec_t[({col}) * {self.p.U} + {k}]"
        return f"{self.a('recurrent_kernel')}[{k} * {self.p.GU} + {col}]"

    def dr(self, r, col):
        """The recurrent-side gate derivatives of step s, row0 + r, column col (backward)."""
        p = self.p
        if p.backward_states_shared:
            return f"dr_buf[{r} * {p.GU} + {col}]"
        return self.region("DR", f"((long long)s * {p.B} + row0 + {r}) * {p.GU} + {col}")

    def backward(self):
        p, c = self.p, Code()
        c.depth = 1
        U, GU = p.U, p.GU
        if p.backward_states_shared:
            c(f"KC_SHARED(float, dr_buf, [{p.rows * GU}]);")
        if p.backward_weights_shared:
            c(f"KC_SHARED(float, w_rec_t, [{GU * U}]);")
        self.head(c)
        with c.block("KC_THREADS"):
            if p.backward_weights_shared:
                c(f"for (int e = threadIdx.x; e < {U * GU}; e += {p.threads}) "
                  f"w_rec_t[e % {GU} * {U} + e / {GU}] = {self.a('recurrent_kernel')}[e];")
            with self.each_element(c):
                c(f"out4[b * {U} + j] = {self.a('d_hT')}[b * {U} + j];")
                if p.lstm:
                    c(f"out5[b * {U} + j] = {self.a('d_cT')}[b * {U} + j];")
                if p.carry:
                    c(f"{self.region('CARRY', f'b * {U} + j')} = 0.0f;")
        # No barrier: the rest is each element's own, and the first region of a step reads no
        # recurrent kernel (its barrier orders the staging before the first read).
        with c.block(f"for (int s = {p.T - 1}; s >= 0; --s)"):
            self.step_time(c)
            step = self.gru_nra_backward if p.gru_nra else getattr(self, f"{p.op}_backward")
            with c.block("KC_THREADS"):
                with self.each_element(c):
                    step(c)
            c("KC_SYNC;")
            if p.gru_nra:
                with c.block("KC_THREADS"):
                    with self.each_element(c):
                        self.gru_nra_reset_backward(c)
                c("KC_SYNC;")
            with c.block("KC_THREADS"):
                with self.each_element(c):
                    self.dh_prev(c)
            c("KC_SYNC;")
        return function(f"{self.name}_backward", self.buffers, c.text())

    def dh(self):
        return f"out4[b * {self.p.U} + j]"

    def dc(self):
        return f"out5[b * {self.p.U} + j]"

    def incoming(self, c):
        """dnh (and dnc): the cotangents entering this step's cell; kept_h (kept_c): what a
        masked sample carries past it."""
        p, U = self.p, self.p.U
        position = "t" if p.attrs["output_in_time_order"] else "s"
        c(f"const float dh_old = {self.dh()};",
          f"const float d_out = {self.a('d_seq')}[(b * {p.T} + {position}) * {U} + j]"
          + (f" + {self.region('CARRY', f'b * {U} + j')};" if p.carry else ";"))
        if p.lstm:
            c(f"const float dc_old = {self.dc()};")
        if not p.attrs["masked"]:
            c("const float dnh = dh_old + d_out, kept_h = 0.0f;")
            if p.lstm:
                c("const float dnc = dc_old, kept_c = 0.0f;")
            return
        c(f"const bool m = {self.a('mask')}[b * {p.T} + t];")
        if p.carry:
            c(f"{self.region('CARRY', f'b * {U} + j')} = m ? 0.0f : d_out;")
        c("const float dnh = m ? dh_old + d_out : 0.0f, kept_h = m ? 0.0f : dh_old;")
        if p.lstm:
            c("const float dnc = m ? dc_old : 0.0f, kept_c = m ? 0.0f : dc_old;")

    def store_da(self, c, g, dx_value, dr_value=None, k="j"):
        """Gate g's derivative: input side into XP (row b*T + t), recurrent side into DR (and
        the block's shared copy)."""
        p = self.p
        c(f"const float da{g} = {dx_value};")
        if dr_value is not None:
            c(f"const float dr{g} = {dr_value};")
        dr_value = f"dr{g}" if dr_value is not None else f"da{g}"
        c(f"{self.xp(g, k)} = da{g};",
          f"{self.region('DR', f'((long long)s * {p.B} + b) * {p.GU} + {g * p.U} + {k}')} = {dr_value};")
        if p.backward_states_shared:
            c(f"{self.dr('r', f'{g * p.U} + {k}')} = {dr_value};")

    def simple_rnn_backward(self, c):
        self.incoming(c)
        self.store_da(c, 0, self.fn('act_grad', self.record(0, 'j'), 'dnh'))
        c(f"{self.dh()} = kept_h;")

    def lstm_backward(self, c):
        U = self.p.U
        self.incoming(c)
        for g in range(4):
            c(f"const float a{g} = {self.record(g * U, 'j')};")
        c(f"const float c_new = {self.record(4 * U, 'j')};",
          f"const float i_gate = {self.fn('ract', 'a0')}, f_gate = {self.fn('ract', 'a1')};",
          f"const float cc = {self.fn('act', 'a2')}, o_gate = {self.fn('ract', 'a3')};",
          f"const float d_o = dnh * {self.fn('act', 'c_new')};",
          f"const float dc = dnc + {self.fn('act_grad', 'c_new', 'dnh * o_gate')};")
        self.store_da(c, 0, self.fn("ract_grad", "a0", "dc * cc"))
        self.store_da(c, 1, self.fn("ract_grad", "a1", f"dc * {self.cs('s', 'j')}"))
        self.store_da(c, 2, self.fn("act_grad", "a2", "dc * i_gate"))
        self.store_da(c, 3, self.fn("ract_grad", "a3", "d_o"))
        c(f"{self.dc()} = dc * f_gate + kept_c;", f"{self.dh()} = kept_h;")

    def gru_backward(self, c):  # reset_after
        U = self.p.U
        self.incoming(c)
        c(f"const float az = {self.record(0, 'j')}, ar = {self.record(U, 'j')};",
          f"const float rh = {self.record(2 * U, 'j')}, ah = {self.record(3 * U, 'j')};",
          f"const float h = {self.hs('s', 'r', 'j')};",
          f"const float z = {self.fn('ract', 'az')}, r_gate = {self.fn('ract', 'ar')};",
          f"const float hh = {self.fn('act', 'ah')};",
          f"const float dah = {self.fn('act_grad', 'ah', 'dnh * (1.0f - z)')};")
        self.store_da(c, 0, self.fn("ract_grad", "az", "dnh * (h - hh)"))
        self.store_da(c, 1, self.fn("ract_grad", "ar", "dah * rh"))
        self.store_da(c, 2, "dah", "dah * r_gate")
        c(f"{self.dh()} = kept_h + dnh * z;")

    def gru_nra_backward(self, c):  # reset_after=False, first half: the z and candidate gates
        U = self.p.U
        self.incoming(c)
        c(f"const float az = {self.record(0, 'j')}, ah = {self.record(2 * U, 'j')};",
          f"const float h = {self.hs('s', 'r', 'j')};",
          f"const float z = {self.fn('ract', 'az')}, hh = {self.fn('act', 'ah')};")
        self.store_da(c, 0, self.fn("ract_grad", "az", "dnh * (h - hh)"))
        self.store_da(c, 2, self.fn("act_grad", "ah", "dnh * (1.0f - z)"))
        c(f"{self.dh()} = kept_h + dnh * z;")

    def gru_nra_reset_backward(self, c):
        """d(r * h_dropped) = d ah @ U_h^T for unit j of every row, then the reset gate."""
        p, U = self.p, self.p.U
        c("float dhr = 0.0f;",
          f"for (int i = 0; i < {U}; ++i) dhr += {self.dr('r', f'{2 * U} + i')} * {self.w_t(f'{2 * U} + i', 'j')};",
          f"const float ar = {self.record(U, 'j')};",
          f"const float r_gate = {self.fn('ract', 'ar')};")
        if p.D2:
            c(f"const float mk = {self.rmask(2, 'j')};",
              f"const float h = {self.hs('s', 'r', 'j')} * mk, rm = r_gate * mk;")
        else:
            c(f"const float h = {self.hs('s', 'r', 'j')}, rm = r_gate;")
        self.store_da(c, 1, self.fn("ract_grad", "ar", "dhr * h"))
        c(f"{self.dh()} += dhr * rm;")

    def dh_prev(self, c):
        """dh0 (the cotangent of h before step s) += dgates @ recurrent_kernel^T, each gate's
        part times its recurrent dropout mask (the candidate of reset_after=False is done)."""
        p, U = self.p, self.p.U
        gates = [0, 1] if p.gru_nra else list(range(p.G))
        groups = [(gates[0] * U, len(gates) * U, None)] if not p.D2 else [(g * U, U, g) for g in gates]
        c("float sum = 0.0f;")
        for col0, count, g in groups:
            product = f"{self.dr('r', 'i')} * {self.w_t('i', 'j')}"
            if g is None:
                c(f"for (int i = {col0}; i < {col0 + count}; ++i) sum += {product};")
                continue
            with c.block(""):
                c("float part = 0.0f;",
                  f"for (int i = {col0}; i < {col0 + count}; ++i) part += {product};",
                  f"sum += part * {self.rmask(g, 'j')};")
        c(f"{self.dh()} += sum;")


    # -- the weight gradients
    def dx(self):
        """dx = sum over gates of (dgates_g @ kernel_g^T) * dropout_mask[g]: one k segment per
        gate when each has its own mask."""
        p = self.p
        per_gate = p.D > 1
        post = None
        if p.D:
            post = self.mask_of("dropout_mask", f"kseg % {p.D}", p.F, "col", b=f"row / {p.T}")
        return Gemm(p.B * p.T, 1, p.F, p.G if per_gate else 1, p.U if per_gate else p.GU,
                    self.region("XP", f"row * {p.GU} + k"), f"{self.a('kernel')}[(long long)col * {p.GU} + k]",
                    f"out0[row * {p.F} + col] = value;", post=post, b_k_fastest=True)

    def dkernel(self):
        """d_kernel = (x * dropout_mask)^T @ dgates; the row of ones under it gives d_bias."""
        p = self.p
        x = f"{self.a('x')}[(long long)k * {p.F} + row]"
        if p.D:
            x += " * " + self.mask_of("dropout_mask", f"cseg % {p.D}", p.F, "row", b=f"k / {p.T}")
        return Gemm(p.F + 1, p.G, p.U, 1, p.B * p.T, f"(row < {p.F} ? {x} : 1.0f)",
                    self.region("XP", f"(long long)k * {p.GU} + col"),
                    f"if (row < {p.F}) out1[row * {p.GU} + col] = value; "
                    f"else out3[col] = value;", a_rows_fastest=True)

    def drecurrent(self):
        """d_recurrent_kernel = sources^T @ dgates over all steps (the source of gate g: h
        before the step, times its recurrent mask, times r for the candidate of reset_after=
        False); with reset_after a row of ones under it gives the recurrent bias's gradient."""
        p = self.p
        src = self.region("HS", f"(long long)k * {p.U} + row")
        if p.D2:
            src += " * " + self.mask_of("recurrent_dropout_mask", f"cseg % {p.D2}", p.U, "row", b=f"k % {p.B}")
        if p.gru_nra:
            r = self.fn("ract", self.region("A", f"(long long)k * {p.GA} + {p.U} + row"))
            src += f" * (cseg == 2 ? {r} : 1.0f)"
        store = f"out2[row * {p.GU} + col] = value;"
        if p.gru_ra:
            store = f"if (row < {p.U}) {store} else out3[{p.GU} + col] = value;"
        return Gemm(p.U + (1 if p.gru_ra else 0), p.G, p.U, 1, p.T * p.B, f"(row < {p.U} ? {src} : 1.0f)",
                    self.region("DR", f"(long long)k * {p.GU} + col"), store, a_rows_fastest=True)


def lower(ctx, **plan_options):
    """The CUDA template of ``simple_rnn_grad``, ``lstm_grad`` and ``gru_grad``."""
    return recurrent_kernel(ctx, GradientKernels, **plan_options)


for _op in GATES:
    lowering("cuda", f"{_op}_grad")(lower)
