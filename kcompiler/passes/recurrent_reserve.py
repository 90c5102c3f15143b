"""Keep the forward sweep's per-step values of a recurrent op for its gradient (cuDNN's
*reserve space*) instead of recomputing the forward sweep inside the gradient kernel.

For every ``<op>_grad`` node whose forward operands and attrs are those of an ``<op>`` node
of the graph, with ``<op>`` among ``ops`` (what the backend declares it can do,
Capabilities.recurrent_reserve): the forward node gets attr ``reserve`` and with it one more
output (ops/rnn.py), a ``tuple_item`` reads that output, and the gradient node gets the same
attr and that item as its last operand. The training step then runs each recurrent sweep
forward once instead of twice; the price is the reserve's memory, held from the forward
kernel to the gradient kernel (the memory plan sees it as any other buffer)."""
from ..ir.graph import GraphBuilder, copy_graph, infer_type, operands, set_type, topo_order
from ..ops.rnn import operand_names


def _key(op, operand_ids, attrs):
    return op, tuple(operand_ids), repr(sorted((k, v) for k, v in attrs.items() if k != "reserve"))


def keep_recurrent_reserves(g, ops):
    if not ops:
        return g
    g = copy_graph(g)
    b = GraphBuilder(g)
    order = topo_order(g)
    forwards = {_key(g.nodes[n]["op"], operands(g, n), g.nodes[n]["attrs"]): n
                for n in order if g.nodes[n]["op"] in ops}
    items = {}  # forward node -> the tuple_item of its reserve
    notes = g.graph.setdefault("notes", [])
    for nid in order:
        node = g.nodes[nid]
        op = node["op"]
        if not (op.endswith("_grad") and op[:-len("_grad")] in ops):
            continue
        base = op[:-len("_grad")]
        args = operands(g, nid)
        forward = forwards.get(_key(base, args[:len(operand_names(base, node["attrs"]))], node["attrs"]))
        if forward is None:
            notes.append(f"{op} node {nid}: recomputes its forward sweep (no {base} node with its operands)")
            continue
        if forward not in items:
            f = g.nodes[forward]
            f["attrs"] = {**f["attrs"], "reserve": True}
            t = infer_type(g, forward)
            set_type(g, forward, t)
            b.layer = f.get("layer")
            items[forward] = b.tuple_item(forward, len(t) - 1)
        g.add_edge(items[forward], nid, key=len(args))
        node["attrs"] = {**node["attrs"], "reserve": True}
        set_type(g, nid, infer_type(g, nid))
    return g
