"""Element-wise fusion: collapse chains of element-wise ops into `fused` nodes.

A producer joins its consumers' group when its element-wise consumers are all in
that one group, it computes the group's shape (so a fused node never recomputes a
value per broadcast element), and none of its other consumers feeds the group (so no
cycle can form). Values needed outside a group (other consumers, graph outputs, state
updates) become outputs of the fused node. Why a
pair was not fused is recorded in graph['notes'] for the dumps.

Epilogues (``fuse_epilogues``): an element-wise node absorbs the head it consumes (a
contraction, or a pooling gradient whose windows do not overlap) when the backend declares
that head (Capabilities.epilogue_heads). Each decision is scored by the bytes it saves (the
head's result is neither written nor read back: twice its size); a node with several heads
takes the one that saves most. The notes give each fusion's score and each refusal's reason.

Pooling (``fuse_pooling``): a max-pooling node whose input is an output of a fused contraction
with a head the backend declares (Capabilities.pool_epilogue_heads) becomes that node's last
result, computed while each finished row of windows is in cache (scored by the bytes of the
pooled input that are not read back).

Bias gradients (``fuse_bias_gradients``): a weight gradient whose op the backend declares
(Capabilities.bias_grad_heads) and the sum of its dy over all but the channel axis (the bias
gradient of the same layer) become one `fused_bias_grad` node reading dy once (scored by
dy's bytes).

Gradient pairs (``pair_conv_gradients``): a convolution's input gradient and kernel gradient
(each bare or fused as above) become one `fused_conv2d_grads` node where the backend reads and
transforms dy once for both (Capabilities.conv_grads_sharing_dy; scored by dy's bytes).

``fuse_dy_producers`` then gives a `fused_bias_grad` or a pair the pooling gradient computing
its dy when nothing else reads that dy (Capabilities.bias_grad_dy_heads).

State updates (``fuse_updates``): the element-wise kernels that compute nothing but state
updates (each variable's optimizer step not fused into its gradient) become one
`fused_updates` node, one kernel for all (Capabilities.merges_updates; scored in kernel calls).
"""

from ..ir.graph import GraphBuilder, copy_graph, operands, redirect_uses, topo_order
from ..ir.registry import get_op
from ..ir.types import num_elements
from ..ops.conv import conv_geometry
from ..ops.pool import windows_overlap, windows_tile
from .memory_plan import ITEMSIZE

NOT_FUSABLE = {"fused"}
# The fused op an epilogue makes with each kind of head: pooling gradients store each element
# of their result once (windows that do not overlap), and the epilogue runs at those stores.
POOL_GRADS = frozenset({"max_pool2d_grad", "max_pool2d_grad_argmax", "avg_pool2d_grad"})
# Other described heads that store each element of their result once, never reading it back
# (the depthwise convolution and its input gradient): their epilogue runs at those stores too.
STORE_EPILOGUE_HEADS = POOL_GRADS | {"depthwise_conv2d", "depthwise_conv2d_backward_input"}


def _fusable(g, nid):
    node = g.nodes[nid]
    return (node["op"] not in NOT_FUSABLE and get_op(node["op"]).kind == "elementwise"
            and not isinstance(node["type"], tuple))


def _is_inline_constant(g, nid):
    node = g.nodes[nid]
    return node["op"] == "constant" and not node["attrs"].get("array") and node["type"].shape == ()


def _reaches(g, starts, members, position=None):
    """Whether any node in ``starts`` is in ``members`` or has a path into it.

    A depth-first walk that stops at the first member found. With ``position`` (each node's
    index in a topological order of ``g``) it does not walk past the last member's position,
    since nothing after it can reach it: fuse_elementwise asks this for every candidate, and
    walking all descendants each time made it quadratic in the graph."""
    members = set(members)
    last = max(position[m] for m in members) if position is not None else None
    seen, stack = set(starts), list(starts)
    while stack:
        v = stack.pop()
        if v in members:
            return True
        for w in g.successors(v):
            if w not in seen and (last is None or position[w] <= last):
                seen.add(w)
                stack.append(w)
    return False


