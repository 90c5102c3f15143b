"""CUDA templates of the recurrent ops (``simple_rnn``, ``lstm``, ``gru`` and their ``_grad``):
the semantics of kcompiler/ops/rnn.py (gate order, masks, dropout masks, go_backwards, output
order, reset_after), computed as the CPU kernels compute them (codegen/llvm/rnn.py and
rnn_backward.py), as a few launches:

forward (``<op>``)
  1. ``_project``: XP = input bias + (x * dropout_mask) @ kernel for ALL steps at once, a
     tiled GEMM (TILE x TILE outputs per block, operands staged in shared memory);
  2. ``_forward``: the recurrence, ONE persistent launch: each block owns ``rows`` batch
     rows and loops over the time steps inside; per step its threads compute, for each
     (row, unit) element, the gate dot products h_{t-1} @ recurrent_kernel (h from shared
     memory, the recurrent kernel from shared memory when it fits), the gate math and the
     state update; new states go to the other half of a double buffer, so a step needs one
     barrier (two for GRU with reset_after=False, whose candidate reads r * h of every
     unit).
gradient (``<op>_grad``, which recomputes the forward pass as the CPU's does)
  1. ``_project`` as above;
  2. ``_record``: the forward recurrence, keeping every step's states (HS, CS) and gate
     pre-activations (A) in the workspace;
  3. ``_backward``: backprop through time, one persistent launch with the same blocks,
     the steps in reverse; per step the gate derivatives of each element (input side into
     XP, recurrent side into DR and shared memory), a barrier, then
     dh_{t-1} += dgates @ recurrent_kernel^T (the kernel staged transposed in shared
     memory when it fits); dh and dc accumulate in the dh0/dc0 outputs;
  4. ``_dx``, ``_dkernel``, ``_drecurrent``: tiled GEMMs over all steps: dx = dgates @
     kernel^T (times the dropout mask of each gate), d_kernel = (x * mask)^T @ dgates,
     d_recurrent_kernel = h_prev^T @ dgates; the bias gradients are one extra row of the
     last two (a row of ones). Every gradient element is computed by ONE thread, which
     sums over all samples and steps in a fixed order: deterministic, no atomics.

Scratch memory: a template kernel's buffers are the node's (``TemplateContext.buffers``:
out0.., in0..) followed by ONE scratch buffer ``ws`` (float32, ``Plan.ws_floats``
elements): the runtime allocates it with the step, its contents undefined on entry (the
tests fill it with NaN). Layout in ``Plan.regions``.

Shared memory: static, at most ``SHARED_BUDGET`` bytes (ptxas rejects more than 48 KiB).
The per-step states of a block go to shared memory first, then the recurrent kernel; what
does not fit is read from global memory (the workspace or the operand) instead: slower,
as correct. Written in the barrier-split form of prelude.h (KC_THREADS regions between
KC_SYNC, index guards as KC_GUARD), so the same text runs on the CPU emulation; values a
thread keeps across barriers live in buffers indexed by its element (the same thread owns
the same elements in every region), never in plain locals.

Only float32.
"""
from contextlib import contextmanager
from dataclasses import dataclass

from ...errors import UnsupportedError
from ...ir.registry import lowering
from ...ops.rnn import ACTIVATIONS, GATES, full_attrs, operand_names
from ...schedule.kernel import Buffer, Const, Store, Var, call
from .render import THREADS_PER_BLOCK, WARP, CudaKernel, Launch, device_function, emulation_entry, parameters

SHARED_BUDGET = 47 * 1024   # bytes of static shared memory one kernel may declare (ptxas: 48 KiB)
TILE = 16                   # the GEMMs: TILE x TILE outputs per block, one per thread
SM_COUNT = 132              # an H200's multiprocessors: batch rows are packed into fewer blocks
                            # only when there are more of them than this
ALIGN = 32                  # workspace regions start at multiples of 32 floats (128 bytes)


