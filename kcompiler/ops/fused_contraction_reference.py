"""numpy references of the fused heads: `fused_contraction` and `fused_pool_grad` (the head's
reference, then the epilogue's members), `fused_bias_grad` (the head's and the sum's)."""
from ..ir.registry import get_op, reference
from .fused_reference import evaluate_members


@reference("fused_contraction")
@reference("fused_pool_grad")
def fused_contraction(*operands, head, head_attrs, n_head, body, outputs):
    acc = get_op(head).reference(*operands[:n_head], **head_attrs)
    return evaluate_members(body, outputs, operands[n_head:], acc=acc)


@reference("fused_bias_grad")
def fused_bias_grad(*operands, head, head_attrs, axes):
    return get_op(head).reference(*operands, **head_attrs), get_op("sum").reference(operands[1], axes=axes)