def fuse_elementwise(g):
    g = copy_graph(g)
    g.graph["notes"] = list(g.graph.get("notes", []))
    live_out = set(g.graph["outputs"]) | set(g.graph["updates"].values())
    group_of = {}
    groups = {}
    order = topo_order(g)
    position = {n: i for i, n in enumerate(order)}
    for nid in reversed(order):
        if not _fusable(g, nid):
            continue
        shape = g.nodes[nid]["type"].shape
        consumers = set(g.successors(nid))
        consumer_groups = {group_of[v] for v in consumers if v in group_of}
        others = [v for v in consumers if v not in group_of]
        target = None
        if len(consumer_groups) == 1:
            gid = next(iter(consumer_groups))
            if groups[gid]["shape"] != shape:
                g.graph["notes"].append(f"%{nid} {g.nodes[nid]['op']} not fused into group %{gid}: "
                                        f"shape {shape} differs from the group's {groups[gid]['shape']}")
            elif others and _reaches(g, others, groups[gid]["members"], position):
                g.graph["notes"].append(f"%{nid} {g.nodes[nid]['op']} not fused into group %{gid}: another "
                                        "consumer feeds that group (fusing would form a cycle)")
            else:
                target = gid  # consumers outside the group read it as an extra output
        elif len(consumer_groups) > 1:
            g.graph["notes"].append(f"%{nid} {g.nodes[nid]['op']} not fused: its consumers are in "
                                    f"{len(consumer_groups)} different kernels")
        if target is None:
            target = nid
            groups[nid] = {"shape": shape, "members": []}
        groups[target]["members"].append(nid)
        group_of[nid] = target
    b = GraphBuilder(g)
    collapsed = False
    for gid, group in groups.items():
        if len(group["members"]) > 1:
            _collapse(b, list(reversed(group["members"])), live_out)
            collapsed = True
    if collapsed:  # scalar constants the fused bodies now hold in place (once: per group it was quadratic)
        for nid in list(g.nodes):
            if g.nodes[nid]["op"] == "constant" and g.out_degree(nid) == 0 and nid not in g.graph["outputs"] \
                    and not g.nodes[nid]["attrs"].get("array"):
                g.remove_node(nid)
    return g


def _collapse(b, members, live_out):
    """Replace ``members`` (topologically ordered) by one fused node."""
    g = b.g
    external, body, position = [], [], {}
    for m in members:
        args = []
        for u in operands(g, m):
            if u in position:
                args.append(["m", position[u]])
            elif _is_inline_constant(g, u):  # scalar constants are evaluated in place
                args.append(["m", len(body)])
                body.append({"op": "constant", "args": [],
                             "attrs": {"value": g.nodes[u]["attrs"]["value"], "dtype": g.nodes[u]["type"].dtype}})
            else:
                if u not in external:
                    external.append(u)
                args.append(["in", external.index(u)])
        position[m] = len(body)
        body.append({"op": g.nodes[m]["op"], "attrs": dict(g.nodes[m]["attrs"]), "args": args})
    index = set(members)
    outs = [m for m in members if m in live_out or any(v not in index for v in g.successors(m))]
    attrs = {"body": body, "outputs": [position[m] for m in outs]}
    layers = [g.nodes[m].get("layer") for m in members if g.nodes[m].get("layer")]
    prev_layer, b.layer = b.layer, layers[-1] if layers else None
    fused = b.add("fused", external, attrs)
    b.layer = prev_layer
    g.nodes[fused]["fused"] = [g.nodes[m]["op"] for m in members]
    replacement = {}
    for k, m in enumerate(outs):
        replacement[m] = fused if len(outs) == 1 else b.tuple_item(fused, k)
    for m in outs:
        for _, v, key in list(g.out_edges(m, keys=True)):
            if v in index:
                continue
            g.remove_edge(m, v, key)
            g.add_edge(replacement[m], v, key=key)
        g.graph["outputs"] = [replacement.get(o, o) if o == m else o for o in g.graph["outputs"]]
        g.graph["updates"] = {var: (replacement[m] if val == m else val) for var, val in g.graph["updates"].items()}
    for m in members:
        g.remove_node(m)


# ---- epilogues: a contraction and the element-wise node that consumes it -----------------------

