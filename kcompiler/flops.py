"""Floating-point operations of a compiled kcompiler program, counted from its IR.

The count is the model's arithmetic, the same whoever runs it, so the comparison runner
divides it by every framework's step time to get GFLOP/s and the fraction of the machine's
FMA peak. Rules:

* contractions: 2 FLOPs per multiply-add. matmul 2·|out|·k; conv2d and both of its gradients
  2·|dy|·KH·KW·Cin (|dy| = the forward output's size): the direct algorithm's count, also for
  the CPU backend's Winograd kernels (codegen/llvm/winograd.py), which do fewer multiply-adds:
  their GFLOP/s are effective rates, comparable across frameworks, and may pass the FMA peak;
* depthwise_conv2d and both of its gradients 2·|dy|·KH·KW (dy: the forward output); attention
  2·B·H·T·S·(D + Dv) (the two products), attention_grad twice that (dq, dk, dv and dp);
* recurrent ops (lstm, gru, simple_rnn): the input and recurrent projections of every step,
  2·B·T·(F + U)·G·U; their ``_grad`` ops twice that (the gradients of the inputs and of the
  weights). The gate math and the forward pass the gradient kernel recomputes are not counted:
  the figure is the useful work, not the work a kernel happens to do;
* element-wise ops one FLOP per output element and member (a ``fused`` node counts each of
  its members; a ``fused_contraction`` its head plus each epilogue member per element of the
  product, plus the pooling it absorbed; a ``fused_conv2d_grads`` its two gradients);
  reductions and pooling one per input element;
* parameters, views and data movement (gather, scatter, concatenate, slice, ...) none.

    flops = graph_flops(program.graph)
    per_kernel = [(k.name, kernel_flops(program.graph, k), kernel_bytes(program.graph, k))
                  for k in program.kernels]
"""
from .bench import node_bytes
from .ir.graph import operands
from .ir.registry import get_op
from .ir.types import num_elements
from .ops.fused import update_members
from .ops.fused_contraction import bias_grad_dy_type, conv_grads_types, head_type
from .ops.rnn import GATES

CONV_OPS = ("conv2d", "conv2d_backward_input", "conv2d_backward_kernel")


def _elements(t):
    return num_elements((t[0] if isinstance(t, tuple) else t).shape)


def contraction_flops(op, in_types, attrs, out_type):
    if op == "matmul":
        a = in_types[0]
        k = a.shape[-2] if attrs.get("transpose_a", False) else a.shape[-1]
        return 2 * _elements(out_type) * k
    if op in CONV_OPS:
        kh, kw, cin, _ = attrs["kernel_shape"] if op == "conv2d_backward_kernel" else in_types[1].shape
        dy = out_type if op == "conv2d" else in_types[0] if op == "conv2d_backward_input" else in_types[1]
        return 2 * _elements(dy) * kh * kw * cin
    raise ValueError(f"no FLOP rule for the contraction {op!r}")


DEPTHWISE_OPS = ("depthwise_conv2d", "depthwise_conv2d_backward_input", "depthwise_conv2d_backward_kernel")


def described_flops(op, in_types, attrs, out_type):
    """FLOPs of the described ops with a multiply-add count of their own (None for the others)."""
    if op in DEPTHWISE_OPS:
        kh, kw = (attrs["kernel_shape"] if op == "depthwise_conv2d_backward_kernel" else in_types[1].shape)[:2]
        dy = out_type if op == "depthwise_conv2d" else in_types[0] if op == "depthwise_conv2d_backward_input" \
            else in_types[1]
        return 2 * _elements(dy) * kh * kw
    if op in ("attention", "attention_grad"):
        q, k, v = in_types[:3]
        batch, queries, heads, depth = q.shape
        forward = 2 * batch * heads * queries * k.shape[1] * (depth + v.shape[3])
        return forward if op == "attention" else 2 * forward
    return None


def recurrent_flops(op, in_types):
    base = op[:-len("_grad")] if op.endswith("_grad") else op
    x, kernel, recurrent = in_types[:3]
    batch, time, features = x.shape
    units = recurrent.shape[0]
    forward = 2 * batch * time * (features + units) * GATES[base] * units
    return 2 * forward if op.endswith("_grad") else forward


