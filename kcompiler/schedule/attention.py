"""Kernel descriptions of attention and attention_grad (kcompiler/ops/attention.py).

attention: one parallel iteration per query row (b, t, h). The row keeps three scalars, the
running maximum m of its scores, the running sum l of exp(z - m), and its output row in o
(which is its own accumulator: rescaled by exp(m_old - m_new) whenever the maximum grows).
Each key s costs a dot product q.k[s], one or two exps and an update of the output row, so
memory holds q, k, v, o and the (B, H, T) lse, never a score matrix. After the last key the
row is divided by l and lse = m + log(l) is stored.

attention_grad, in two parallel passes as FlashAttention-2's backward:
1. per query row: delta = do . o - dlse (stored: output 3), then dq = scale * sum_s dz k[s],
   each p = exp(z - lse) recomputed (a masked score's p is 0, or 1/S in a fully masked row:
   there every score is -1e9 and float32's lse lost log(S) to rounding);
2. per key row (b, s, h): dk = scale * sum_t dz q[t] and dv = sum_t p do[t], reading delta
   back from output 3 (pass 1 has finished: the two passes are one after the other).
Each row is written by one iteration only, so neither pass needs an atomic add.
"""
from ..ir.registry import description
from ..ops.attention import MASKED_SCORE, split_forward_operands, split_grad_operands
from .kernel import Assign, Const, Kernel, Load, Local, Store, Var, call, loop, node_buffers

F32 = "float32"
ZERO = Const(0.0, F32)
DOT_LANES = 8


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


@description("attention")
def describe_attention(node, in_types, name):
    mask = split_forward_operands(in_types)[3]
    r = _rows(in_types, node["attrs"], mask is not None)
    b, t, h, s, e = Var("b"), Var("t"), Var("h"), Var("s"), Var("e")
    m, total = Var("m", F32), Var("total", F32)
    o = r.o_row(b, t, h)
    score, z, _ = r.score("z", "in0", "in1", b, t, s, h)
    m_new, rescale, p = Var("m_new", F32), Var("rescale", F32), Var("p", F32)
    per_key = score + [
        Local(m_new, call("max", m, z)),
        Local(rescale, call("exp", call("sub", m, m_new))),
        Local(p, call("exp", call("sub", z, m_new))),
        Assign(total, call("add", call("mul", total, rescale), p)),
        loop("e", r.value_depth, [Store("out0", o + e, call(
            "add", call("mul", Load("out0", o + e, F32), rescale),
            call("mul", p, Load("in2", r.v_row(b, s, h) + e, F32))))]),
        Assign(m, m_new)]
    row = [Local(m, Const(float("-inf"), F32)), Local(total, ZERO),
           loop("e", r.value_depth, [Store("out0", o + e, ZERO)]),
           loop("s", r.keys, per_key),
           Local(Var("inverse", F32), call("div", Const(1.0, F32), total)),
           loop("e", r.value_depth, [Store("out0", o + e, call("mul", Load("out0", o + e, F32), Var("inverse", F32)))]),
           Store("out1", r.stat(b, h, t), call("add", m, call("log", total)))]
    nest = loop("b", r.batch, [loop("t", r.queries, [loop("h", r.heads, row)], parallel=True)], parallel=True)
    return Kernel(name, node_buffers(node, in_types), (nest,))


@description("attention_grad")
def describe_attention_grad(node, in_types, name):
    mask = split_grad_operands(in_types)[3]
    r = _rows(in_types, node["attrs"], mask is not None)
    first = 4 if mask is not None else 3
    o_buf, lse_buf, do_buf, dlse_buf = (f"in{first + i}" for i in range(4))
    b, t, h, s, e = Var("b"), Var("t"), Var("h"), Var("s"), Var("e")
    scale = Const(r.scale, F32)

    def probability_terms(t, s):
        """Statements leaving p and dz of score (t, s) in locals (delta read from output 3)."""
        score, z, keep = r.score("z", "in0", "in1", b, t, s, h)
        dp_statements, dp = r.dot("dp", do_buf, r.o_row(b, t, h), "in2", r.v_row(b, s, h), r.value_depth)
        p, dz = Var("p", F32), Var("dz", F32)
        dz_value = call("mul", p, call("sub", dp, Load("out3", r.stat(b, h, t), F32)))
        if keep is not None:
            dz_value = call("select", keep, dz_value, ZERO)
        lse = Load(lse_buf, r.stat(b, h, t), F32)
        p_value = call("exp", call("sub", z, lse))
        if keep is not None:
            # a masked score's probability is 0, or 1/S in a fully masked row (all its scores are
            # -1e9, so its weights are uniform), whose float32 lse has lost the log(S) to rounding
            fully_masked = call("lt", lse, Const(MASKED_SCORE / 2, F32))
            p_value = call("select", keep, p_value, call("select", fully_masked, Const(1.0 / r.keys, F32), ZERO))
        return score + [Local(p, p_value)] + dp_statements + [Local(dz, dz_value)], p, dz

    # pass 1, per query row: delta, then dq
    delta_statements, do_o = r.dot("do_o", do_buf, r.o_row(b, t, h), o_buf, r.o_row(b, t, h), r.value_depth)
    q_row = r.q_row(b, t, h)
    terms, _, dz = probability_terms(t, s)
    query_pass = delta_statements + [
        Store("out3", r.stat(b, h, t), call("sub", do_o, Load(dlse_buf, r.stat(b, h, t), F32))),
        loop("e", r.depth, [Store("out0", q_row + e, ZERO)]),
        loop("s", r.keys, terms + [Local(Var("dz_scaled", F32), call("mul", dz, scale)), loop("e", r.depth, [
            Store("out0", q_row + e, call("add", Load("out0", q_row + e, F32), call(
                "mul", Var("dz_scaled", F32), Load("in1", r.k_row(b, s, h) + e, F32))))])])]

    # pass 2, per key row: dk and dv
    k_row, v_row = r.k_row(b, s, h), r.v_row(b, s, h)
    terms, p, dz = probability_terms(t, s)
    key_pass = [
        loop("e", r.depth, [Store("out1", k_row + e, ZERO)]),
        loop("e", r.value_depth, [Store("out2", v_row + e, ZERO)]),
        loop("t", r.queries, terms + [
            Local(Var("dz_scaled", F32), call("mul", dz, scale)),
            loop("e", r.depth, [Store("out1", k_row + e, call("add", Load("out1", k_row + e, F32), call(
                "mul", Var("dz_scaled", F32), Load("in0", r.q_row(b, t, h) + e, F32))))]),
            loop("e", r.value_depth, [Store("out2", v_row + e, call("add", Load("out2", v_row + e, F32), call(
                "mul", p, Load(do_buf, r.o_row(b, t, h) + e, F32))))])])]
    body = (loop("b", r.batch, [loop("t", r.queries, [loop("h", r.heads, query_pass)], parallel=True)], parallel=True),
            loop("b", r.batch, [loop("s", r.keys, [loop("h", r.heads, key_pass)], parallel=True)], parallel=True))
    return Kernel(name, node_buffers(node, in_types), body)
