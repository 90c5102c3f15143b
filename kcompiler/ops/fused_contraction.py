"""The `fused_contraction` op: a matmul or conv2d with an element-wise epilogue, made by the
fusion pass so the product's output is finished (bias, activation, ...) while it is still
in cache, instead of in a second pass over memory. The `fused_pool_grad` op: the same for a
pooling gradient whose windows do not overlap (each element of its result is stored once),
whose epilogue runs on each value where the gradient stores it (the activation gradient
before a pooling layer: no second pass over the pooled layer's full-size gradient), and for
the other described heads that store each element once (depthwise_conv2d and its input
gradient: BatchNormalization and ReLU6 after a depthwise convolution in inference).

attrs: ``head`` (the head's op name), ``head_attrs``, ``n_head`` (how many of the node's
operands are the head's), ``body``/``outputs`` as in the `fused` op, where a ref
``["acc", 0]`` is the head's result and ``["in", k]`` is operand ``n_head + k``; optionally
``pool`` = {"op": "max_pool2d" or "max_pool2d_argmax", "attrs": its attrs, "of": j,
"store_input": bool}: the node also pools its j-th output (a convolution's activation before a
pooling layer whose windows neither overlap nor reach into padding), its last result (y, or y
and idx: the last two), computed as soon as each row of windows is finished. ``store_input``
false: nothing else reads output j (inference, or training where the pool keeps idx), and the
kernel keeps it in scratch memory, never storing it into its buffer.

The `fused_bias_grad` op: a convolution's weight gradient and its bias gradient (the sum of
dy, its second operand, over ``axes``: all but the channel axis), made by the fusion pass so
that dy is read once for both. attrs: ``head`` (conv2d_backward_kernel), ``head_attrs``,
``axes``; its operands are the head's; its results (dK, db). With attr ``dy`` = {"op", "attrs"}
(a pooling gradient: a `fused_pool_grad` node, the max-pooling gradient and the activation
gradient before it, or a bare pooling gradient such as max_pool2d_grad_argmax) its operands are
x and that node's, and it computes dy itself, an image at a time into memory that stays in
cache, instead of reading it: dy is never written out and read back.

The `fused_conv2d_grads` op: a convolution's input gradient and kernel gradient that read the
same dy, in one kernel that reads dy once (and, by Winograd, transforms it once) for both.
attrs: ``input_grad`` and ``kernel_grad`` = {"op", "attrs"}, the two nodes it replaces (a
conv2d_backward_input or a `fused_contraction` with that head; a conv2d_backward_kernel or a
`fused_bias_grad` reading dy), ``n_input_grad``: its first operands are the input gradient's
(dy, kernel, the epilogue's operands), then the kernel gradient's x; its results are the input
gradient's, then the kernel gradient's (dK, and db for a fused_bias_grad). With attr ``dy`` (a
pooling gradient, as for `fused_bias_grad`) dy is not an operand: the operands are the input
gradient's others, x, then the pooling gradient's, and the kernel computes dy itself.
"""
from ..ir.registry import get_op, register
from ..ir.types import TensorType
from .fused import member_types


def head_type(in_types, attrs):
    return get_op(attrs["head"]).shape_rule(in_types[:attrs["n_head"]], attrs["head_attrs"])


def _rule(in_types, attrs):
    types = member_types(in_types[attrs["n_head"]:], attrs, acc=head_type(in_types, attrs))
    outs = [types[j] for j in attrs["outputs"]]
    pool = attrs.get("pool")
    if pool is not None:
        pooled = get_op(pool["op"]).shape_rule([outs[pool["of"]]], pool["attrs"])
        outs += list(pooled) if isinstance(pooled, tuple) else [pooled]
    return outs[0] if len(outs) == 1 else tuple(outs)


register("fused_contraction", shape=_rule, kind="contraction",
         doc="a matmul/conv2d head with an element-wise epilogue (see attrs); made by passes/fusion.py")
register("fused_pool_grad", shape=_rule, kind="reduction",
         doc="a pooling gradient with an element-wise epilogue at its stores (see attrs); made by passes/fusion.py")


def bias_grad_dy_type(in_types, attrs):
    """dy of a `fused_bias_grad`: its second operand, or what its ``dy`` producer computes."""
    producer = attrs.get("dy")
    return in_types[1] if producer is None else get_op(producer["op"]).shape_rule(in_types[1:], producer["attrs"])


def _bias_grad_rule(in_types, attrs):
    dy = bias_grad_dy_type(in_types, attrs)
    return (head_type([in_types[0], dy], dict(attrs, n_head=2)),
            TensorType(tuple(d for i, d in enumerate(dy.shape) if i not in attrs["axes"]), dy.dtype))


register("fused_bias_grad", shape=_bias_grad_rule, kind="contraction",
         doc="a weight gradient and the bias gradient of its dy in one pass (see attrs); made by passes/fusion.py")


def conv_grads_operands(in_types, attrs, compute_dy):
    """The operands (types, or values) of a `fused_conv2d_grads`'s two gradients: (input
    gradient's, kernel gradient's: x and dy); ``compute_dy(op, attrs, operands)`` gives dy from
    the operands of its attr ``dy`` (a shape rule, or a reference)."""
    n, producer = attrs["n_input_grad"], attrs.get("dy")
    if producer is None:
        return list(in_types[:n]), [in_types[n], in_types[0]]
    dy = compute_dy(producer["op"], producer["attrs"], list(in_types[n:]))
    return [dy] + list(in_types[:n - 1]), [in_types[n - 1], dy]


def conv_grads_types(in_types, attrs):
    return conv_grads_operands(in_types, attrs, lambda op, a, types: get_op(op).shape_rule(types, a))


def _conv_grads_rule(in_types, attrs):
    outs = []
    for part, operands in zip((attrs["input_grad"], attrs["kernel_grad"]), conv_grads_types(in_types, attrs)):
        t = get_op(part["op"]).shape_rule(operands, part["attrs"])
        outs += list(t) if isinstance(t, tuple) else [t]
    return tuple(outs)


register("fused_conv2d_grads", shape=_conv_grads_rule, kind="contraction",
         doc="a convolution's input and kernel gradients reading dy once (see attrs); made by passes/fusion.py")
