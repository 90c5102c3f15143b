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
(Capabilities.pool_argmax). Each rewrite and each refusal is a line of graph['notes'].
"""
from ..ir.graph import GraphBuilder, copy_graph, operands, redirect_uses, topo_order
from ..ir.types import num_elements
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


def keep_pool_argmax(g):
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
            if forward is None or x_type.dtype != "float32":
                why = "no max_pool2d node of it with the same attrs" if forward is None else f"it is {x_type.dtype}"
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