def _body_of(g, nid):
    node = g.nodes[nid]
    if node["op"] == "fused":
        return [dict(m, args=[list(a) for a in m["args"]]) for m in node["attrs"]["body"]], list(node["attrs"]["outputs"])
    n = len(operands(g, nid))
    return [{"op": node["op"], "attrs": dict(node["attrs"]), "args": [["in", i] for i in range(n)]}], [0]


def _epilogue_operand_ok(shape, head_shape):
    """An epilogue reads its other operands at the head's element or along its last axis."""
    return tuple(shape) in (tuple(head_shape), (head_shape[-1],), ())


def _epilogue_head(g, nid, live_out, heads):
    """The head node ``nid`` absorbs as its epilogue (the one saving the most bytes), or None;
    a note says why each other candidate was refused, and what the fusion saves."""
    node = g.nodes[nid]
    if node["op"] != "fused" and get_op(node["op"]).kind != "elementwise":
        return None
    out_types = node["type"] if isinstance(node["type"], tuple) else (node["type"],)
    candidates = []
    for u in sorted(set(operands(g, nid))):
        head = g.nodes[u]
        if head["op"] not in heads or head["type"].dtype != "float32":
            continue
        why = None
        if u in live_out or set(g.successors(u)) != {nid}:
            why = "its result is also used elsewhere"
        elif any(t.shape != head["type"].shape for t in out_types):
            why = "the epilogue's shape differs"
        elif not all(_epilogue_operand_ok(g.nodes[v]["type"].shape, head["type"].shape)
                     for v in operands(g, nid) if v != u):
            why = "an operand broadcasts along other axes than the last"
        elif head["op"] in POOL_GRADS and windows_overlap(head["op"], head["attrs"]):
            why = "its windows overlap: it adds into its result, so no epilogue can run where it stores"
        if why:
            g.graph["notes"].append(f"%{u} {head['op']} not fused with its consumer %{nid}: {why}")
            continue
        candidates.append((_bytes(head["type"]) * 2, u))
    if not candidates:
        return None
    saved, u = max(candidates)
    score = f"saves {saved} bytes" if saved else "saves a pass over its result (size not static)"
    g.graph["notes"].append(f"%{u} {g.nodes[u]['op']} fused with its consumer %{nid} {node['op']}: {score} "
                            f"(its result is neither written nor read back)")
    return u


def _bytes(t):
    """Bytes of a tensor of type ``t`` (0 when its shape is not static)."""
    return num_elements(t.shape) * ITEMSIZE[t.dtype] if t.is_static else 0


def fuse_epilogues(g, heads, updates_in_place=False):
    """Merge each head whose op is in ``heads`` (the backend's capability: which of its kernels
    take an epilogue) into the element-wise node consuming it (bias, activation, activation
    gradients), as one `fused_contraction` node (a contraction head) or `fused_pool_grad` node
    (a pooling gradient). ``updates_in_place``: the memory plan will compute state updates in
    their variables' buffers, so an optimizer step fused into a weight gradient's product gets
    the product as an output of its own (``_updates_all_outputs``)."""
    g = copy_graph(g)
    g.graph["notes"] = list(g.graph.get("notes", []))
    live_out = set(g.graph["outputs"]) | set(g.graph["updates"].values())
    b = GraphBuilder(g)
    for nid in topo_order(g):
        if nid not in g:
            continue
        head = _epilogue_head(g, nid, live_out, heads)
        if head is None:
            continue
        body, outputs = _body_of(g, nid)
        product_out = updates_in_place and _updates_all_outputs(g, nid)
        if product_out:
            body, outputs = _with_product_output(body, outputs)
        head_operands = operands(g, head)
        extras = [u for u in dict.fromkeys(operands(g, nid)) if u != head]
        position = {u: i for i, u in enumerate(extras)}
        old = operands(g, nid)
        for m in body:
            m["args"] = [["acc", 0] if kind == "in" and old[i] == head else
                         (["in", position[old[i]]] if kind == "in" else [kind, i]) for kind, i in m["args"]]
        attrs = {"head": g.nodes[head]["op"], "head_attrs": dict(g.nodes[head]["attrs"]),
                 "n_head": len(head_operands), "body": body, "outputs": outputs}
        if product_out:  # output 0 holds the product for the epilogue alone (nothing consumes it)
            attrs["private_product"] = True
        prev_layer, b.layer = b.layer, g.nodes[nid].get("layer") or g.nodes[head].get("layer")
        fused_op = "fused_pool_grad" if g.nodes[head]["op"] in STORE_EPILOGUE_HEADS else "fused_contraction"
        new = b.add(fused_op, head_operands + extras, attrs)
        b.layer = prev_layer
        g.nodes[new]["fused"] = [g.nodes[head]["op"]] + (g.nodes[nid].get("fused") or [g.nodes[nid]["op"]])
        for _, v, key in list(g.out_edges(nid, keys=True)):
            g.remove_edge(nid, v, key)
            g.add_edge(new, v, key=key)
            if product_out:  # every consumer is a tuple_item: the outputs moved up by one
                g.nodes[v]["attrs"] = dict(g.nodes[v]["attrs"], index=g.nodes[v]["attrs"]["index"] + 1)
        g.graph["outputs"] = [new if o == nid else o for o in g.graph["outputs"]]
        g.graph["updates"] = {var: (new if val == nid else val) for var, val in g.graph["updates"].items()}
        g.remove_nodes_from([nid, head])
    return g


