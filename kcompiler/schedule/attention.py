"""Kernel descriptions of attention and attention_grad (kcompiler/ops/attention.py).

attention: one parallel iteration per block of up to 8 query rows (b, t..t+7, h: query_block):
the rows share each key's and value's loads, and their independent chains overlap. A row
keeps two scalars, the running maximum m of its scores and the running sum l of exp(z - m),
and its output row in o (its own accumulator). Each key s costs a dot product q.k[s], one
exp and an update of the output row; a key that raises the maximum first rescales l and the
row by exp(m_old - m_new) (a factor of exactly 1 otherwise, so it is skipped). Memory holds
q, k, v, o and the (B, H, T) lse, never a score matrix. After the last key the row is divided
by l and lse = m + log(l) is stored.

attention_grad: one parallel iteration per (batch, head), so that each score is recomputed
once and every row of dq, dk and dv is written by one iteration (no atomic adds). For each
block of query rows (as in the forward) and each of its queries t: delta = do . o - dlse
(stored: output 3), then for each key s the probability p = exp(z - lse) (a masked score's
p is 0, or 1/S in a fully masked row: there every score is -1e9 and float32's lse lost
log(S) to rounding), dp = do . v[s] and dz = p * (dp - delta), added into dq[t]
(scale * dz * k[s]), dk[s] (scale * dz * q[t]) and dv[s] (p * do[t]), the block's terms
summed before they are added into a dk or dv row. One head's dk and dv rows stay in cache
while its queries go by. On a GPU this gives only batch x heads threads to the backward: a
CUDA template splitting it by key blocks is future work.
"""
from ..ir.registry import description
from ..ops.attention import MASKED_SCORE, split_forward_operands, split_grad_operands
from .kernel import Assign, Const, If, Kernel, Load, Local, Store, Var, call, loop, node_buffers

F32 = "float32"
ZERO = Const(0.0, F32)
DOT_LANES = 8
QUERY_BLOCK = 8


class Rows:
    """Index arithmetic of one attention problem: q (B, T, H, D), k (B, S, H, D), v (B, S, H, Dv)."""

    def __init__(self, q_shape, k_shape, v_shape, attrs, mask):
        self.batch, self.queries, self.heads, self.depth = q_shape
        self.keys, self.value_depth = k_shape[1], v_shape[3]
        self.scale = float(attrs.get("scale", 1.0))
        self.causal = bool(attrs.get("causal", False))
        self.mask = mask          # the mask's buffer name, or None

    def q_row(self, b, t, h):
        return ((b * self.queries + t) * self.heads + h) * self.depth

    def k_row(self, b, s, h):
        return ((b * self.keys + s) * self.heads + h) * self.depth

    def v_row(self, b, s, h):
        return ((b * self.keys + s) * self.heads + h) * self.value_depth

    def o_row(self, b, t, h):
        return ((b * self.queries + t) * self.heads + h) * self.value_depth

    def stat(self, b, h, t):
        """Flat index of the (B, H, T) lse / delta."""
        return (b * self.heads + h) * self.queries + t

    def keep(self, b, t, s):
        """Whether score (t, s) is kept (a bool expression), or None when every score is."""
        conditions = []
        if self.mask:
            conditions.append(call("ne", Load(self.mask, (b * self.queries + t) * self.keys + s, F32), ZERO))
        if self.causal:
            conditions.append(call("le", s, t))
        if not conditions:
            return None
        return conditions[0] if len(conditions) == 1 else call("and", *conditions)

    def score(self, name, q_buffer, k_buffer, b, t, s, h):
        """Statements leaving the masked, scaled score z of (t, s) in local ``name``."""
        statements, z = self.dot(name, q_buffer, self.q_row(b, t, h), k_buffer, self.k_row(b, s, h), self.depth)
        statements.append(Assign(z, call("mul", z, Const(self.scale, F32))))
        keep = self.keep(b, t, s)
        if keep is not None:
            statements.append(Assign(z, call("select", keep, z, Const(MASKED_SCORE, F32))))
        return statements, z, keep

    def dot(self, name, a_buffer, a_row, b_buffer, b_row, size):
        """Statements leaving a[a_row:+size] . b[b_row:+size] in local ``name``. A row of a
        multiple of DOT_LANES elements is summed in DOT_LANES interleaved partial sums (one
        vector register's worth, which a backend can keep in one: a float sum in one order is
        bound by the add's latency), added pairwise at the end."""
        acc, e = Var(name, F32), Var("e")
        product = lambda i: call("mul", Load(a_buffer, a_row + i, F32), Load(b_buffer, b_row + i, F32))  # noqa: E731
        if size % DOT_LANES or size < 2 * DOT_LANES:
            return [Local(acc, ZERO), loop("e", size, [Assign(acc, call("add", acc, product(e)))])], acc
        partial = [Var(f"{name}_{i}", F32) for i in range(DOT_LANES)]
        base = e * DOT_LANES
        statements = [Local(v, ZERO) for v in partial]
        statements.append(loop("e", size // DOT_LANES, [Assign(v, call("add", v, product(base + i if i else base)))
                                                         for i, v in enumerate(partial)]))
        values = list(partial)
        while len(values) > 1:
            values = [call("add", values[i], values[i + 1]) for i in range(0, len(values), 2)]
        return statements + [Local(acc, values[0])], acc


