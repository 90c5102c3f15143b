"""Kernel descriptions of BatchNormalization's training statistics and gradient
(kcompiler/ops/batch_norm.py); the element-wise ``batch_norm_apply`` is defined in scalar.py.

x is viewed as (outer, C, inner) around its channel axis (NHWC: (N*H*W, C, 1)); element
(o, c, i) is at flat index (o * C + c) * inner + i. Per-channel sums are written as
schedule/reduce.py writes a bias gradient: the output row is zeroed (parallel over channels),
then one serial nest adds every element into its channel's slot, the channel loop innermost
when inner == 1 (contiguous, so it vectorises without reassociating a float sum; the CUDA
renderer runs exactly this shape as a block reduction), then the row is finished in a
parallel loop over channels. Each sum is its own nest, so each such renderer sees one
accumulation.

batch_norm_stats: mean = sum(x) * (1/M), then var = sum((x - mean)^2) * (1/M): two passes over
x, the same operations in the same order as the mean / sub / square / mean chain it
replaces, so the numbers are those of that chain.

batch_norm_grad: rstd = 1/sqrt(var + epsilon) per channel (output 3), dbeta = sum(dy),
dgamma = sum(dy * (x - mean)) * rstd (two accumulation passes), then one parallel pass
storing dx = gamma * rstd * (dy - dbeta/M - (x - mean) * rstd * dgamma/M).
"""
from ..ir.registry import description
from ..ops.batch_norm import channel_axis, layout
from .kernel import Const, Kernel, Load, Store, Var, call, linear_index, loop, node_buffers


class Channels:
    """The (outer, C, inner) geometry of one kernel's x, and its loop nests."""

    def __init__(self, op, x_type, attrs):
        self.dtype = x_type.dtype
        self.outer, self.channels, self.inner = layout(x_type.shape, channel_axis(op, x_type, attrs))
        self.count = self.outer * self.inner  # values per channel
        self.c = Var("c")

    def per_channel(self, statements_at):
        """One parallel loop over the channels: ``statements_at(c)``."""
        return loop("c", self.channels, statements_at(self.c), parallel=True)

    def over_elements(self, statements_at, parallel):
        """A nest over every element of x, the channel loop inside the outer one and outside
        the inner one: ``statements_at(flat index, c)``."""
        loops = [(Var(n), d) for n, d in (("o", self.outer), ("c", self.channels), ("i", self.inner)) if d > 1 or
                 n == "c"]
        strides = {"o": self.channels * self.inner, "c": self.inner, "i": 1}
        flat = linear_index([v for v, _ in loops], [strides[v.name] for v, _ in loops])
        body = list(statements_at(flat, self.c))
        for v, d in reversed(loops):
            body = [loop(v.name, d, body, parallel=parallel)]
        return body[0]

    def channel_sum(self, out, value_at, finish=None):
        """Statements: out[c] = sum over the elements of channel c of ``value_at(flat, c)``,
        then ``finish(sum, c)`` stored in place when given."""
        zero = Const(0.0, self.dtype)
        statements = [self.per_channel(lambda c: [Store(out, c, zero)]),
                      self.over_elements(lambda i, c: [Store(out, c, call("add", Load(out, c, self.dtype),
                                                                          value_at(i, c)))], parallel=False)]
        if finish is not None:
            statements.append(self.per_channel(lambda c: [Store(out, c, finish(Load(out, c, self.dtype), c))]))
        return statements


@description("batch_norm_stats")
def describe_batch_norm_stats(node, in_types, name):
    ch = Channels("batch_norm_stats", in_types[0], node["attrs"])
    dtype = ch.dtype
    inverse_count = Const(1.0 / ch.count, dtype)
    x = lambda i: Load("in0", i, dtype)  # noqa: E731
    mean = lambda c: Load("out0", c, dtype)  # noqa: E731

    def square_deviation(i, c):
        d = call("sub", x(i), mean(c))
        return call("mul", d, d)

    body = ch.channel_sum("out0", lambda i, c: x(i), lambda total, c: call("mul", total, inverse_count))
    body += ch.channel_sum("out1", square_deviation, lambda total, c: call("mul", total, inverse_count))
    return Kernel(name, node_buffers(node, in_types), tuple(body))


@description("batch_norm_grad")
def describe_batch_norm_grad(node, in_types, name):
    ch = Channels("batch_norm_grad", in_types[1], node["attrs"])
    dtype = ch.dtype
    epsilon = Const(float(node["attrs"].get("epsilon", 1e-3)), dtype)
    inverse_count = Const(1.0 / ch.count, dtype)
    dy = lambda i: Load("in0", i, dtype)  # noqa: E731
    centred = lambda i, c: call("sub", Load("in1", i, dtype), Load("in2", c, dtype))  # noqa: E731
    rstd = lambda c: Load("out3", c, dtype)  # noqa: E731
    gamma = (lambda c: Load("in4", c, dtype)) if len(in_types) > 4 else None

    body = [ch.per_channel(lambda c: [
        Store("out3", c, call("div", Const(1.0, dtype), call("sqrt", call("add", Load("in3", c, dtype), epsilon))))])]
    body += ch.channel_sum("out2", lambda i, c: dy(i))
    body += ch.channel_sum("out1", lambda i, c: call("mul", dy(i), centred(i, c)),
                           lambda total, c: call("mul", total, rstd(c)))

    def dx(i, c):
        dbeta_mean = call("mul", Load("out2", c, dtype), inverse_count)
        dgamma_mean = call("mul", Load("out1", c, dtype), inverse_count)
        xhat = call("mul", centred(i, c), rstd(c))
        factor = rstd(c) if gamma is None else call("mul", gamma(c), rstd(c))
        return [Store("out0", i, call("mul", factor, call("sub", call("sub", dy(i), dbeta_mean),
                                                          call("mul", xhat, dgamma_mean))))]

    body.append(ch.over_elements(dx, parallel=True))
    return Kernel(name, node_buffers(node, in_types), tuple(body))