def _updates_all_outputs(g, nid):
    """Whether every result of multi-output element-wise node ``nid`` is a state update (an
    optimizer step with slots: the new weight and momenta). Its product then gets an output of
    its own: a fused contraction computes the product in its first output before the epilogue
    reads it, so that output cannot be a variable's buffer (passes/memory_plan.py), and
    otherwise one of the updates would be copied into its variable after every step."""
    if not isinstance(g.nodes[nid]["type"], tuple):
        return False
    updates = set(g.graph["updates"].values())
    consumers = set(g.successors(nid))
    return all(g.nodes[v]["op"] == "tuple_item" and v in updates for v in consumers) and len(consumers) == len(
        g.nodes[nid]["type"])


def _with_product_output(body, outputs):
    """``body``/``outputs`` with the head's product as output 0 (an exact float32 cast of it),
    member references shifted past the new first member."""
    shifted = [dict(m, args=[[kind, i + 1] if kind == "m" else [kind, i] for kind, i in m["args"]]) for m in body]
    product = {"op": "cast", "attrs": {"dtype": "float32"}, "args": [["acc", 0]]}
    return [product] + shifted, [0] + [j + 1 for j in outputs]


# ---- bias gradients: a weight gradient and the sum of its dy -----------------------------------

def fuse_bias_gradients(g, heads):
    """Merge each weight gradient whose op is in ``heads`` (the backend's capability) with a sum
    of its dy (operand 1) over every axis but the last into one `fused_bias_grad` node."""
    g = copy_graph(g)
    g.graph["notes"] = list(g.graph.get("notes", []))
    b = GraphBuilder(g)
    for nid in topo_order(g):
        if nid not in g or g.nodes[nid]["op"] not in heads:
            continue
        head = g.nodes[nid]
        x, dy = operands(g, nid)
        dy_type = g.nodes[dy]["type"]
        bias_axes = tuple(range(len(dy_type.shape) - 1))
        sums = [v for v in sorted(set(g.successors(dy))) if g.nodes[v]["op"] == "sum"
                and _normalized_axes(g.nodes[v]["attrs"].get("axes"), len(dy_type.shape)) == bias_axes
                and not g.nodes[v]["attrs"].get("keepdims", False)]
        if not sums or dy_type.dtype != "float32":
            continue
        total = sums[0]
        if _reaches(g, [total], [x]):
            g.graph["notes"].append(f"%{total} sum not fused with %{nid} {head['op']}: the input of the weight "
                                    "gradient depends on it")
            continue
        prev_layer, b.layer = b.layer, head.get("layer")
        fused = b.add("fused_bias_grad", [x, dy], {"head": head["op"], "head_attrs": dict(head["attrs"]),
                                                   "axes": bias_axes})
        g.nodes[fused]["fused"] = [head["op"], "sum"]
        results = [b.tuple_item(fused, 0), b.tuple_item(fused, 1)]
        b.layer = prev_layer
        for old, new in zip((nid, total), results):
            redirect_uses(g, old, new, keep=results)
        g.remove_nodes_from([nid, total])
        score = f"saves {_bytes(dy_type)} bytes" if dy_type.is_static else "saves a pass over dy (size not static)"
        g.graph["notes"].append(f"%{total} sum fused with %{nid} {head['op']} as %{fused} fused_bias_grad: {score} "
                                "(dy is read once for both)")
    return g


