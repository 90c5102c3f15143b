"""CUDA templates of the recurrent ops ``simple_rnn``, ``lstm`` and ``gru`` (rnn_backward.py has
their ``_grad``): the semantics of kcompiler/ops/rnn.py and its numpy reference (gate order,
masks, dropout masks, go_backwards, output order, reset_after, every activation), computed
as the CPU kernels compute them (codegen/llvm/rnn.py), in two launches:

  1. ``_project``: XP = input bias + (x * dropout_mask of the gate) @ kernel for ALL steps
     at once, a tiled GEMM (tiles.Gemm; its column tiles never straddle two gates, so the
     gate's mask is applied as the tile is loaded);
  2. ``_forward``: the recurrence, ONE persistent launch. Block b owns ``rows`` batch rows
     and loops over the time steps inside; its threads own the (row, unit) elements (a
     thread loops when there are more elements than threads, and owns the same elements in
     every region). Per step an element's thread computes the G dot products
     h_{t-1} @ recurrent_kernel[:, g*U + j] (h from shared memory, the recurrent kernel from
     shared memory when it fits), the gate math and the state update. h lives in a double
     buffer (step s reads half s % 2, writes the other), so a step needs ONE barrier; GRU
     with reset_after=False needs two (its candidate multiplies r * h of every unit).

Values a thread keeps across barriers that are its element's own (c, z, the carried
output) live in global memory indexed by the element (the cT output, the workspace, the
output sequence itself), never in per-thread arrays: the emulation would need them
KC_PER_THREAD and nvcc would put dynamically indexed arrays in local memory.

Scratch memory: a template kernel's buffers are the node's (``TemplateContext.buffers``:
out0.., in0..) followed by ONE scratch buffer ``ws`` (float32, ``Plan.ws_floats``
elements) that the runtime allocates with the step, its contents undefined on entry (the
tests fill it with NaN). Its regions: ``Plan.regions``.

Shared memory: static, at most ``SHARED_BUDGET`` bytes (ptxas rejects more than 48 KiB).
The block's per-step states come first, then the recurrent kernel; what does not fit is
read from global memory (the workspace or the operand) instead: slower, as correct.
Written in the barrier-split form of prelude.h (KC_THREADS regions between KC_SYNC, index
guards as KC_GUARD), so the same text runs in the CPU emulation. Only float32.
"""
from contextlib import contextmanager
from dataclasses import dataclass

from ...errors import UnsupportedError
from ...ir.registry import lowering
from ...ops.rnn import ACTIVATIONS, GATES, full_attrs, operand_names
from ...schedule.kernel import Buffer, Const, Store, Var, call
from .render import THREADS_PER_BLOCK, WARP, CudaKernel, Launch, device_function
from .tiles import Code, Gemm, function

SHARED_BUDGET = 47 * 1024   # bytes of static shared memory one kernel may declare (ptxas: 48 KiB)
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
    if not B * T * F:  # a launch needs at least one block
        raise UnsupportedError(f"{op}{'_grad' if grad else ''} on CUDA: x of shape {(B, T, F)} is empty")
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
        for suffix, args, params, identity in (("", (x,), "float x", "x"),
                                               ("_grad", (x, dy), "float x, float dy", "dy")):
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
            step = self.gru_nra_candidate if p.gru_nra else getattr(self, f"{p.op}_step")
            with c.block("KC_THREADS"):
                with self.each_element(c):
                    step(c)
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

    # -- the GEMMs
    def project(self):
        """XP = input bias + (x * dropout_mask[g]) @ kernel."""
        p = self.p
        x = f"{self.a('x')}[row * {p.F} + k]"
        if p.D:
            x += " * " + self.mask_of("dropout_mask", f"cseg % {p.D}", p.F, "k", b=f"row / {p.T}")
        return Gemm(p.B * p.T, p.G, p.U, 1, p.F, x, f"{self.a('kernel')}[(long long)k * {p.GU} + col]",
                    f"{self.region('XP', f'row * {p.GU} + col')} = value + {self.a('bias')}[col];")

    def functions(self):
        """(suffix, source, launch) of each function, in launch order."""
        return [self.gemm("project", self.project()), self.recurrence("forward", self.forward())]

    def gemm(self, suffix, gemm):
        name = f"{self.name}_{suffix}"
        return suffix, gemm.source(name, self.buffers), gemm.launch(name)

    def recurrence(self, suffix, source):
        p = self.p
        return suffix, source, Launch(f"{self.name}_{suffix}", (p.blocks, 1, 1), (p.threads, 1, 1), barriers=True)

    def kernel(self):
        functions = self.functions()
        source = "\n".join([activation_functions(self.name, self.p.attrs)] + [text for _, text, _ in functions])
        return CudaKernel(self.name, source, tuple(launch for _, _, launch in functions), self.buffers)


def recurrent_kernel(ctx, writer, **plan_options):
    """CudaKernel of a recurrent node (TemplateContext ``ctx``: ``<op>`` or ``<op>_grad``),
    written by ``writer`` (RecurrentKernels, or rnn_backward.GradientKernels)."""
    grad = ctx.node["op"].endswith("_grad")
    p = plan(ctx.node["op"].removesuffix("_grad"), ctx.in_types, ctx.attrs, grad, **plan_options)
    buffers = tuple(ctx.buffers) + (Buffer("ws", "float32", p.ws_floats, True),)
    return writer(p, ctx.name, buffers).kernel()


def lower(ctx, **plan_options):
    """The CUDA template of ``simple_rnn``, ``lstm`` and ``gru`` (plan_options: see ``plan``)."""
    return recurrent_kernel(ctx, RecurrentKernels, **plan_options)


for _op in GATES:  # the <op>_grad templates are registered by rnn_backward
    lowering("cuda", _op)(lower)
