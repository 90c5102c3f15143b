"""numpy references of the fused heads: `fused_contraction` and `fused_pool_grad` (the head's
reference, then the epilogue's members, then the pooling of one of them), `fused_bias_grad`
(the head's and the sum's)."""
from ..ir.registry import get_op, reference
from .fused_reference import evaluate_members


@reference("fused_contraction")
@reference("fused_pool_grad")
def fused_contraction(*operands, head, head_attrs, n_head, body, outputs, pool=None):
    acc = get_op(head).reference(*operands[:n_head], **head_attrs)
    results = evaluate_members(body, outputs, operands[n_head:], acc=acc)
    if pool is None:
        return results
    results = results if isinstance(results, tuple) else (results,)
    pooled = get_op(pool["op"]).reference(results[pool["of"]], **pool["attrs"])
    return results + (pooled if isinstance(pooled, tuple) else (pooled,))


@reference("fused_bias_grad")
def fused_bias_grad(*operands, head, head_attrs, axes, dy=None):
    x, dy_value = operands[0], operands[1] if dy is None else get_op(dy["op"]).reference(*operands[1:], **dy["attrs"])
    return get_op(head).reference(x, dy_value, **head_attrs), get_op("sum").reference(dy_value, axes=axes)
