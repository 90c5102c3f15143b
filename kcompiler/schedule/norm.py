"""Kernel descriptions of layer_norm and layer_norm_grad (kcompiler/ops/norm.py).

A *row* is one (sample n, channel group g) of x viewed as (N, S, C) (ops/norm.py: the sample
axes, the position axes, the channels): the S * C/G elements x[n, s, g * C/G + c]. Both
kernels walk the rows in parallel (n, then g) and, inside a row, make passes over it as
softmax does: the row is small enough to stay in cache, so x is read from memory once per
kernel whatever the number of passes. With one group the row is one
contiguous run and each pass is one loop over it; its sums are reductions in any order
(kernel.reduction: a vector of partial sums, not one chain).

layer_norm, per row: the mean (a sum pass), the biased variance (a second pass over
x - mean: two passes, as TensorFlow's moments, no cancellation), then one pass storing
(x - mean) * rstd * gamma + beta.

layer_norm_grad, per row: the same statistics (stored as outputs 3 and 4), one pass summing
g = dy * gamma and g * xhat, one pass storing dx. Then the parameter gradients, in the form
of a bias gradient (schedule/reduce.py, kept innermost axis): the output row dgamma (dbeta)
is zeroed, and every (n, s) adds its contiguous channel row into it, reading the row
statistics back from outputs 3 and 4.
"""
from ..ir.registry import description
from ..ops.norm import norm_attrs, rows_of
from .kernel import Const, Kernel, Load, Local, Store, Var, accumulate, call, loop, node_buffers

F32 = "float32"


class Rows:
    """The geometry of one kernel: x (N, S, C) in groups of ``width`` = C/G channels."""

    def __init__(self, x_shape, attrs, groups):
        self.batch, self.positions, self.channels = rows_of(x_shape, attrs)
        self.groups = groups
        self.width = self.channels // groups
        self.size = self.positions * self.width    # elements in a row
        self.n, self.g = Var("n"), Var("g")

    def row_loops(self, body):
        """Parallel loops over the rows around ``body``; the row's flat index is n * G + g."""
        body = list(body)
        if self.groups > 1:
            body = [loop("g", self.groups, body, parallel=True)]
        return [loop("n", self.batch, body, parallel=True)]

    @property
    def row(self):
        return self.n * self.groups + self.g if self.groups > 1 else self.n

    def reduce_row(self, accumulators):
        """Statements reducing the row into locals: ``accumulators`` are (local, op, identity,
        ``value(flat index, channel index)``), combined in any order (kernel.reduction)."""
        statements = [Local(v, init) for v, _, init, _ in accumulators]
        return statements + [self.over_row(lambda i, c: [accumulate(v, op, value(i, c))
                                                         for v, op, _, value in accumulators])]

    def over_row(self, body_at):
        """One pass over the row: ``body_at(flat index, channel index)`` (statements)."""
        base = self.n * (self.positions * self.channels)
        if self.groups == 1:  # one contiguous run of S * C elements
            e = Var("e")
            return loop("e", self.size, body_at(base + e, e % self.channels if self.positions > 1 else e))
        s, c = Var("s"), Var("c")
        channel = self.g * self.width + c
        inner = loop("c", self.width, body_at(base + s * self.channels + channel, channel))
        return loop("s", self.positions, [inner]) if self.positions > 1 else \
            loop("c", self.width, body_at(base + channel, channel))


def _statistics(rows, epsilon, x):
    """Statements computing the row's locals ``mean`` and ``rstd`` from ``x(index)``."""
    total, mean, squares, rstd = Var("total", F32), Var("mean", F32), Var("squares", F32), Var("rstd", F32)
    inverse_size = Const(1.0 / rows.size, F32)
    centred = lambda i: call("sub", x(i), mean)  # noqa: E731
    zero = Const(0.0, F32)
    return [*rows.reduce_row([(total, "add", zero, lambda i, c: x(i))]),
            Local(mean, call("mul", total, inverse_size)),
            *rows.reduce_row([(squares, "add", zero, lambda i, c: call("mul", centred(i), centred(i)))]),
            Local(rstd, call("div", Const(1.0, F32),
                             call("sqrt", call("add", call("mul", squares, inverse_size), Const(epsilon, F32)))))], \
        mean, rstd


