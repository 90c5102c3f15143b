"""Parameter ops: graph inputs, Keras variables, constants, and the item of a multi-output op."""
from ..errors import ShapeError
from ..ir.registry import register


def _declared(in_types, attrs):
    # Parameter nodes are created with their type; the rule only runs on re-inference,
    # where the type already on the node stands (see passes/shape_inference.py).
    raise ShapeError("parameter nodes carry their type; it cannot be inferred")


register("input", shape=_declared, kind="parameter", doc="a graph input (data, labels, runtime scalars)")
register("variable", shape=_declared, kind="parameter", doc="a Keras variable (weight or state)")
register("constant", shape=_declared, kind="parameter",
         doc="a constant: scalar attrs['value'], or an array kept in graph['constants']")


def _tuple_item_shape(in_types, attrs):
    t, i = in_types[0], attrs["index"]
    if not isinstance(t, tuple) or not 0 <= i < len(t):
        raise ShapeError(f"tuple_item: index {i} out of range")
    return t[i]


def _tuple_item_vjp(b, nid, dy):
    # Gradients of multi-output ops are gathered by the autodiff pass per item.
    raise AssertionError("tuple_item cotangents are handled by the autodiff pass")


register("tuple_item", shape=_tuple_item_shape, vjp=_tuple_item_vjp, kind="injective",
         doc="output `index` of a multi-output op")