def fuse_dy_producers(g, heads):
    """Merge into each `fused_bias_grad` (and each `fused_conv2d_grads`) the pooling gradient
    computing its dy (a `fused_pool_grad` node or a bare one), when that gradient is in ``heads``
    (the backend's capability: Capabilities.bias_grad_dy_heads) and the node is its only reader
    (the first convolution of a network, whose input takes no gradient; a pair of gradients):
    the kernel computes dy an image at a time into memory that stays in cache, so dy is neither
    written out nor read back (scored by twice its bytes)."""
    g = copy_graph(g)
    g.graph["notes"] = list(g.graph.get("notes", []))
    live_out = set(g.graph["outputs"]) | set(g.graph["updates"].values())
    b = GraphBuilder(g)
    for nid in topo_order(g):
        if nid not in g or g.nodes[nid]["op"] not in ("fused_bias_grad", "fused_conv2d_grads") \
                or "dy" in g.nodes[nid]["attrs"]:
            continue
        node = g.nodes[nid]
        paired = node["op"] == "fused_conv2d_grads"
        dy = operands(g, nid)[0 if paired else 1]
        x = operands(g, nid)[node["attrs"]["n_input_grad"] if paired else 0]
        head_attrs = _kernel_gradient(node["attrs"]["kernel_grad"]) if paired else node["attrs"]["head_attrs"]
        producer = g.nodes[dy]
        if (producer["attrs"].get("head") if producer["op"] == "fused_pool_grad" else producer["op"]) not in heads:
            continue
        why = None
        if dy in live_out or set(g.successors(dy)) != {nid} or operands(g, nid).count(dy) > 1:
            why = "its result is also used elsewhere"
        elif conv_geometry("conv2d_backward_kernel", g.nodes[x]["type"].shape, head_attrs["kernel_shape"],
                           head_attrs).pointwise:
            why = "a 1x1 convolution's weight gradient is one matrix product over all of dy"
        if why:
            g.graph["notes"].append(f"%{dy} {producer['op']} not fused into %{nid} {node['op']}: {why}")
            continue
        saved = 2 * _bytes(producer["type"])
        rest = operands(g, nid)[1:] if paired else [x]  # (without dy: operand 0 of a pair, 1 of a bias gradient)
        prev_layer, b.layer = b.layer, node.get("layer")
        new = b.add(node["op"], rest + operands(g, dy),
                    dict(node["attrs"], dy={"op": producer["op"], "attrs": dict(producer["attrs"])}))
        b.layer = prev_layer
        g.nodes[new]["fused"] = list(producer.get("fused") or [producer["op"]]) + list(node.get("fused") or [])
        redirect_uses(g, nid, new, keep=[new])
        g.remove_nodes_from([nid, dy])
        readers = "both gradients read" if paired else "the weight gradient reads"
        g.graph["notes"].append(f"%{dy} {producer['op']} fused into %{nid} {node['op']} as %{new}: saves {saved} "
                                f"bytes (dy is computed where {readers} it, never written out)")
    return g


def _input_gradient(node):
    """The conv2d_backward_input a node computes (bare, or a fused_contraction's head with no
    pooling) as (its attrs), else None."""
    if node["op"] == "conv2d_backward_input":
        return node["attrs"]
    if node["op"] == "fused_contraction" and node["attrs"]["head"] == "conv2d_backward_input" \
            and node["attrs"].get("pool") is None:
        return node["attrs"]["head_attrs"]
    return None


def _kernel_gradient(node):
    """The conv2d_backward_kernel a node computes (bare, or a fused_bias_grad's head reading dy)
    as (its attrs), else None."""
    if node["op"] == "conv2d_backward_kernel":
        return node["attrs"]
    if node["op"] == "fused_bias_grad" and node["attrs"].get("dy") is None:
        return node["attrs"]["head_attrs"]
    return None


