"""numpy reference of `fused_contraction` and `fused_pool_grad`: the head's reference, then the
epilogue's members."""
from ..ir.registry import get_op, reference
from .fused_reference import evaluate_members


@reference("fused_contraction")
@reference("fused_pool_grad")
def fused_contraction(*operands, head, head_attrs, n_head, body, outputs):
    acc = get_op(head).reference(*operands[:n_head], **head_attrs)
    return evaluate_members(body, outputs, operands[n_head:], acc=acc)
