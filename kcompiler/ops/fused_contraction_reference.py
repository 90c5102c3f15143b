"""numpy reference of `fused_contraction`: the head's reference, then the epilogue's members."""
import numpy as np

from ..ir.registry import get_op, reference


@reference("fused_contraction")
def fused_contraction(*operands, head, head_attrs, n_head, body, outputs):
    acc = get_op(head).reference(*operands[:n_head], **head_attrs)
    extra = operands[n_head:]
    values = []
    for m in body:
        if m["op"] == "constant":
            values.append(np.asarray(m["attrs"]["value"], dtype=m["attrs"]["dtype"]))
            continue
        args = [acc if kind == "acc" else extra[i] if kind == "in" else values[i] for kind, i in m["args"]]
        values.append(get_op(m["op"]).reference(*args, **m["attrs"]))
    outs = [values[j] for j in outputs]
    return outs[0] if len(outs) == 1 else tuple(outs)
