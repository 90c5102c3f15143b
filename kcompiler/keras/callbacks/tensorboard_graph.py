"""The compiled training step as a TensorFlow ``GraphDef``, for TensorBoard's graph tab.

One ``NodeDef`` per IR node of the program's final stage, named ``<layer>/<op>_<id>`` (no
layer prefix for nodes no layer made: loss, metrics, optimizer; inputs and variables by their
names: ``y``, ``dense/kernel``, ``adam/dense_kernel_momentum``), its ``op`` the IR op name and
its inputs the node's operands in order. A node the fusion pass made (``fused``,
``fused_contraction``, ``fused_pool_grad``) becomes a name scope ``<layer>/<op>_<id>/`` that
holds one node per member op (``<member op>_<index>``; a contraction's head as ``<head op>``),
wired as the group's body wires them, so TensorBoard draws each fused group as one box that
opens onto the ops it fuses. ``tuple_item`` nodes are not drawn: their consumers read the
group's member (or the node's output ``:k``) directly. Each variable's new value feeds an
``assign`` node under ``updates/``.

Attributes: ``_output_shapes`` (the shapes TensorBoard labels edges with) and ``dtype`` on
every node whose type is known, ``kernel`` (the generated kernel's name, as
``Program.kernel_cycles`` and TensorBoard's ``kernel_cycles/`` scalars name it) on every node
that runs as a kernel, ``layer``, and the IR attributes as strings.
"""
import re

import numpy as np
from tensorboard.compat.proto import attr_value_pb2, graph_pb2, tensor_shape_pb2, types_pb2

from ...ir.graph import operands, topo_order
from ...ops.fused import member_types
from ...ops.fused_contraction import head_type

GROUP_OPS = ("fused", "fused_contraction", "fused_pool_grad")

_DTYPES = {"float32": types_pb2.DT_FLOAT, "float64": types_pb2.DT_DOUBLE, "float16": types_pb2.DT_HALF,
           "int32": types_pb2.DT_INT32, "int64": types_pb2.DT_INT64, "int8": types_pb2.DT_INT8,
           "uint8": types_pb2.DT_UINT8, "bool": types_pb2.DT_BOOL}


def _name_part(text):
    """``text`` in the characters a TensorFlow node name allows."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(text)) or "_"


def _path_name(text):
    """``text`` as a node name that keeps its '/' scopes ('dense/kernel')."""
    return "/".join(_name_part(part) for part in str(text).split("/") if part)


def _scope(node):
    """'<layer name>/' for a node a layer made (its ``layer`` is "Class 'name'"), else ''."""
    layer = node.get("layer")
    if not layer:
        return ""
    match = re.search(r"'(.*)'", layer)
    return _name_part(match.group(1) if match else layer) + "/"


def _node_name(node, nid, graph):
    """'<layer>/<op>_<id>'; inputs and variables by their own names ('x', 'dense/kernel')."""
    own = node["attrs"].get("name") if node["op"] in ("input", "variable") else None
    if own:
        name = _path_name(own)
        if name and all(n.name != name for n in graph.node):
            return name
    return f"{_scope(node)}{node['op']}_{nid}"


def _types(t):
    return list(t) if isinstance(t, tuple) else [t]


def _type_attrs(types):
    shapes = [tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None
                                                                                           else int(d))
                                                     for d in t.shape])
              for t in types]
    attrs = {"_output_shapes": attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(shape=shapes))}
    dtype = _DTYPES.get(str(np.dtype(types[0].dtype))) if types else None
    if dtype is not None:
        attrs["dtype"] = attr_value_pb2.AttrValue(type=dtype)
    return attrs


def _string_attrs(attrs, **extra):
    out = {k: attr_value_pb2.AttrValue(s=str(v).encode()) for k, v in attrs.items()
           if k not in ("body", "outputs", "head_attrs")}
    out.update({k: attr_value_pb2.AttrValue(s=str(v).encode()) for k, v in extra.items() if v})
    return out


def graph_def(g, kernel_names=None):
    """The GraphDef of IR graph ``g``; ``kernel_names``: {node id: generated kernel name}."""
    kernel_names = kernel_names or {}
    out = graph_pb2.GraphDef()
    refs = {}  # (node id, output index) -> the name of the NodeDef (":k") that holds it

    def ref(nid):
        return refs[(nid, 0)]

    for nid in topo_order(g):
        node = g.nodes[nid]
        op = node["op"]
        ins = [ref(u) for u in operands(g, nid)]
        extra = {"layer": node.get("layer"), "kernel": kernel_names.get(nid)}
        if op == "tuple_item":
            (source,) = operands(g, nid)
            refs[(nid, 0)] = refs[(source, node["attrs"]["index"])]
            continue
        name = _node_name(node, nid, out)
        types = _types(node["type"])
        if op in GROUP_OPS:
            outputs = _add_group(out, name, node, ins, [g.nodes[u]["type"] for u in operands(g, nid)], extra)
        else:
            out.node.add(name=name, op=op, input=ins,
                         attr={**_type_attrs(types), **_string_attrs(node["attrs"], **extra)})
            outputs = [name if k == 0 else f"{name}:{k}" for k in range(len(types))]
        for k, output in enumerate(outputs):
            refs[(nid, k)] = output
    for var, value in g.graph.get("updates", {}).items():
        var_name = g.nodes[var]["attrs"].get("name", f"variable_{var}")
        out.node.add(name=f"updates/{_path_name(var_name)}", op="assign", input=[ref(var), ref(value)],
                     attr=_type_attrs(_types(g.nodes[var]["type"])))
    return out


def _add_group(out, scope, node, ins, in_types, extra):
    """The members of fused node ``node`` as nodes under ``scope``; returns the names that hold
    its outputs, in order."""
    attrs = node["attrs"]
    n_head = attrs.get("n_head", 0)
    acc = acc_type = None
    if n_head:
        head_name = f"{scope}/{attrs['head']}"
        acc_type = head_type(in_types, attrs)
        out.node.add(name=head_name, op=attrs["head"], input=ins[:n_head],
                     attr={**_type_attrs([acc_type]), **_string_attrs(attrs["head_attrs"], **extra)})
        acc = head_name
    body_ins, body_in_types = ins[n_head:], in_types[n_head:]
    types = member_types(body_in_types, attrs, acc=acc_type)
    names = []
    for j, (member, t) in enumerate(zip(attrs["body"], types)):
        name = f"{scope}/{member['op']}_{j}"
        member_ins = [acc if kind == "acc" else body_ins[i] if kind == "in" else names[i]
                      for kind, i in member["args"]]
        out.node.add(name=name, op=member["op"], input=member_ins,
                     attr={**_type_attrs([t]), **_string_attrs(member.get("attrs", {}), **extra)})
        names.append(name)
    return [names[j] for j in attrs["outputs"]]
