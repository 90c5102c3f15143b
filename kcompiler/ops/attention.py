"""Fused scaled dot-product attention, forward and backward, in the manner of FlashAttention.

``attention(q, k, v, [mask])`` with q (B, T, H, D), k (B, S, H, D), v (B, S, H, Dv) — the
layout Keras's MultiHeadAttention projections produce, so no transpose is needed — and an
optional float mask (B, T, S) (1 keeps a key, 0 masks it) gives

    o[b, t, h] = sum over s of softmax_s(z[b, h, t, s]) * v[b, s, h]          (B, T, H, Dv)
    z = scale * q[b, t, h] . k[b, s, h], replaced by -1e9 where the mask is 0 or, with
        ``attrs.causal``, where s > t (Keras's masking: a fully masked row is uniform)

and, as its second result, lse[b, h, t] = log sum over s of exp(z) (B, H, T): the only thing
the forward saves. Its kernel (schedule/attention.py) walks the keys with an online softmax
(a running maximum and sum, the output row rescaled as the maximum grows), so no
B x H x T x S score or probability tensor ever exists.

``attention_grad(q, k, v, [mask], o, lse, do, dlse)`` gives (dq, dk, dv, delta), delta[b, h, t]
= do . o - dlse (B, H, T), which the kernel computes first and reads back; it recomputes each
probability p = exp(z - lse) where it needs it. With dp = do . v[s] and
dz = p * (dp - delta) (zero where masked: the mask is a constant there):
dq = scale * sum_s dz k[s], dk = scale * sum_t dz q[t], dv = sum_t p do[t]. The cotangent of
lse enters through delta, so the op's VJP is exact for both results. The mask gets no gradient.

attrs: ``scale`` (float), ``causal`` (bool). The mask is present when the op has 4 operands
(attention_grad: 8).
"""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape

MASKED_SCORE = -1e9   # what a masked score becomes (Keras's Softmax adds -1e9 where masked)


def split_forward_operands(items):
    """(q, k, v, mask or None) of an attention node's operands."""
    q, k, v, *rest = items
    return q, k, v, (rest[0] if rest else None)


def split_grad_operands(items):
    """(q, k, v, mask or None, o, lse, do, dlse) of an attention_grad node's operands."""
    mask = items[3] if len(items) == 8 else None
    q, k, v = items[:3]
    o, lse, do, dlse = items[-4:]
    return q, k, v, mask, o, lse, do, dlse


def _check(op, q, k, v, mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.rank != 4 or not t.dtype.startswith("float") or t.dtype != q.dtype:
            raise ShapeError(f"{op}: {name} must be a {q.dtype} tensor (batch, length, heads, depth), got {t.dtype} "
                             f"{fmt_shape(t.shape)}")
    b, t_len, heads, depth = q.shape
    if k.shape[2:] != (heads, depth) or not (b is None or k.shape[0] in (b, None)):
        raise ShapeError(f"{op}: k {fmt_shape(k.shape)} must be (batch, keys, {heads}, {depth}) for q "
                         f"{fmt_shape(q.shape)}")
    if v.shape[:3] != k.shape[:3] and None not in v.shape[:3] + k.shape[:3]:
        raise ShapeError(f"{op}: v {fmt_shape(v.shape)} must have k's batch, keys and heads {fmt_shape(k.shape[:3])}")
    if mask is not None and (mask.rank != 3 or mask.shape[1:] != (t_len, k.shape[1]) or mask.dtype != q.dtype):
        raise ShapeError(f"{op}: the mask must be a {q.dtype} (batch, {t_len}, {k.shape[1]}) tensor, got {mask.dtype} "
                         f"{fmt_shape(mask.shape)}")
    return b, t_len, heads


def _attention_rule(in_types, attrs):
    if len(in_types) not in (3, 4):
        raise ShapeError(f"attention: expects operands (q, k, v[, mask]), got {len(in_types)}")
    q, k, v, mask = split_forward_operands(in_types)
    b, t_len, heads = _check("attention", q, k, v, mask)
    return (TensorType((b, t_len, heads, v.shape[3]), q.dtype), TensorType((b, heads, t_len), q.dtype))


def _attention_vjp(b, nid, cotangents):
    do, dlse = cotangents
    grad = b.add("attention_grad", b.operands(nid) + [b.tuple_item(nid, 0), b.tuple_item(nid, 1), do, dlse],
                 b.attrs(nid))
    grads = [b.tuple_item(grad, i) for i in range(3)]
    return grads + [None] * (len(b.operands(nid)) - 3)


def _attention_grad_rule(in_types, attrs):
    if len(in_types) not in (7, 8):
        raise ShapeError(f"attention_grad: expects operands (q, k, v[, mask], o, lse, do, dlse), got {len(in_types)}")
    q, k, v, mask, o, lse, do, dlse = split_grad_operands(in_types)
    b, t_len, heads = _check("attention_grad", q, k, v, mask)
    o_shape, lse_shape = (b, t_len, heads, v.shape[3]), (b, heads, t_len)
    for name, t, shape in (("o", o, o_shape), ("do", do, o_shape), ("lse", lse, lse_shape), ("dlse", dlse, lse_shape)):
        if t.shape != shape and None not in t.shape + shape:
            raise ShapeError(f"attention_grad: {name} has shape {fmt_shape(t.shape)}, expected {fmt_shape(shape)}")
    return (TensorType(q.shape, q.dtype), TensorType(k.shape, q.dtype), TensorType(v.shape, q.dtype),
            TensorType(lse_shape, q.dtype))


register("attention", shape=_attention_rule, vjp=_attention_vjp, kind="opaque",
         doc="fused softmax(scale * q.k, masked) . v over (B, T, H, D) q and (B, S, H, D) k, v[, (B, T, S) mask]; "
             "-> (o, lse); attrs scale, causal")
register("attention_grad", shape=_attention_grad_rule, kind="opaque",
         doc="(q, k, v[, mask], o, lse, do, dlse) -> (dq, dk, dv, delta): the attention backward, probabilities "
             "recomputed from lse")