@dataclass
class Plan:
    """The static facts of one recurrent node: sizes, operand names, blocks and threads of the
    recurrence, what lives in shared memory, and the workspace regions (float offsets)."""
    op: str
    grad: bool
    attrs: dict
    B: int
    T: int
    F: int
    U: int
    G: int
    arg: dict               # operand name -> C name (in0..), cotangents d_seq, d_hT, d_cT
    D: int                  # gates sharing one dropout mask (0: none)
    D2: int                 # the same for the recurrent dropout mask
    rows: int               # batch rows per block of the recurrence
    threads: int
    shared_budget: int

    @property
    def GU(self):
        return self.G * self.U

    @property
    def lstm(self):
        return self.op == "lstm"

    @property
    def gru_ra(self):
        return self.op == "gru" and self.attrs["reset_after"]

    @property
    def gru_nra(self):
        return self.op == "gru" and not self.attrs["reset_after"]

    @property
    def carry(self):
        """Masked steps repeat the previous output (instead of writing zeros)."""
        return self.attrs["masked"] and not self.attrs["zero_output_for_mask"]

    @property
    def GA(self):
        """Columns of a step's record in A: the gate pre-activations, and c_new (lstm) or the
        candidate's recurrent part rh (gru reset_after)."""
        if self.lstm:
            return 5 * self.U
        return 4 * self.U if self.gru_ra else self.GU

    @property
    def blocks(self):
        return -(-self.B // self.rows)

    def fits(self, floats):
        return 4 * floats <= self.shared_budget

    # What the recurrences keep in shared memory (decided per kernel: states first).
    @property
    def forward_state_floats(self):
        return (4 if self.gru_nra else 2) * self.rows * self.U

    @property
    def forward_states_shared(self):
        return self.fits(self.forward_state_floats)

    @property
    def forward_weights_shared(self):
        used = self.forward_state_floats if self.forward_states_shared else 0
        return self.fits(used + self.U * self.GU)

    @property
    def backward_states_shared(self):
        return self.fits(self.rows * self.GU)

    @property
    def backward_weights_shared(self):
        used = self.rows * self.GU if self.backward_states_shared else 0
        return self.fits(used + self.U * self.GU)

    @property
    def regions(self):
        """Workspace region -> (offset, floats)."""
        B, T, U, GU = self.B, self.T, self.U, self.GU
        sizes = {"XP": B * T * GU}
        if self.grad:
            sizes.update(A=T * B * self.GA, HS=(T + 1) * B * U, DR=T * B * GU)
            if self.lstm:
                sizes["CS"] = (T + 1) * B * U
            if self.carry:
                sizes["CARRY"] = B * U
        elif not self.forward_states_shared:
            sizes["HB"] = 2 * B * U          # the double buffer of h
        if self.gru_nra and not self.forward_states_shared:
            sizes.update(ZB=B * U, RB=B * U)  # z and r * h of the step
        out, offset = {}, 0
        for name, n in sizes.items():
            out[name] = (offset, n)
            offset += -(-n // ALIGN) * ALIGN
        return out

    @property
    def ws_floats(self):
        return sum(-(-n // ALIGN) * ALIGN for _, n in self.regions.values())


def plan(op, in_types, attrs, grad, shared_budget=SHARED_BUDGET, max_threads=THREADS_PER_BLOCK):
    """The Plan of an ``op`` (``<op>_grad`` with ``grad``) node; ``shared_budget`` and
    ``max_threads`` let tests force the fallbacks (states and weights in global memory, more
    elements than threads)."""
    attrs = full_attrs(attrs)
    names = operand_names(op, attrs)
    for t in in_types:
        if t.dtype not in ("float32", "bool"):
            raise UnsupportedError(f"{op}{'_grad' if grad else ''} on CUDA: float32 only, got an operand of "
                                   f"{t.dtype} {t.shape}")
    arg = {name: f"in{i}" for i, name in enumerate(names)}
    if grad:
        arg.update(zip(("d_seq", "d_hT", "d_cT"), (f"in{len(names) + k}" for k in range(3))))
    B, T, F = in_types[0].shape
    U = attrs["units"]
    D = in_types[names.index("dropout_mask")].shape[0] if attrs["dropout_mask"] else 0
    D2 = in_types[names.index("recurrent_dropout_mask")].shape[0] if attrs["recurrent_dropout_mask"] else 0
    # Rows per block: at least a warp of elements, more when there are more rows than
    # multiprocessors, at most max_threads elements (one per thread).
    rows = max(1, min(B, max(1, max_threads // U), max(-(-WARP // U), -(-B // SM_COUNT))))
    threads = min(max_threads, -(-rows * U // WARP) * WARP)
    return Plan(op, grad, attrs, B, T, F, U, GATES[op], arg, D, D2, rows, threads, shared_budget)


# ---- the activations ----------------------------------------------------------------------------

def activation_functions(prefix, attrs):
    """__device__ functions ``<prefix>_act(x)``, ``<prefix>_act_grad(x, dy)`` (dy * f'(x)) and
    the same for ``_ract`` (the recurrent activation), from the neutral definitions of the ops
    (schedule/scalar.py), as the CPU's kernels compute them."""
    out = []
    for short, key in (("act", "activation"), ("ract", "recurrent_activation")):
        spec = ACTIVATIONS[attrs[key]]
        x, dy = Var("x", "float32"), Var("dy", "float32")
        for suffix, args, params, identity in (("", (x,), "float x", "x"), ("_grad", (x, dy), "float x, float dy", "dy")):
            name = f"{prefix}_{short}{suffix}"
            if spec is None:  # linear
                out.append(f"KC_DEVICE float {name}({params}) {{ return {identity}; }}\n")
                continue
            op, op_attrs = spec
            value = call(op + suffix, *args, **op_attrs)
            out.append(device_function(f"{name}_into", f"{params}, float* __restrict__ result",
                                       [Store("result", Const(0, "int64"), value)]))
            names = ", ".join(a.name for a in args)
            out.append(f"KC_DEVICE float {name}({params}) {{ float r; {name}_into({names}, &r); return r; }}\n")
    return "\n".join(out)


# ---- code -----------------------------------------------------------------------------------------

class Code:
    """Lines of C with indentation: ``with code.block("for (...)"):``."""

    def __init__(self):
        self.lines, self.depth = [], 0

    def __call__(self, *lines):
        for line in lines:
            self.lines.append("    " * self.depth + line)

    @contextmanager
    def block(self, head):
        self(head + " {")
        self.depth += 1
        yield
        self.depth -= 1
        self("}")

    def text(self):
        return "\n".join(self.lines)


def function(name, buffers, body):
    """An ``extern "C" __global__`` function with the kernel's parameters, in the barrier-split
    form, and its emulation entry."""
    return "\n".join([f'extern "C" __global__ void {name}({parameters(buffers)}) {{', body, "}",
                      emulation_entry(name, buffers, barriers=True)])


# ---- the tiled GEMM -------------------------------------------------------------------------------

@dataclass
class Gemm:
    """out[row, col] = sum over k segments ks of post(row, col, ks) * sum_k A(row, k) B(k, col),
    rows in [0, M); columns in ``col_segments`` segments of ``width`` (``cseg`` is a column's
    segment: a block's columns never straddle two, so A may depend on it, e.g. a gate's
    dropout mask); k in ``k_segments`` of ``depth``. ``a(row, k)``, ``b(k, col)``, ``post``
    are C expressions (strings) over the C variables ``row`` (long long), ``k`` and ``col``
    (global, int), ``cseg`` and ``kseg``; ``store`` a C statement over ``row``, ``col`` and
    ``value``. ``a_rows_fastest``/``b_k_fastest``: the operand is contiguous along rows / k
    (the tile is then loaded with consecutive threads along that index: coalesced)."""
    M: int
    col_segments: int
    width: int
    k_segments: int
    depth: int
    a: str
    b: str
    store: str
    post: str = None
    a_rows_fastest: bool = False
    b_k_fastest: bool = False

    @property
    def col_tiles(self):
        return -(-self.width // TILE)

    def launch(self, name):
        return Launch(name, (-(-self.M // TILE), self.col_segments * self.col_tiles, 1), (TILE, TILE, 1),
                      barriers=True)

    def source(self, name, buffers):
        c = Code()
        c.depth = 1
        c(f"KC_SHARED(float, a_tile, [{TILE}][{TILE + 1}]);",
          f"KC_SHARED(float, b_tile, [{TILE}][{TILE + 1}]);",
          "KC_PER_THREAD(float, acc, [2]);  // [0]: this k segment's sum, [1]: the total",
          f"const long long row0 = (long long)blockIdx.x * {TILE};",
          f"const int cseg = blockIdx.y / {self.col_tiles}, col_in0 = blockIdx.y % {self.col_tiles} * {TILE};")
        c("KC_THREADS { KC_MINE(acc)[1] = 0.0f; }")
        with c.block(f"for (int kseg = 0; kseg < {self.k_segments}; ++kseg)"):
            c("KC_THREADS { KC_MINE(acc)[0] = 0.0f; }")
            with c.block(f"for (int k0 = 0; k0 < {self.depth}; k0 += {TILE})"):
                with c.block("KC_THREADS"):
                    i, kk = ("threadIdx.x", "threadIdx.y") if self.a_rows_fastest else ("threadIdx.y", "threadIdx.x")
                    c(f"const long long row = row0 + {i};",
                      f"const int k = kseg * {self.depth} + k0 + {kk};",
                      f"a_tile[{i}][{kk}] = KC_GUARD(row < {self.M} && k0 + {kk} < {self.depth}) ? {self.a} : 0.0f;")
                    kk, n = ("threadIdx.x", "threadIdx.y") if self.b_k_fastest else ("threadIdx.y", "threadIdx.x")
                    with c.block(""):
                        c(f"const int k = kseg * {self.depth} + k0 + {kk};",
                          f"const int col = cseg * {self.width} + col_in0 + {n};",
                          f"b_tile[{kk}][{n}] = KC_GUARD(k0 + {kk} < {self.depth} && col_in0 + {n} < {self.width})"
                          f" ? {self.b} : 0.0f;")
                c("KC_SYNC;")
                with c.block("KC_THREADS"):
                    c("float sum = KC_MINE(acc)[0];",
                      f"for (int kk = 0; kk < {TILE}; ++kk) sum += a_tile[threadIdx.y][kk] * b_tile[kk][threadIdx.x];",
                      "KC_MINE(acc)[0] = sum;")
                c("KC_SYNC;")
            with c.block("KC_THREADS"):
                if self.post is None:
                    c("KC_MINE(acc)[1] += KC_MINE(acc)[0];")
                else:
                    c("const long long row = row0 + threadIdx.y;",
                      f"const int col = cseg * {self.width} + col_in0 + threadIdx.x;",
                      f"if (KC_GUARD(row < {self.M} && col_in0 + threadIdx.x < {self.width})) "
                      f"KC_MINE(acc)[1] += ({self.post}) * KC_MINE(acc)[0];")
        with c.block("KC_THREADS"):
            c("const long long row = row0 + threadIdx.y;",
              f"const int col = cseg * {self.width} + col_in0 + threadIdx.x;",
              "const float value = KC_MINE(acc)[1];",
              f"if (KC_GUARD(row < {self.M} && col_in0 + threadIdx.x < {self.width})) {{ {self.store} }}")
        return function(name, buffers, c.text())


# ---- the kernels of one node ----------------------------------------------------------------------

class RecurrentKernels:
    """Writes the launches of one recurrent node (Plan ``p``), functions prefixed ``name``."""

    def __init__(self, p, name, buffers):
        self.p, self.name, self.buffers = p, name, buffers
        self.ws = {region: offset for region, (offset, _) in p.regions.items()}

    # -- C spellings of what the kernels read and write
    def a(self, name):
        return self.p.arg[name]

    def region(self, name, index):
        return f"ws[{self.ws[name]} + {index}]"

    def xp(self, g, j):
        """XP of row b, input step t, gate g, unit j."""
        p = self.p
        return self.region("XP", f"(b * {p.T} + t) * {p.GU} + {g * p.U} + {j}")

    def record(self, col, j, slot="s"):
        return self.region("A", f"((long long)({slot}) * {self.p.B} + b) * {self.p.GA} + {col} + {j}")

    def hs(self, slot, r, j):
        """h before step ``slot`` of row0 + r, unit j, in the gradient's record."""
        return self.region("HS", f"((long long)({slot}) * {self.p.B} + row0 + {r}) * {self.p.U} + {j}")

    def cs(self, slot, j):
        return self.region("CS", f"((long long)({slot}) * {self.p.B} + b) * {self.p.U} + {j}")

    def mask_of(self, which, d, width, j, b="b"):
        """dropout_mask[d, b, j] (which='dropout_mask') or recurrent_dropout_mask[d, b, j]."""
        return f"{self.a(which)}[((long long)({d}) * {self.p.B} + {b}) * {width} + {j}]"

    def rmask(self, g, j):
        return self.mask_of("recurrent_dropout_mask", g % self.p.D2, self.p.U, j)

    def h(self, slot, r, j):
        """The h state before step ``slot`` (an expression) of the block's row r, unit j, in the
        forward recurrence: the shared double buffer, the global one, or the record."""
        p = self.p
        if p.forward_states_shared:
            return f"h_buf[({slot}) & 1][{r} * {p.U} + {j}]"
        if p.grad:
            return self.hs(slot, r, j)
        return self.region("HB", f"((long long)(({slot}) & 1) * {p.B} + row0 + {r}) * {p.U} + {j}")

    def gate_buf(self, which, r, j):
        """z (which 0) or r * h (which 1) of the step, GRU reset_after=False."""
        p = self.p
        if p.forward_states_shared:
            return f"gate_buf[{which}][{r} * {p.U} + {j}]"
        return self.region(("ZB", "RB")[which], f"(row0 + {r}) * {p.U} + {j}")

    def w(self, k, col):
        """recurrent_kernel[k, col] in the forward recurrence."""
        if self.p.forward_weights_shared:
            return f"w_rec[{k} * {self.p.GU} + {col}]"
        return f"{self.a('recurrent_kernel')}[{k} * {self.p.GU} + {col}]"

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

    def fn(self, which, *args):
        return f"{self.name}_{which}({', '.join(args)})"

    # -- the pieces
    def head(self, c):
        """The block's rows and elements."""
        p = self.p
        c(f"const long long row0 = (long long)blockIdx.x * {p.rows};",
          f"const int rows = {p.B} - row0 < {p.rows} ? (int)({p.B} - row0) : {p.rows};",
          f"const int n = rows * {p.U};")

    @contextmanager
    def each_element(self, c):
        """``for`` over this thread's elements (row r of the block, unit j; b the batch row)."""
        p = self.p
        with c.block(f"for (int e = threadIdx.x; KC_GUARD(e < n); e += {p.threads})"):
            c(f"const int r = e / {p.U}, j = e % {p.U};", "const long long b = row0 + r;")
            yield

    def step_time(self, c):
        c(f"const int t = {f'{self.p.T - 1} - s' if self.p.attrs['go_backwards'] else 's'};")

    def gate_sums(self, c, gates, source):
        """float acc<g> = sum_k source(g, k) * recurrent_kernel[k, g*U + j] for ``gates``."""
        p = self.p
        for g in gates:
            c(f"float acc{g} = 0.0f;")
        with c.block(f"for (int k = 0; k < {p.U}; ++k)"):
            loaded = {}
            for g in gates:
                v = source(g, "k")
                if v not in loaded:
                    loaded[v] = f"src{len(loaded)}"
                    c(f"const float {loaded[v]} = {v};")
                c(f"acc{g} += {loaded[v]} * {self.w('k', f'{g * p.U} + j')};")

    def h_source(self, slot):
        """What gate g's recurrent matmul multiplies: h, times its recurrent dropout mask."""
        def source(g, k):
            h = self.h(slot, "r", k)
            return h if not self.p.D2 else f"{h} * {self.rmask(g, k)}"
        return source

    # -- forward recurrence (the op, or the gradient's record)
    def forward(self):
        p, c = self.p, Code()
        c.depth = 1
        U, GU = p.U, p.GU
        if p.forward_states_shared:
            c(f"KC_SHARED(float, h_buf, [2][{p.rows * U}]);")
            if p.gru_nra:
                c(f"KC_SHARED(float, gate_buf, [2][{p.rows * U}]);")
        if p.forward_weights_shared:
            c(f"KC_SHARED(float, w_rec, [{U * GU}]);")
        self.head(c)
        with c.block("KC_THREADS"):
            if p.forward_weights_shared:
                c(f"for (int e = threadIdx.x; e < {U * GU}; e += {p.threads}) "
                  f"w_rec[e] = {self.a('recurrent_kernel')}[e];")
            with self.each_element(c):
                c(f"{self.h('0', 'r', 'j')} = {self.a('h0')}[b * {U} + j];")
                if p.grad and p.forward_states_shared:
                    c(f"{self.hs('0', 'r', 'j')} = {self.a('h0')}[b * {U} + j];")
                if p.lstm:
                    c(f"{self.c_state('0')} = {self.a('c0')}[b * {U} + j];")
        c("KC_SYNC;")
        with c.block(f"for (int s = 0; s < {p.T}; ++s)"):
            self.step_time(c)
            if p.gru_nra:
                with c.block("KC_THREADS"):
                    with self.each_element(c):
                        self.gru_nra_gates(c)
                c("KC_SYNC;")
            with c.block("KC_THREADS"):
                with self.each_element(c):
                    getattr(self, f"{'gru_nra_candidate' if p.gru_nra else p.op + '_step'}")(c)
            c("KC_SYNC;")
        if not p.grad:
            with c.block("KC_THREADS"):
                with self.each_element(c):
                    c(f"out1[b * {U} + j] = {self.h(str(p.T), 'r', 'j')};")
        return function(f"{self.name}_{'record' if p.grad else 'forward'}", self.buffers, c.text())

    def c_state(self, slot):
        """The lstm cell state before step ``slot`` of element (b, j): the cT output (updated in
        place: only this element's thread touches it) or the gradient's record."""
        if self.p.grad:
            return self.cs(slot, "j")
        return f"out2[b * {self.p.U} + j]"

    def xp_plus(self, c, g, name):
        c(f"const float {name} = {self.xp(g, 'j')} + acc{g};")

    def simple_rnn_step(self, c):
        self.gate_sums(c, [0], self.h_source("s"))
        self.xp_plus(c, 0, "a")
        if self.p.grad:
            c(f"{self.record(0, 'j')} = a;")
        self.finish(c, self.fn("act", "a"))

    def lstm_step(self, c):
        U = self.p.U
        self.gate_sums(c, range(4), self.h_source("s"))
        for g in range(4):
            self.xp_plus(c, g, f"a{g}")
        c(f"const float i_gate = {self.fn('ract', 'a0')}, f_gate = {self.fn('ract', 'a1')};",
          f"const float cc = {self.fn('act', 'a2')}, o_gate = {self.fn('ract', 'a3')};",
          f"const float c_old = {self.c_state('s')};",
          "const float c_new = f_gate * c_old + i_gate * cc;")
        if self.p.grad:
            for g in range(4):
                c(f"{self.record(g * U, 'j')} = a{g};")
            c(f"{self.record(4 * U, 'j')} = c_new;")
        self.finish(c, f"o_gate * {self.fn('act', 'c_new')}", c_new="c_new")

    def gru_step(self, c):  # reset_after: r scales the candidate's recurrent part
        p, U = self.p, self.p.U
        self.gate_sums(c, range(3), self.h_source("s"))
        bias = self.a("bias")
        c(f"const float rz = acc0 + {bias}[{p.GU} + j], rr = acc1 + {bias}[{p.GU + U} + j], "
          f"rh = acc2 + {bias}[{p.GU + 2 * U} + j];",
          f"const float az = {self.xp(0, 'j')} + rz, ar = {self.xp(1, 'j')} + rr;",
          f"const float z = {self.fn('ract', 'az')}, r_gate = {self.fn('ract', 'ar')};",
          f"const float ah = {self.xp(2, 'j')} + r_gate * rh;")
        if p.grad:
            for col, v in ((0, "az"), (U, "ar"), (2 * U, "rh"), (3 * U, "ah")):
                c(f"{self.record(col, 'j')} = {v};")
        self.finish(c, f"z * {self.h('s', 'r', 'j')} + (1.0f - z) * {self.fn('act', 'ah')}")

    def gru_nra_gates(self, c):  # reset_after=False, first half: z and r, then r * h for all units
        p, U = self.p, self.p.U
        self.gate_sums(c, range(2), self.h_source("s"))
        c(f"const float az = {self.xp(0, 'j')} + acc0, ar = {self.xp(1, 'j')} + acc1;")
        if p.grad:
            c(f"{self.record(0, 'j')} = az;", f"{self.record(U, 'j')} = ar;")
        h = self.h("s", "r", "j")
        if p.D2:
            h = f"{h} * {self.rmask(2, 'j')}"
        c(f"{self.gate_buf(0, 'r', 'j')} = {self.fn('ract', 'az')};",
          f"{self.gate_buf(1, 'r', 'j')} = {self.fn('ract', 'ar')} * {h};")

    def gru_nra_candidate(self, c):
        p, U = self.p, self.p.U
        self.gate_sums(c, [2], lambda g, k: self.gate_buf(1, "r", k))
        c(f"const float ah = {self.xp(2, 'j')} + acc2;",
          f"const float z = {self.gate_buf(0, 'r', 'j')};")
        if p.grad:
            c(f"{self.record(2 * U, 'j')} = ah;")
        self.finish(c, f"z * {self.h('s', 'r', 'j')} + (1.0f - z) * {self.fn('act', 'ah')}")

    def finish(self, c, h_new, c_new=None):
        """Masked carry, the state update and the output of one element."""
        p, U = self.p, self.p.U
        c(f"const float h_new = {h_new};")
        masked = p.attrs["masked"]
        if masked:
            c(f"const bool m = {self.a('mask')}[b * {p.T} + t];")
        h_state = f"m ? h_new : {self.h('s', 'r', 'j')}" if masked else "h_new"
        c(f"const float h_state = {h_state};", f"{self.h('s + 1', 'r', 'j')} = h_state;")
        if p.grad and p.forward_states_shared:
            c(f"{self.hs('s + 1', 'r', 'j')} = h_state;")
        if c_new is not None:
            c(f"{self.c_state('s + 1')} = {f'm ? {c_new} : c_old' if masked else c_new};")
        if p.grad:
            return
        position, before = "s", "s - 1"          # of this step's output and of the previous one's
        if p.attrs["output_in_time_order"]:
            position, before = "t", (f"{p.T} - s" if p.attrs["go_backwards"] else "s - 1")
        out = "h_new"
        if p.carry:  # the previous step's output, which this thread wrote
            out = f"m ? h_new : (s > 0 ? out0[(b * {p.T} + {before}) * {U} + j] : 0.0f)"
        elif masked:
            out = "m ? h_new : 0.0f"
        c(f"out0[(b * {p.T} + {position}) * {U} + j] = {out};")

    # -- backward through time
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
            with c.block("KC_THREADS"):
                with self.each_element(c):
                    getattr(self, f"{'gru_nra' if p.gru_nra else p.op}_backward")(c)
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

    # -- the GEMMs
    def project(self):
        """XP = input bias + (x * dropout_mask[g]) @ kernel."""
        p = self.p
        x = f"{self.a('x')}[row * {p.F} + k]"
        if p.D:
            x += " * " + self.mask_of("dropout_mask", f"cseg % {p.D}", p.F, "k", b=f"row / {p.T}")
        return Gemm(p.B * p.T, p.G, p.U, 1, p.F, x, f"{self.a('kernel')}[(long long)k * {p.GU} + col]",
                    f"{self.region('XP', f'row * {p.GU} + col')} = value + {self.a('bias')}[col];")

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

    def kernel(self):
        p = self.p
        parts = [activation_functions(self.name, p.attrs)]
        launches = []

        def add_gemm(suffix, gemm):
            parts.append(gemm.source(f"{self.name}_{suffix}", self.buffers))
            launches.append(gemm.launch(f"{self.name}_{suffix}"))

        def add_recurrence(source, suffix):
            parts.append(source)
            launches.append(Launch(f"{self.name}_{suffix}", (p.blocks, 1, 1), (p.threads, 1, 1), barriers=True))

        add_gemm("project", self.project())
        if not p.grad:
            add_recurrence(self.forward(), "forward")
        else:
            add_recurrence(self.forward(), "record")
            add_recurrence(self.backward(), "backward")
            add_gemm("dx", self.dx())
            add_gemm("dkernel", self.dkernel())
            add_gemm("drecurrent", self.drecurrent())
        return CudaKernel(self.name, "\n".join(parts), tuple(launches), self.buffers)


def recurrent_kernel(ctx, grad, **plan_options):
    """CudaKernel of a recurrent node (TemplateContext ``ctx``)."""
    op = ctx.node["op"].removesuffix("_grad")
    p = plan(op, ctx.in_types, ctx.attrs, grad, **plan_options)
    buffers = tuple(ctx.buffers) + (Buffer("ws", "float32", p.ws_floats, True),)
    return RecurrentKernels(p, ctx.name, buffers).kernel()


for _op in GATES:
    lowering("cuda", _op)(lambda ctx: recurrent_kernel(ctx, grad=False))
    lowering("cuda", f"{_op}_grad")(lambda ctx: recurrent_kernel(ctx, grad=True))
