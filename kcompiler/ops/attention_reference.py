"""numpy references of attention and attention_grad (kcompiler/ops/attention.py): the scores
and probabilities materialised, float64 inside, the inputs' dtype out."""
import numpy as np

from ..ir.registry import reference
from .attention import MASKED_SCORE, split_grad_operands


def _keep(mask, t_len, s_len, causal):
    """(B or 1, 1, T, S) bool: which scores are kept."""
    keep = np.ones((1, 1, t_len, s_len), bool)
    if mask is not None:
        keep = keep & (mask[:, None] != 0)
    if causal:
        keep = keep & np.tril(np.ones((t_len, s_len), bool))
    return keep


def _probabilities(q, k, mask, scale, causal):
    """(z (B, H, T, S) with masked scores replaced, keep, p) in float64."""
    z = np.einsum("bthd,bshd->bhts", q.astype(np.float64), k.astype(np.float64)) * scale
    keep = _keep(mask, q.shape[1], k.shape[1], causal)
    z = np.where(keep, z, MASKED_SCORE)
    top = z.max(axis=-1, keepdims=True)
    e = np.exp(z - top)
    total = e.sum(axis=-1, keepdims=True)
    lse = (top + np.log(total))[..., 0]
    return z, np.broadcast_to(keep, z.shape), e / total, lse


@reference("attention")
def attention(q, k, v, mask=None, scale=1.0, causal=False):
    _, _, p, lse = _probabilities(q, k, mask, scale, causal)
    o = np.einsum("bhts,bshe->bthe", p, v.astype(np.float64))
    return o.astype(q.dtype), lse.astype(q.dtype)


@reference("attention_grad")
def attention_grad(*operands, scale=1.0, causal=False):
    q, k, v, mask, o, lse, do, dlse = split_grad_operands(operands)
    _, keep, p, _ = _probabilities(q, k, mask, scale, causal)
    do64, v64 = do.astype(np.float64), v.astype(np.float64)
    delta = np.einsum("bthe,bthe->bht", do64, o.astype(np.float64)) - dlse
    dp = np.einsum("bthe,bshe->bhts", do64, v64)
    dz = np.where(keep, p * (dp - delta[..., None]), 0.0)
    dq = scale * np.einsum("bhts,bshd->bthd", dz, k.astype(np.float64))
    dk = scale * np.einsum("bhts,bthd->bshd", dz, q.astype(np.float64))
    dv = np.einsum("bhts,bthe->bshe", p, do64)
    return tuple(a.astype(q.dtype) for a in (dq, dk, dv, delta))
