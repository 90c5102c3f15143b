"""Human- and machine-readable dumps of an IR graph: text, networkx node-link JSON, Graphviz DOT."""
import json

import networkx as nx

from .graph import operands, topo_order


def _fmt_type(t):
    if isinstance(t, tuple):
        return "(" + ", ".join(str(x) for x in t) + ")"
    return str(t)


def _fmt_attrs(attrs):
    # A fused node's body is listed by op name after the type (fused=[...]); JSON has it in full.
    shown = {k: v for k, v in attrs.items() if k not in ("array", "body", "outputs")}
    if not shown:
        return ""
    return " {" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + "}"


def to_text(g, stage=None):
    """One op per line: id, op, attrs, operands, type, the layer it came from, and (after
    fusion) the ops a node fuses."""
    title = g.graph.get("name", "graph")
    lines = [f"graph {title}" + (f" (stage: {stage})" if stage else "")]
    for nid in topo_order(g):
        node = g.nodes[nid]
        args = ", ".join(f"%{u}" for u in operands(g, nid))
        line = f"  %{nid} = {node['op']}{_fmt_attrs(node['attrs'])}({args}) : {_fmt_type(node['type'])}"
        if node.get("fused"):
            line += "  fused=[" + ", ".join(node["fused"]) + "]"
        if node.get("layer"):
            line += f"  # {node['layer']}"
        lines.append(line)
        if "kernel" in node:  # the scheduled stage: the node's target-neutral kernel description
            lines += ["      " + k for k in str(node["kernel"]).splitlines()]
    lines.append("outputs: " + ", ".join(f"%{o}" for o in g.graph["outputs"]))
    if g.graph.get("updates"):
        lines.append("updates: " + ", ".join(f"%{v} <- %{u}" for v, u in g.graph["updates"].items()))
    collective = g.graph.get("plan", {}).get("collective")
    if collective:  # a data-parallel step (passes/memory_plan.py): where the all-reduce splits it
        order = g.graph["plan"]["order"]
        split = collective["split"]
        lines.append(f"collective: %{collective['node']} all_reduce in place over arena bytes "
                     f"[{collective['offset']}, {collective['offset'] + collective['bytes']}) (its operands, then "
                     f"{collective['extra_slots']} float32 slots); kernels {_span(order[:split])} run before it "
                     f"(kc_entry), {_span(order[split:])} after (kc_entry_update)")
    for note in g.graph.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def _span(nodes):
    return f"%{nodes[0]}..%{nodes[-1]}" if nodes else "none"


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def to_json(g):
    """networkx node-link JSON; node types as plain shape lists and dtype strings."""
    h = nx.MultiDiGraph()
    for nid in g.nodes:
        node = g.nodes[nid]
        h.add_node(nid, op=node["op"], attrs=_plain(node["attrs"]), shape=_plain(node["shape"]),
                   dtype=_plain(node["dtype"]), layer=node.get("layer"),
                   **({"fused": list(node["fused"])} if node.get("fused") else {}),
                   **({"kernel": str(node["kernel"])} if "kernel" in node else {}))
    for u, v, k in g.edges(keys=True):
        h.add_edge(u, v, key=k, operand=k)
    h.graph.update(name=g.graph.get("name"), inputs=list(g.graph["inputs"]), outputs=list(g.graph["outputs"]),
                   updates={str(k): v for k, v in g.graph.get("updates", {}).items()})
    data = nx.node_link_data(h, edges="edges")
    return json.dumps(data, indent=1)


def _dot_escape(s):
    return str(s).replace("\\", "\\\\").replace('"', '\\"')


def to_dot(g):
    """Graphviz DOT: one box per op labelled with its op and type; edges labelled with the operand index."""
    lines = [f'digraph "{_dot_escape(g.graph.get("name", "graph"))}" {{', "  node [shape=box, fontname=monospace];"]
    for nid in topo_order(g):
        node = g.nodes[nid]
        label = f"%{nid} {node['op']}\\n{_dot_escape(_fmt_type(node['type']))}"
        style = ', style=filled, fillcolor="#e8e8e8"' if node["op"] in ("input", "variable", "constant") else ""
        lines.append(f'  n{nid} [label="{label}"{style}];')
    for u, v, k in sorted(g.edges(keys=True)):
        lines.append(f'  n{u} -> n{v} [label="{k}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def dump(g, fmt="text", stage=None):
    if fmt == "text":
        return to_text(g, stage)
    if fmt == "json":
        return to_json(g)
    if fmt == "dot":
        return to_dot(g)
    raise ValueError(f"unknown dump format {fmt!r}; expected 'text', 'json' or 'dot'")
