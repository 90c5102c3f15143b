"""numpy references of the `fused` op (its members one after another) and of `fused_updates`
(each of its members' bodies on its own operands)."""
import numpy as np

from ..ir.registry import get_op, reference
from .fused import update_members


def evaluate_members(body, outputs, operands, acc=None):
    """Run the members one after another; ``acc`` is what an ``["acc", 0]`` ref reads."""
    values = []
    for m in body:
        if m["op"] == "constant":
            values.append(np.asarray(m["attrs"]["value"], dtype=m["attrs"]["dtype"]))
            continue
        args = [acc if kind == "acc" else operands[i] if kind == "in" else values[i] for kind, i in m["args"]]
        values.append(get_op(m["op"]).reference(*args, **m["attrs"]))
    outs = [values[j] for j in outputs]
    return outs[0] if len(outs) == 1 else tuple(outs)


@reference("fused")
def fused(*operands, body, outputs):
    return evaluate_members(body, outputs, operands)


@reference("fused_updates")
def fused_updates(*operands, members):
    results = []
    for m, ins, _ in update_members(members):
        value = evaluate_members(m["body"], m["outputs"], operands[ins])
        results += list(value) if isinstance(value, tuple) else [value]
    return tuple(results)