def _rows(in_types, attrs, mask_present):
    return Rows(in_types[0].shape, in_types[1].shape, in_types[2].shape, attrs, "in3" if mask_present else None)


def query_block(queries):
    """How many query rows one iteration takes (they share each key's and value's loads, and
    their independent chains overlap): QUERY_BLOCK, or the largest power of two below it that
    divides the number of queries."""
    block = QUERY_BLOCK
    while queries % block:
        block //= 2
    return block


def _sum(values):
    total = values[0]
    for v in values[1:]:
        total = call("add", total, v)
    return total


@description("attention")
def describe_attention(node, in_types, name):
    mask = split_forward_operands(in_types)[3]
    r = _rows(in_types, node["attrs"], mask is not None)
    b, tb, h, s, e = Var("b"), Var("tb"), Var("h"), Var("s"), Var("e")
    block = query_block(r.queries)
    ts = [tb * block + i if i else tb * block for i in range(block)] if block > 1 else [tb]
    m = [Var(f"m{i}", F32) for i in range(block)]
    total = [Var(f"total{i}", F32) for i in range(block)]
    p = [Var(f"p{i}", F32) for i in range(block)]
    o = [r.o_row(b, t, h) for t in ts]
    out = lambda i: Load("out0", o[i] + e, F32)  # noqa: E731
    per_key = []
    for i, t in enumerate(ts):
        score, z, _ = r.score(f"z{i}", "in0", "in1", b, t, s, h)
        rescale = Var(f"rescale{i}", F32)
        # the row is rescaled only when a score raises its maximum (otherwise the factor is
        # exactly exp(0) = 1): one exp per key, and one more per new maximum
        per_key += score + [
            If(call("gt", z, m[i]), (
                Local(rescale, call("exp", call("sub", m[i], z))),
                Assign(total[i], call("mul", total[i], rescale)),
                loop("e", r.value_depth, [Store("out0", o[i] + e, call("mul", out(i), rescale))]),
                Assign(m[i], z))),
            Local(p[i], call("exp", call("sub", z, m[i]))),
            Assign(total[i], call("add", total[i], p[i]))]
    v = Load("in2", r.v_row(b, s, h) + e, F32)
    per_key.append(loop("e", r.value_depth, [Store("out0", o[i] + e, call("add", out(i), call("mul", p[i], v)))
                                             for i in range(block)]))
    inverse = [Var(f"inverse{i}", F32) for i in range(block)]
    rows = ([Local(m[i], Const(float("-inf"), F32)) for i in range(block)] +
            [Local(total[i], ZERO) for i in range(block)] +
            [loop("e", r.value_depth, [Store("out0", o[i] + e, ZERO) for i in range(block)]),
             loop("s", r.keys, per_key)] +
            [Local(inverse[i], call("div", Const(1.0, F32), total[i])) for i in range(block)] +
            [loop("e", r.value_depth, [Store("out0", o[i] + e, call("mul", out(i), inverse[i]))
                                       for i in range(block)])] +
            [Store("out1", r.stat(b, h, t), call("add", m[i], call("log", total[i]))) for i, t in enumerate(ts)])
    nest = loop("b", r.batch, [loop("tb", r.queries // block, [loop("h", r.heads, rows)], parallel=True)],
                parallel=True)
    return Kernel(name, node_buffers(node, in_types), (nest,))


@description("attention_grad")
def describe_attention_grad(node, in_types, name):
    mask = split_grad_operands(in_types)[3]
    r = _rows(in_types, node["attrs"], mask is not None)
    first = 4 if mask is not None else 3
    o_buf, lse_buf, do_buf, dlse_buf = (f"in{first + i}" for i in range(4))
    bh, tb, s, e = Var("bh"), Var("tb"), Var("s"), Var("e")
    b, h = bh // r.heads, bh % r.heads
    block = query_block(r.queries)
    ts = [tb * block + i if i else tb * block for i in range(block)] if block > 1 else [tb]
    scale = Const(r.scale, F32)
    k_row, v_row = r.k_row(b, s, h), r.v_row(b, s, h)
    q_rows = [r.q_row(b, t, h) for t in ts]
    o_rows = [r.o_row(b, t, h) for t in ts]

    per_pair, p, dz_scaled = [], [], []
    for i, t in enumerate(ts):
        stat = r.stat(b, h, t)
        score, z, keep = r.score(f"z{i}", "in0", "in1", b, t, s, h)
        lse = Load(lse_buf, stat, F32)
        p_value = call("exp", call("sub", z, lse))
        if keep is not None:
            # a masked score's probability is 0, or 1/S in a fully masked row (all its scores
            # are -1e9, so its weights are uniform), whose float32 lse has lost log(S) to rounding
            fully_masked = call("lt", lse, Const(MASKED_SCORE / 2, F32))
            p_value = call("select", keep, p_value, call("select", fully_masked, Const(1.0 / r.keys, F32), ZERO))
        dp_statements, dp = r.dot(f"dp{i}", do_buf, o_rows[i], "in2", v_row, r.value_depth)
        p.append(Var(f"p{i}", F32))
        dz, dz_scaled_i = Var(f"dz{i}", F32), Var(f"dz_scaled{i}", F32)
        dz_scaled.append(dz_scaled_i)
        dz_value = call("mul", p[i], call("sub", dp, Load("out3", stat, F32)))
        if keep is not None:
            dz_value = call("select", keep, dz_value, ZERO)
        per_pair += score + [Local(p[i], p_value)] + dp_statements + [
            Local(dz, dz_value), Local(dz_scaled_i, call("mul", dz, scale))]
    load = lambda buffer, row: Load(buffer, row + e, F32)  # noqa: E731
    per_pair += [
        loop("e", r.depth, [Store("out0", q_rows[i] + e, call("add", load("out0", q_rows[i]), call(
            "mul", dz_scaled[i], load("in1", k_row)))) for i in range(block)]),
        loop("e", r.depth, [Store("out1", k_row + e, call("add", load("out1", k_row), _sum(
            [call("mul", dz_scaled[i], load("in0", q_rows[i])) for i in range(block)])))]),
        loop("e", r.value_depth, [Store("out2", v_row + e, call("add", load("out2", v_row), _sum(
            [call("mul", p[i], load(do_buf, o_rows[i])) for i in range(block)])))])]
    per_block = []
    for i, t in enumerate(ts):
        delta_statements, do_o = r.dot(f"do_o{i}", do_buf, o_rows[i], o_buf, o_rows[i], r.value_depth)
        stat = r.stat(b, h, t)
        per_block += delta_statements + [Store("out3", stat, call("sub", do_o, Load(dlse_buf, stat, F32)))]
    per_block += [loop("e", r.depth, [Store("out0", q_rows[i] + e, ZERO) for i in range(block)]),
                  loop("s", r.keys, per_pair)]
    zero_keys = loop("s", r.keys, [loop("e", r.depth, [Store("out1", k_row + e, ZERO)]),
                                   loop("e", r.value_depth, [Store("out2", v_row + e, ZERO)])])
    body = loop("bh", r.batch * r.heads, [zero_keys, loop("tb", r.queries // block, per_block)], parallel=True)
    return Kernel(name, node_buffers(node, in_types), (body,))