WINDOW_ATTRS = ("strides", "padding", "dilation")


def pair_conv_gradients(g, shares_dy):
    """Merge each convolution's input gradient and kernel gradient that read the same dy (each
    bare or already fused: an epilogue on dx, the bias gradient with dK) into one
    `fused_conv2d_grads` node when ``shares_dy(geometry)`` (the backend's capability,
    Capabilities.conv_grads_sharing_dy: its kernel for that geometry reads dy once and
    transforms it once for both products). Scored by dy's bytes (read once, not twice)."""
    g = copy_graph(g)
    g.graph["notes"] = list(g.graph.get("notes", []))
    b = GraphBuilder(g)
    for nid in topo_order(g):
        if nid not in g or _input_gradient(g.nodes[nid]) is None:
            continue
        dy, kernel = operands(g, nid)[:2]
        dx_attrs = _input_gradient(g.nodes[nid])
        pairs = [v for v in sorted(set(g.successors(dy))) if _kernel_gradient(g.nodes[v]) is not None
                 and operands(g, v)[1] == dy]
        if not pairs:
            continue
        other = pairs[0]
        dk_attrs = _kernel_gradient(g.nodes[other])
        x = operands(g, other)[0]
        why = None
        if any(dx_attrs.get(a) != dk_attrs.get(a) for a in WINDOW_ATTRS) \
                or tuple(dk_attrs["kernel_shape"]) != tuple(g.nodes[kernel]["type"].shape):
            why = "they are not the gradients of one convolution"
        elif g.nodes[dy]["type"].dtype != "float32" or not g.nodes[dy]["type"].is_static:
            why = "dy is not a static float32 tensor"
        elif _reaches(g, [nid], [other]) or _reaches(g, [other], [nid]):
            why = "one depends on the other"
        elif not shares_dy(conv_geometry("conv2d_backward_kernel", g.nodes[x]["type"].shape,
                                         dk_attrs["kernel_shape"], dk_attrs)):
            why = "the backend reads dy once for both only by Winograd, which this geometry does not take"
        if why:
            g.graph["notes"].append(f"%{nid} {g.nodes[nid]['op']} not paired with %{other} "
                                    f"{g.nodes[other]['op']}: {why}")
            continue
        dx_node, dk_node = g.nodes[nid], g.nodes[other]
        dx_ops = operands(g, nid)
        prev_layer, b.layer = b.layer, dx_node.get("layer")
        new = b.add("fused_conv2d_grads", dx_ops + [x],
                    {"input_grad": {"op": dx_node["op"], "attrs": dict(dx_node["attrs"])},
                     "kernel_grad": {"op": dk_node["op"], "attrs": dict(dk_node["attrs"])},
                     "n_input_grad": len(dx_ops)})
        b.layer = prev_layer
        g.nodes[new]["fused"] = list(dx_node.get("fused") or [dx_node["op"]]) + \
            list(dk_node.get("fused") or [dk_node["op"]])
        offset = 0
        for old in (nid, other):
            count = len(g.nodes[old]["type"]) if isinstance(g.nodes[old]["type"], tuple) else 1
            if count == 1:
                redirect_uses(g, old, b.tuple_item(new, offset), keep=[new])
            else:
                for item in list(g.successors(old)):
                    redirect_uses(g, item, b.tuple_item(new, offset + g.nodes[item]["attrs"]["index"]))
                    g.remove_node(item)
            offset += count
        g.remove_nodes_from([nid, other])
        g.graph["notes"].append(f"%{nid} {dx_node['op']} paired with %{other} {dk_node['op']} as %{new} "
                                f"fused_conv2d_grads: saves {_bytes(g.nodes[dy]['type'])} bytes (dy is read and "
                                "transformed once for both gradients)")
    return g


def _normalized_axes(axes, rank):
    if axes is None:
        return tuple(range(rank))
    return tuple(sorted(a % rank for a in (axes if isinstance(axes, (list, tuple)) else (axes,))))


# ---- pooling: a convolution's activation and the pooling layer after it ---------------------------

POOLED_EPILOGUE_OPS = frozenset({"max_pool2d", "max_pool2d_argmax"})


