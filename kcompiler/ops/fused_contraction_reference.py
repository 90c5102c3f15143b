"""numpy references of the fused heads: `fused_contraction` and `fused_pool_grad` (the head's
reference, then the epilogue's members, then the pooling of one of them), `fused_bias_grad`
(the head's and the sum's), `fused_conv2d_grads` (its two gradients')."""
from ..ir.registry import get_op, reference
from .fused_contraction import conv_grads_operands
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


@reference("fused_conv2d_grads")
def fused_conv2d_grads(*operands, input_grad, kernel_grad, n_input_grad, dy=None):
    results = []
    for part, values in zip((input_grad, kernel_grad),
                            conv_grads_operands(operands, {"n_input_grad": n_input_grad, "dy": dy},
                                                lambda op, attrs, args: get_op(op).reference(*args, **attrs))):
        value = get_op(part["op"]).reference(*values, **part["attrs"])
        results += list(value) if isinstance(value, tuple) else [value]
    return tuple(results)