def _x(i):
    return Load("in0", i, F32)


@description("layer_norm")
def describe_layer_norm(node, in_types, name):
    groups, _, epsilon, scale, center = norm_attrs("layer_norm", node["attrs"], in_types[0].shape)
    rows = Rows(in_types[0].shape, node["attrs"], groups)
    statements, mean, rstd = _statistics(rows, epsilon, _x)
    gamma = "in1" if scale else None
    beta = f"in{1 + scale}" if center else None

    def store(i, c):
        y = call("mul", call("sub", _x(i), mean), rstd)
        if gamma:
            y = call("mul", y, Load(gamma, c, F32))
        if beta:
            y = call("add", y, Load(beta, c, F32))
        return [Store("out0", i, y)]

    body = rows.row_loops(statements + [rows.over_row(store)])
    return Kernel(name, node_buffers(node, in_types), tuple(body))


@description("layer_norm_grad")
def describe_layer_norm_grad(node, in_types, name):
    groups, _, epsilon, scale, _ = norm_attrs("layer_norm_grad", node["attrs"], in_types[0].shape)
    rows = Rows(in_types[0].shape, node["attrs"], groups)
    dy_buffer = f"in{1 + scale}"
    dy = lambda i: Load(dy_buffer, i, F32)  # noqa: E731
    statements, mean, rstd = _statistics(rows, epsilon, _x)
    statements += [Store("out3", rows.row, mean), Store("out4", rows.row, rstd)]
    g = (lambda i, c: call("mul", dy(i), Load("in1", c, F32))) if scale else (lambda i, c: dy(i))
    xhat = lambda i: call("mul", call("sub", _x(i), mean), rstd)  # noqa: E731
    g_sum, gx_sum = Var("g_sum", F32), Var("gx_sum", F32)
    inverse_size = Const(1.0 / rows.size, F32)
    zero = Const(0.0, F32)
    statements += [
        *rows.reduce_row([(g_sum, "add", zero, g), (gx_sum, "add", zero, lambda i, c: call("mul", g(i, c), xhat(i)))]),
        Local(Var("g_mean", F32), call("mul", g_sum, inverse_size)),
        Local(Var("gx_mean", F32), call("mul", gx_sum, inverse_size)),
        rows.over_row(lambda i, c: [Store("out0", i, call("mul", rstd, call(
            "sub", call("sub", g(i, c), Var("g_mean", F32)), call("mul", xhat(i), Var("gx_mean", F32)))))]),
    ]
    body = rows.row_loops(statements)
    body += _parameter_gradient(rows, "out1", _saved_xhat_times(rows, dy) if scale else None)
    body += _parameter_gradient(rows, "out2", (lambda i, c, n: dy(i)) if node["attrs"].get("center", True) else None)
    return Kernel(name, node_buffers(node, in_types), tuple(body))


def _saved_xhat_times(rows, dy):
    """dy * xhat of element i (channel c, sample n), xhat from the row statistics stored in
    outputs 3 and 4."""
    def term(i, c, n):
        row = n * rows.groups + c // rows.width if rows.groups > 1 else n
        xhat = call("mul", call("sub", _x(i), Load("out3", row, F32)), Load("out4", row, F32))
        return call("mul", dy(i), xhat)
    return term


def _parameter_gradient(rows, out, term):
    """out[c] = sum over (n, s) of ``term(i, c, n)``: zeroed, then each channel row added in
    (the channel loop innermost and contiguous); all zeros when ``term`` is None."""
    c, n, s = Var("c"), Var("n"), Var("s")
    zero = [loop("c", rows.channels, [Store(out, c, Const(0.0, F32))], parallel=True)]
    if term is None:
        return zero
    i = n * (rows.positions * rows.channels) + (s * rows.channels + c if rows.positions > 1 else c)
    add = [loop("c", rows.channels, [Store(out, c, call("add", Load(out, c, F32), term(i, c, n)))])]
    if rows.positions > 1:
        add = [loop("s", rows.positions, add)]
    return zero + [loop("n", rows.batch, add)]
