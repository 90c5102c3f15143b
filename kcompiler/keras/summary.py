"""model.summary() in the tf.keras 2 text format (the seed document's tables)."""
from .models import InputLayer, Sequential


def _print_row(fields, positions, print_fn):
    line = ""
    for i, field in enumerate(fields):
        if i > 0:
            line = line[:-1] + " "
        line += str(field)
        line = line[:positions[i]]
        line += " " * (positions[i] - len(line))
    print_fn(line)


def _shape_text(shapes):
    shapes = list(shapes)
    if len(shapes) == 1:
        return str(tuple(shapes[0]))
    return str([tuple(s) for s in shapes])


def _layer_output_shape(layer, model):
    """What tf.keras 2's layer.output_shape prints: the shape if every call gave the same
    shapes, 'multiple' otherwise (and for layers inside a subclassed model)."""
    if isinstance(model, Sequential):
        i = model.layers.index(layer)
        return str(tuple(model._outputs_per_layer[i].shape))
    if not getattr(model, "_is_functional", False):
        return "multiple"
    texts = set()
    for rec in layer._inbound:
        outs = rec.outputs if isinstance(rec.outputs, (list, tuple)) else [rec.outputs]
        text = _shape_text(o.shape for o in outs)
        texts.add("[" + text + "]" if isinstance(layer, InputLayer) else text)
    return texts.pop() if len(texts) == 1 else "multiple"


def _is_sequential_like(model):
    if isinstance(model, Sequential) or not getattr(model, "_is_functional", False):
        return True
    seen_layers = set()
    for rec in model._records:
        if rec.layer is None or len(rec.input_tensors()) > 1 or id(rec.layer) in seen_layers:
            return False
        seen_layers.add(id(rec.layer))
    consumers = {}
    for rec in model._records:
        for t in rec.input_tensors():
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    return all(n == 1 for n in consumers.values()) and len(model.outputs) == 1


def _param_count(weights):
    total = 0
    for w in weights:
        n = 1
        for d in w.shape:
            n *= d
        total += n
    return total


def print_summary(model, line_length=None, positions=None, print_fn=None):
    print_fn = print_fn or print
    if not model.built:
        raise ValueError(f"This model has not yet been built. Build the model first by calling `build()` or "
                         f"by calling the model on a batch of data (model '{model.name}').")
    sequential_like = _is_sequential_like(model)
    if sequential_like:
        line_length = line_length or 65
        positions = positions or [.45, .85, 1.]
        to_display = ["Layer (type)", "Output Shape", "Param #"]
    else:
        line_length = line_length or 98
        positions = positions or [.33, .55, .67, 1.]
        to_display = ["Layer (type)", "Output Shape", "Param #", "Connected to"]
    if positions[-1] <= 1:
        positions = [int(line_length * p) for p in positions]

    print_fn(f'Model: "{model.name}"')
    print_fn("_" * line_length)
    _print_row(to_display, positions, print_fn)
    print_fn("=" * line_length)
    relevant = {id(r) for r in getattr(model, "_records", [])}
    layers = model.layers
    for i, layer in enumerate(layers):
        params = layer.count_params() if layer.built else "0 (unused)"
        fields = [f"{layer.name} ({type(layer).__name__})", _layer_output_shape(layer, model), params]
        if sequential_like:
            _print_row(fields, positions, print_fn)
        else:
            connections = []
            for rec in layer._inbound:
                if id(rec) not in relevant:
                    continue
                for t in rec.input_tensors():
                    src = t._keras_history
                    node_index = src.layer._inbound.index(src) if src.layer is not None else 0
                    outs = src.outputs if isinstance(src.outputs, (list, tuple)) else [src.outputs]
                    tensor_index = next(k for k, o in enumerate(outs) if o is t)
                    connections.append(f"{src.layer.name}[{node_index}][{tensor_index}]")
            _print_row(fields + [connections[0] if connections else ""], positions, print_fn)
            for extra in connections[1:]:
                _print_row(["", "", "", extra], positions, print_fn)
        print_fn(("=" if i == len(layers) - 1 else "_") * line_length)
    trainable = _param_count(model.trainable_weights)
    non_trainable = _param_count(model.non_trainable_weights)
    print_fn(f"Total params: {trainable + non_trainable:,}")
    print_fn(f"Trainable params: {trainable:,}")
    print_fn(f"Non-trainable params: {non_trainable:,}")
    print_fn("_" * line_length)
