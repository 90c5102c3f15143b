"""Keep max pooling's routing decision from the forward pass for the gradient, instead of the
pooled layer's input.

``max_pool2d_grad(x, dy)`` reads the pool's input x again to find each window's maximum, so x
(a full-size activation: 64x30x30x32 floats, 7.4 MB, in the CIFAR CNN) stays alive from the
forward pass to the backward pass for that alone. For every such gradient whose x also feeds a
``max_pool2d`` node with the same attrs, the forward node becomes ``max_pool2d_argmax(x)`` ->
(y, idx) (its consumers read y) and the gradient ``max_pool2d_grad_argmax(idx, dy)``: it reads
idx, int32 of the pooled size, instead of x, and gives the same bits (ops/pool.py).

Then the activation gradient before the pool: ``relu_grad(x, dx)`` (a ReLU's gradient reads
its output, ops/elementwise.py) of that gradient's dx becomes
``max_pool2d_grad_argmax(idx, relu_grad(y, dy))``. Exact: the tap a window's dy goes to holds
the window's maximum y, so [x > 0] there is [y > 0], and every other element is 0 either way.
The relu_grad then runs on the pooled shape and fuses into the kernel that produces dy (the
next layer's input gradient), and x, read by no gradient any more, is freed by the memory plan
after the forward pool.

The pipeline runs this pass in fused builds where the backend declares the two ops
(Capabilities.pool_argmax), for the pools the fusion pass will merge into the convolution
computing their input (``pooled_by``: Capabilities.pool_epilogue_heads): that kernel then
writes y and idx and keeps x in scratch memory, so x is never stored. Elsewhere x would still be
stored for the forward pool, and freeing it early moved the step's other tensors onto its pages
(docs/architecture.md, "Max pooling's window positions"). Each rewrite and each refusal is a
line of graph['notes'].
"""
from ..ir.graph import GraphBuilder, copy_graph, operands, redirect_uses, topo_order
from ..ir.registry import get_op
from ..ir.types import num_elements
from ..ops.pool import windows_tile
from .memory_plan import ITEMSIZE


def _bytes(t):
    return num_elements(t.shape) * ITEMSIZE[t.dtype]


def _replace(g, old, new):
    """Every use of node ``old`` becomes ``new``; ``old`` is removed."""
    redirect_uses(g, old, new)
    g.remove_node(old)


def _argmax_pool(b, forward):
    """Replace max_pool2d node ``forward`` by max_pool2d_argmax; returns its (y, idx) items."""
    g = b.g
    (x,) = operands(g, forward)
    b.layer = g.nodes[forward].get("layer")
    pool = b.add("max_pool2d_argmax", [x], g.nodes[forward]["attrs"])
    y, idx = b.tuple_item(pool, 0), b.tuple_item(pool, 1)
    _replace(g, forward, y)
    return y, idx


def computed_by(g, x, heads):
    """Whether ``x`` is the result of a node whose op is in ``heads``, or of a chain of element-wise
    ops from one, each link's result read by the next alone (the epilogue fusion makes such a
    chain one kernel: a convolution, its bias and its activation)."""
    node = x
    while g.nodes[node]["op"] not in heads:
        if get_op(g.nodes[node]["op"]).kind != "elementwise" or not operands(g, node):
            return False
        node = operands(g, node)[0]
        if len(set(g.successors(node))) != 1 or node in g.graph["outputs"]:
            return False
    return True


def _refusal(g, x, forward, attrs, pooled_by):
    """Why the gradient of max_pool2d(x) with ``attrs`` keeps reading x (``forward``: that pooling
    node, or None), or None."""
    x_type = g.nodes[x]["type"]
    if forward is None:
        return "no max_pool2d node of it with the same attrs"
    if x_type.dtype != "float32":
        return f"it is {x_type.dtype}"
    if pooled_by is None:
        return None
    if not computed_by(g, x, pooled_by):
        return f"no {'/'.join(sorted(pooled_by))} computes it (the pool is not fused into its producer)"
    tiling = windows_tile("max_pool2d", attrs, *x_type.shape[1:3])
    return f"its windows do not tile %{x}: {tiling}" if tiling else None


def keep_pool_argmax(g, pooled_by=None):
    """The rewrite, for every max_pool2d_grad; with ``pooled_by`` (op names), only for those whose
    input is computed by one of those ops (``computed_by``)."""
    g = copy_graph(g)
    notes = g.graph["notes"] = list(g.graph.get("notes", []))
    b = GraphBuilder(g)
    pools = {}  # (x, attrs) -> (y, idx) of the max_pool2d_argmax that replaced max_pool2d(x)
    for nid in [n for n in topo_order(g) if g.nodes[n]["op"] == "max_pool2d_grad"]:
        node = g.nodes[nid]
        x, dy = operands(g, nid)
        x_type = g.nodes[x]["type"]
        key = (x, repr(sorted(node["attrs"].items())))
        if key not in pools:
            forward = next((v for v in sorted(g.successors(x)) if g.nodes[v]["op"] == "max_pool2d"
                            and g.nodes[v]["attrs"] == node["attrs"]), None)
            why = _refusal(g, x, forward, node["attrs"], pooled_by)
            if why:
                notes.append(f"%{nid} max_pool2d_grad keeps reading its input %{x}: {why}")
                continue
            pools[key] = _argmax_pool(b, forward)
        y, idx = pools[key]
        b.layer = node.get("layer")
        attrs = dict(node["attrs"], input_hw=tuple(x_type.shape[1:3]))
        grad = b.add("max_pool2d_grad_argmax", [idx, dy], attrs)
        _replace(g, nid, grad)
        notes.append(f"%{nid} max_pool2d_grad -> %{grad} max_pool2d_grad_argmax: reads idx "
                     f"({_bytes(g.nodes[idx]['type'])} bytes, written by the forward pool) instead of %{x} "
                     f"({_bytes(x_type)} bytes)")

        relus = [v for v in g.successors(grad) if g.nodes[v]["op"] == "relu_grad" and operands(g, v) == [x, grad]]
        if not relus:
            continue
        relu = relus[0]
        if set(g.successors(grad)) != {relu} or grad in g.graph["outputs"] or grad in g.graph["updates"].values():
            notes.append(f"%{relu} relu_grad stays after %{grad} max_pool2d_grad_argmax: the pooling gradient is "
                         f"also used elsewhere")
            continue
        b.layer = g.nodes[relu].get("layer")
        pooled = b.add("max_pool2d_grad_argmax", [idx, b.add("relu_grad", [y, dy], g.nodes[relu]["attrs"])], attrs)
        _replace(g, relu, pooled)
        g.remove_node(grad)
        freed = all(g.nodes[v]["op"] == "max_pool2d_argmax" for v in g.successors(x))
        notes.append(f"%{relu} relu_grad moved before the pooling gradient (%{pooled}), onto the pooled shape: "
                     f"reads y ({_bytes(g.nodes[y]['type'])} bytes) instead of %{x} ({_bytes(x_type)} bytes)"
                     + (f"; %{x} is now read by the forward pool only" if freed else ""))
    return g