def fuse_pooling(g, heads):
    """Merge each max-pooling node reading an output of a `fused_contraction` whose head is in
    ``heads`` (the backend's capability) into that node, as its last result (attr ``pool``;
    max_pool2d_argmax's two results, y and idx, are its last two). The windows must tile the
    input: stride equal to the window, no padding."""
    g = copy_graph(g)
    g.graph["notes"] = list(g.graph.get("notes", []))
    live_out = set(g.graph["outputs"]) | set(g.graph["updates"].values())
    b = GraphBuilder(g)
    for nid in topo_order(g):
        if nid not in g or g.nodes[nid]["op"] not in POOLED_EPILOGUE_OPS:
            continue
        (src,) = operands(g, nid)
        fc, of = (operands(g, src)[0], g.nodes[src]["attrs"]["index"]) if g.nodes[src]["op"] == "tuple_item" \
            else (src, 0)
        head = g.nodes[fc]
        if head["op"] != "fused_contraction" or head["attrs"]["head"] not in heads:
            continue
        pooled = g.nodes[nid]
        height, width = g.nodes[src]["type"].shape[1:3]
        if "pool" in head["attrs"]:
            why = "its producer already pools another output"
        elif g.nodes[src]["type"].dtype != "float32":
            why = "its input is not float32"
        else:
            why = windows_tile(pooled["op"], pooled["attrs"], height, width)
        if why:
            g.graph["notes"].append(f"%{nid} {pooled['op']} not fused into %{fc} fused_contraction: {why}")
            continue
        saved = _bytes(g.nodes[src]["type"])
        # nothing else reads the activation (inference): the kernel need not store it at all
        # when it is the product itself, finished in place (one member output; the epilogue's
        # other operands per channel or scalars, read at no element index)
        unread = (not set(g.successors(src)) - {nid} and src not in live_out and src == fc
                  and not isinstance(head["type"], tuple)
                  and all(g.nodes[u]["type"].shape != head["type"].shape
                          for u in operands(g, fc)[head["attrs"]["n_head"]:]))
        attrs = dict(head["attrs"], pool={"op": pooled["op"], "attrs": dict(pooled["attrs"]), "of": of,
                                          "store_input": not unread})
        prev_layer, b.layer = b.layer, head.get("layer")
        new = b.add("fused_contraction", operands(g, fc), attrs)
        g.nodes[new]["fused"] = list(head.get("fused") or [head["attrs"]["head"]]) + [pooled["op"]]
        outputs = len(head["type"]) if isinstance(head["type"], tuple) else 1
        if outputs == 1:
            redirect_uses(g, fc, b.tuple_item(new, 0), keep=[new])
        else:  # its tuple_items keep their indices: the pooled result comes last
            redirect_uses(g, fc, new, keep=[new])
        if isinstance(pooled["type"], tuple):  # max_pool2d_argmax: read through its tuple_items
            for item in list(g.successors(nid)):
                redirect_uses(g, item, b.tuple_item(new, outputs + g.nodes[item]["attrs"]["index"]))
                g.remove_node(item)
        else:
            redirect_uses(g, nid, b.tuple_item(new, outputs))
        b.layer = prev_layer
        g.remove_nodes_from([fc, nid])
        g.graph["notes"].append(f"%{nid} {pooled['op']} fused into %{fc} fused_contraction as %{new}: saves "
                                f"{(2 if unread else 1) * saved} bytes (its input is pooled while in cache, "
                                "not read back" + (", nor stored: nothing else reads it)" if unread else ")"))
    return g


# ---- state updates: the element-wise kernels that compute only updates, as one kernel ----------