def _members(body):
    return sum(1 for m in body if m["op"] != "constant")


def node_flops(g, nid):
    node = g.nodes[nid]
    return op_flops(node["op"], node.get("attrs", {}), [g.nodes[u]["type"] for u in operands(g, nid)], node["type"])


def op_flops(op, attrs, in_types, out):
    if op == "fused_conv2d_grads":  # its two gradients', and dy's producer
        dx_types, dk_types = conv_grads_types(in_types, attrs)
        producer = attrs.get("dy")
        total = 0 if producer is None else _producer_flops(producer, in_types[attrs["n_input_grad"]:], dk_types[1])
        outs = list(out)
        for part, operand_types in zip((attrs["input_grad"], attrs["kernel_grad"]), (dx_types, dk_types)):
            t = get_op(part["op"]).shape_rule(operand_types, part["attrs"])
            count = len(t) if isinstance(t, tuple) else 1
            total += op_flops(part["op"], part["attrs"], operand_types, tuple(outs[:count]) if count > 1 else outs[0])
            outs = outs[count:]
        return total
    if op in ("fused_contraction", "fused_pool_grad"):
        head = in_types[:attrs["n_head"]]
        acc = head_type(head, attrs)
        if op == "fused_pool_grad":
            return _pool_grad_flops(attrs, head, acc)
        pooled = _elements(out[attrs["pool"]["of"]]) if attrs.get("pool") else 0  # as the pooling layer counts
        return (contraction_flops(attrs["head"], head, attrs["head_attrs"], acc)
                + _members(attrs["body"]) * _elements(acc) + pooled)
    if op == "fused_bias_grad":  # the weight gradient, the bias gradient's sum over dy, dy's producer
        dk = out[0]
        dy = bias_grad_dy_type(in_types, attrs)
        producer = attrs.get("dy")
        made = 0 if producer is None else _producer_flops(producer, in_types[1:], dy)
        return contraction_flops(attrs["head"], [in_types[0], dy], attrs["head_attrs"], dk) + _elements(dy) + made
    if op == "fused":
        return _members(attrs["body"]) * _elements(out)
    if op == "fused_updates":
        return sum(_members(m["body"]) * _elements(out[results.start]) for m, _, results in update_members(attrs["members"]))
    described = described_flops(op, in_types, attrs, out)
    if described is not None:
        return described
    if op in GATES or op.endswith("_grad") and op[:-len("_grad")] in GATES:
        return recurrent_flops(op, in_types)
    kind = get_op(op).kind
    if kind == "contraction":
        return contraction_flops(op, in_types, attrs, out)
    if kind == "elementwise":
        return _elements(out)
    if kind == "reduction":
        return max(_elements(in_types[0]), _elements(out)) if in_types else 0
    return 0


def _pool_grad_flops(attrs, head, acc):
    """A `fused_pool_grad` (attrs) with head operand types ``head`` and result type ``acc``: the
    head's count (a pooling gradient: one operation per gradient element) and its epilogue's."""
    head_flops = described_flops(attrs["head"], head, attrs["head_attrs"], acc) or _elements(head[0])
    return head_flops + _members(attrs["body"]) * _elements(acc)


def _producer_flops(producer, in_types, dy):
    """A fused node's dy producer ({"op", "attrs"}: a pooling gradient, fused or bare), counted as
    its own node would be."""
    return op_flops(producer["op"], producer["attrs"], in_types, dy)


def graph_flops(g):
    """FLOPs of one run of graph ``g`` (a training step or a forward pass)."""
    return sum(node_flops(g, nid) for nid in g.nodes)


def kernel_flops(g, kernel):
    return sum(node_flops(g, nid) for nid in kernel.nodes)


def kernel_bytes(g, kernel):
    """Bytes the kernel reads and writes at least once (kcompiler.bench.node_bytes)."""
    return sum(node_bytes(g, nid) for nid in kernel.nodes)
