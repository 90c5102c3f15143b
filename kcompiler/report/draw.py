"""An IR graph drawn as SVG for the report: one box per node, coloured by phase (parameters,
forward, backward), a fused node drawn as a thick box listing its member ops.

Graphviz's ``dot`` lays the graph out when the program and the ``graphviz`` Python package are
installed (``pip install kcompiler[report]``); otherwise a plain layered layout made here:
each node one layer below its deepest operand (parameters just above their first consumer),
the nodes of a layer ordered by the mean position of their operands. Either way every node is
an SVG ``<g class="node" id="node-ID">`` the page's script makes clickable. The phases
(collect.phases) are told apart by colour: parameters grey, forward blue, backward orange,
unused white.
"""
import html
import shutil

from ..ir.graph import operands, topo_order
from ..ir.printer import _fmt_type

COLOURS = {"param": ("#eeeeee", "#888888"), "forward": ("#dbe9f6", "#2b6cb0"), "backward": ("#fde8d7", "#c05621"),
           "unused": ("#ffffff", "#bbbbbb")}
MEMBERS_PER_LINE = 4
CHAR_WIDTH, LINE_HEIGHT, PAD = 7, 15, 8
GAP_X, GAP_Y = 18, 40


def node_lines(g, nid):
    """The text of a node's box: its id and op, its type, and for a fused node its members."""
    node = g.nodes[nid]
    lines = [f"%{nid} {node['op']}", _fmt_type(node["type"])]
    members = node.get("fused") or []  # a fused contraction's head comes first
    for i in range(0, len(members), MEMBERS_PER_LINE):
        lines.append(" · ".join(members[i:i + MEMBERS_PER_LINE]))
    return lines


def _is_fused(g, nid):
    return g.nodes[nid]["op"].startswith("fused")


def draw(g, phase):
    if shutil.which("dot"):
        try:
            import graphviz
        except ImportError:
            return draw_layered(g, phase)
        return draw_graphviz(g, phase, graphviz)
    return draw_layered(g, phase)


def draw_graphviz(g, phase, graphviz):
    dot = graphviz.Digraph(graph_attr={"rankdir": "TB", "nodesep": "0.15", "ranksep": "0.3"},
                           node_attr={"shape": "box", "fontname": "monospace", "fontsize": "10", "style": "filled"},
                           edge_attr={"color": "#999999", "arrowsize": "0.6"})
    for nid in topo_order(g):
        fill, stroke = COLOURS[phase[nid]]
        lines = [html.escape(line) for line in node_lines(g, nid)]
        label = "<" + "<br/>".join([f"<b>{lines[0]}</b>"] + lines[1:]) + ">"
        dot.node(f"n{nid}", label=label, id=f"node-{nid}", fillcolor=fill, color=stroke,
                 penwidth="2.5" if _is_fused(g, nid) else "1")
    for u, v, _ in g.edges(keys=True):
        dot.edge(f"n{u}", f"n{v}")
    svg = dot.pipe(format="svg", encoding="utf-8")
    return svg[svg.index("<svg"):]  # the XML prolog and doctype do not belong inside HTML


def _layers(g, order):
    layer = {}
    for nid in order:
        preds = list(g.predecessors(nid))
        layer[nid] = max((layer[u] + 1 for u in preds), default=0)
    for nid in order:  # a source sits just above its first consumer, not at the top
        if not any(True for _ in g.predecessors(nid)):
            succ = [layer[v] for v in g.successors(nid)]
            if succ:
                layer[nid] = max(min(succ) - 1, 0)
    return layer


def draw_layered(g, phase):
    order = topo_order(g)
    layer = _layers(g, order)
    rows = {}
    for nid in order:
        rows.setdefault(layer[nid], []).append(nid)
    size = {}
    for nid in order:
        lines = node_lines(g, nid)
        size[nid] = (max(len(s) for s in lines) * CHAR_WIDTH + 2 * PAD, len(lines) * LINE_HEIGHT + PAD)
    position = {}
    for depth in sorted(rows):  # barycentre ordering, top-down, then place left to right
        row = rows[depth]
        row.sort(key=lambda n: sum(position[u][0] for u in operands(g, n) if u in position)
                 / max(1, sum(1 for u in operands(g, n) if u in position)))
        x = 0
        for nid in row:
            position[nid] = (x + size[nid][0] / 2, None)
            x += size[nid][0] + GAP_X
    width = max(sum(size[n][0] + GAP_X for n in row) for row in rows.values()) if rows else 0
    y = GAP_Y / 2
    for depth in sorted(rows):
        row = rows[depth]
        shift = (width - sum(size[n][0] + GAP_X for n in row)) / 2  # centre each row
        for nid in row:
            position[nid] = (position[nid][0] + shift, y)
        y += max(size[n][1] for n in row) + GAP_Y
    height = y
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="11">',
             '<defs><marker id="arrow" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="6" markerHeight="6" '
             'orient="auto"><path d="M0,0 L6,3 L0,6 z" fill="#777"/></marker></defs>']
    for u, v, _ in g.edges(keys=True):
        (x1, y1), (x2, y2) = position[u], position[v]
        y1 += size[u][1]
        mid = (y1 + y2) / 2
        parts.append(f'<path class="edge" d="M{x1:.0f},{y1:.0f} C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} '
                     f'{x2:.0f},{y2:.0f}" fill="none" stroke="#999" marker-end="url(#arrow)"/>')
    for nid in order:
        (cx, top), (w, h) = position[nid], size[nid]
        fill, stroke = COLOURS[phase[nid]]
        lines = node_lines(g, nid)
        parts.append(f'<g class="node" id="node-{nid}"><title>%{nid}</title>'
                     f'<rect x="{cx - w / 2:.0f}" y="{top:.0f}" width="{w:.0f}" height="{h:.0f}" rx="3" '
                     f'fill="{fill}" stroke="{stroke}" stroke-width="{2.5 if _is_fused(g, nid) else 1}"/>')
        for i, line in enumerate(lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            parts.append(f'<text x="{cx:.0f}" y="{top + PAD / 2 + (i + 0.8) * LINE_HEIGHT:.0f}" '
                         f'text-anchor="middle"{weight}>{html.escape(line)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)