def fuse_updates(g):
    """Merge the element-wise kernels whose every result is a state update nothing else reads (an
    optimizer's step of each variable whose update is not the epilogue of its gradient's kernel)
    into one `fused_updates` node: one kernel call instead of one per variable, whose loop splits
    over the cores as one (schedule/elementwise.py), where updates too small to be split alone
    ran on one core. It saves no bytes, so the note scores it in kernel calls. A candidate is
    left out (with a note) when an operand broadcasts other than as one element, or when it
    reads a variable another member writes or writes one another member reads: in one kernel the
    members run interleaved, so each member's variables must be its own."""
    g = copy_graph(g)
    g.graph["notes"] = list(g.graph.get("notes", []))
    update_of = {value: var for var, value in g.graph["updates"].items()}
    members, written, read = {}, set(), set()  # member node -> the variables it updates
    for nid in topo_order(g):
        variables = _updates_only(g, nid, update_of)
        if variables is None:
            continue
        ops = set(operands(g, nid))
        why = _update_operands_problem(g, nid)
        if why is None and (ops & written or set(variables) & read):
            why = "it shares a variable with another update (each member's variables must be its own)"
        if why:
            g.graph["notes"].append(f"%{nid} {g.nodes[nid]['op']} (updates {_names(g, variables)}) not merged "
                                    f"with the other updates: {why}")
            continue
        members[nid] = variables
        written |= set(variables)
        read |= ops
    if len(members) < 2:
        return g
    b = GraphBuilder(g)
    attrs, ins = [], []
    for nid in members:
        body, outs = _body_of(g, nid)
        attrs.append({"body": body, "outputs": outs, "n_in": len(operands(g, nid))})
        ins += operands(g, nid)
    new = b.add("fused_updates", ins, {"members": attrs})
    g.nodes[new]["fused"] = [g.nodes[nid]["op"] for nid in members]  # its members: kernels (their ops: attrs)
    first = 0
    for nid, variables in members.items():
        if isinstance(g.nodes[nid]["type"], tuple):  # its results' tuple items now index the new node's
            for _, item, key in list(g.out_edges(nid, keys=True)):
                g.remove_edge(nid, item, key)
                g.add_edge(new, item, key=key)
                g.nodes[item]["attrs"] = dict(g.nodes[item]["attrs"], index=first + g.nodes[item]["attrs"]["index"])
        else:
            redirect_uses(g, nid, b.tuple_item(new, first))
        first += len(variables)
    g.remove_nodes_from(members)
    g.graph["notes"].append(f"{len(members)} update kernels merged into %{new} fused_updates: saves "
                            f"{len(members) - 1} kernel calls (one kernel updates "
                            f"{_names(g, [v for vs in members.values() for v in vs])})")
    return g


def _updates_only(g, nid, update_of):
    """The variables (in result order) whose updates node ``nid`` computes, when it is an
    element-wise kernel, every result of which is a state update that nothing else reads; else
    None."""
    node = g.nodes[nid]
    if (node["op"] != "fused" and get_op(node["op"]).kind != "elementwise") or nid in g.graph["outputs"]:
        return None
    if not isinstance(node["type"], tuple):
        return [update_of[nid]] if nid in update_of and not g.out_degree(nid) else None
    items = sorted(g.successors(nid), key=lambda v: g.nodes[v]["attrs"].get("index", -1))
    if g.out_degree(nid) != len(node["type"]) or any(
            g.nodes[v]["op"] != "tuple_item" or g.nodes[v]["attrs"]["index"] != k or v not in update_of
            or g.out_degree(v) or v in g.graph["outputs"] for k, v in enumerate(items)):
        return None
    return [update_of[v] for v in items]


def _update_operands_problem(g, nid):
    """Why update kernel ``nid`` cannot be a member of a `fused_updates` node (its results of one
    static shape; each operand with one element, or with as many as the results in the same
    order: the results' shape, or its last axes after ones), or None."""
    types = g.nodes[nid]["type"] if isinstance(g.nodes[nid]["type"], tuple) else (g.nodes[nid]["type"],)
    shape = types[0].shape
    if not all(t.is_static and t.shape == shape for t in types):
        return "its results are not all of one static shape"
    for u in operands(g, nid):
        t = g.nodes[u]["type"]
        if not t.is_static:
            return f"operand %{u} has no static shape"
        count = num_elements(t.shape)
        if count != 1 and (count != num_elements(shape) or len(t.shape) > len(shape)
                           or t.shape != shape[len(shape) - len(t.shape):]):
            return f"operand %{u} of shape {t.shape} broadcasts to {shape}"
    return None


def _names(g, variables):
    return ", ".join(g.nodes[v]["attrs"].get("name", f"%{v}") for v in variables)
