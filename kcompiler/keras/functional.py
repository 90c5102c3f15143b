"""The functional API's bookkeeping: which call made which symbolic tensor.

Tensors derived from ``keras.Input`` live in one construction graph. Each layer
call (and each bare ``keras.ops`` call between layers) on them leaves a CallRecord
on its outputs; a functional Model replays those records on fresh tensors to
trace itself into a new graph, exactly as Keras re-runs its node graph.
"""
import itertools

from .layers.base import flatten, map_structure

_order = itertools.count()


class CallRecord:
    def __init__(self, layer, fn, inputs, rest, kwargs, outputs):
        self.layer = layer        # the Layer called, or None for a bare op
        self.fn = fn              # replays the call: fn(inputs, *rest, **kwargs)
        self.inputs = inputs
        self.rest = rest
        self.kwargs = kwargs
        self.outputs = outputs
        self.order = next(_order)

    def input_tensors(self):
        from .tensor import SymbolicTensor
        return [t for t in flatten([self.inputs, list(self.rest), list(self.kwargs.values())])
                if isinstance(t, SymbolicTensor)]


def record_layer_call(layer, inputs, rest, kwargs, outputs):
    rec = CallRecord(layer, layer.__call__, inputs, rest, kwargs, outputs)
    for t in flatten(outputs):
        t._keras_history = rec
    layer._inbound.append(rec)


def record_op_call(op, inputs, attrs, output):
    from .backend import apply_op

    def replay(xs, **kw):
        return apply_op(op, list(xs), **attrs)
    output._keras_history = CallRecord(None, replay, list(inputs), (), {}, output)


def collect_records(outputs):
    """Every CallRecord the outputs depend on, in creation (= topological) order."""
    seen, stack = {}, [t for t in flatten(outputs)]
    while stack:
        t = stack.pop()
        rec = getattr(t, "_keras_history", None)
        if rec is None or id(rec) in seen:
            continue
        seen[id(rec)] = rec
        stack.extend(rec.input_tensors())
    return sorted(seen.values(), key=lambda r: r.order)


def replay(model_inputs, model_outputs, new_inputs):
    """Re-run the calls between ``model_inputs`` and ``model_outputs`` on ``new_inputs``."""
    memo = {id(old): new for old, new in zip(flatten(model_inputs), flatten(new_inputs))}
    for rec in collect_records(model_outputs):
        if all(id(t) in memo for t in flatten(rec.outputs)):
            continue  # an InputLayer, already mapped
        missing = [t for t in rec.input_tensors() if id(t) not in memo]
        if missing:
            raise ValueError(f"the functional model's graph is disconnected: {missing[0]!r} is needed by "
                             f"{rec.layer._describe() if rec.layer else 'an op'} but is not derived from the "
                             "model's inputs")

        def sub(x):
            return memo.get(id(x), x)
        outs = rec.fn(map_structure(sub, rec.inputs), *map_structure(sub, rec.rest),
                      **{k: map_structure(sub, v) for k, v in rec.kwargs.items()})
        for old, new in zip(flatten(rec.outputs), flatten(outs)):
            memo[id(old)] = new
    return map_structure(lambda t: memo[id(t)], model_outputs)
