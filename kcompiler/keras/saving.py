"""Model configs and their JSON/YAML forms: get_config, to_json, to_yaml, model_from_*.

Written in Keras 3's schema. Read: Keras 3's schema (with the ``keras.ops`` calls it records
between the layers of a functional model, replayed as kcompiler's ops; a model with such calls
cannot be written back), tf.keras 2's (``batch_input_shape``, ``keras_version``/``backend``
keys, functional ``inbound_nodes`` as nested lists, tensors among a call's kwargs as
``[layer, node, tensor]`` lists) and the oldest Sequential form whose ``config`` is the list of
layers. A model rebuilt from a config has the same architecture, fresh weights and is not
compiled (the seed's ``model_from_json``); a ``compile_config`` in the input is ignored.

Allowed differences from Keras 3's output, on purpose:
- ``dtype`` is the dtype name ("float32"), as tf.keras 2 wrote it; Keras 3 writes a
  DTypePolicy object (and reads either).
- Sequential models keep tf.keras 2's input naming (``<first layer>_input``) and an
  Embedding-first Sequential has an input (tf.keras 2 semantics), so it is written
  with an InputLayer and ``build_config`` where Keras 3 writes none.
- ``build_config`` is written for every layer that was called; Keras 3 leaves it out
  for layers built in their constructor (pooling).
- Arguments we do not have are not written: Keras 3.15's ``input_axes``/``output_axes``
  of initializers, ``quantization_config`` of Dense/Embedding (all None there) and
  BatchNormalization's ``renorm*`` (off there); Embedding keeps tf.keras 2's ``input_length``.
- A user activation function is written as its name (tf.keras 2's form); Keras 3 writes
  ``{"class_name": "function", "config": name}``. Both are read.
tests/keras/test_configs.py compares our to_json with Keras 3's after taking out exactly these.
"""
import inspect
import json

import numpy as np

from ..errors import ConfigError, UnsupportedError
from .layers.base import flatten
from .model_files import load_model, save_model  # noqa: F401  (keras.saving.load_model/save_model)
from .serialization import (CustomObjectScope, check_known_classes, custom_object_scope,  # noqa: F401
                            deserialize_keras_object, deserialize_layer, get_custom_objects, get_registered_name,
                            get_registered_object, is_keras3_op, keras3_op_call, register_keras_serializable,
                            serialize_keras_object, serialize_layer)

__all__ = ["load_model", "save_model", "model_from_config", "model_from_json", "model_from_yaml",
           "register_keras_serializable", "custom_object_scope", "CustomObjectScope", "get_custom_objects",
           "get_registered_name", "get_registered_object", "serialize_keras_object", "deserialize_keras_object"]


def _shape(t):
    return list(t.shape)


def _input_layer_of(tensor):
    return tensor._keras_history.layer


# ---- get_config -------------------------------------------------------------------------

def model_config(model):
    """The default ``model.get_config()``: Sequential and functional models; subclassed ones raise."""
    from .models import Sequential
    if isinstance(model, Sequential):
        return _sequential_config(model)
    if getattr(model, "_is_functional", False):
        return _functional_config(model)
    raise NotImplementedError(
        f"Model '{model.name}' ({type(model).__name__}) is a subclassed model: Keras cannot write its "
        "config automatically. Override get_config() to return the arguments of its __init__ (and "
        "from_config() if they are not plain data)")


def _strip_input_shape(entry):
    # The InputLayer entries carry the input shapes (Keras 3 writes none in layer configs).
    entry["config"] = {k: v for k, v in entry["config"].items() if k != "batch_input_shape"}
    return entry


def _sequential_config(model):
    layers = []
    if model._input is not None:
        layers.append(serialize_layer(_input_layer_of(model._input)))
    inputs = [model._input] + model._outputs_per_layer[:-1] if model._input is not None else []
    for i, layer in enumerate(model.layers):
        entry = serialize_layer(layer, _shape(inputs[i]) if i < len(inputs) else None)
        layers.append(_strip_input_shape(entry) if model._input is not None else entry)
    config = {"name": model.name, "trainable": model.trainable, "dtype": model.dtype, "layers": layers}
    if model._input is not None:
        config["build_input_shape"] = _shape(model._input)
    return config


def _functional_config(model):
    relevant = [r for r in model._records if r.layer is not None]
    bare_ops = [r for r in model._records if r.layer is None]
    if bare_ops:
        raise UnsupportedError(f"Model '{model.name}': get_config cannot write the {len(bare_ops)} bare "
                               "keras.ops call(s) between its layers; wrap them in a layer (a Layer subclass "
                               "with get_config)")
    # Node indices count only this model's calls of each layer (Keras re-indexes the same way).
    node_index = {}
    for rec in relevant:
        node_index[id(rec)] = sum(1 for r in relevant if r.layer is rec.layer and r.order < rec.order)

    def history(t):
        rec = t._keras_history
        tensor_index = next(k for k, o in enumerate(flatten(rec.outputs)) if o is t)
        return [rec.layer.name, node_index[id(rec)], tensor_index]

    def as_arg(x):
        from .tensor import SymbolicTensor
        if isinstance(x, SymbolicTensor):
            return {"class_name": "__keras_tensor__",
                    "config": {"shape": _shape(x), "dtype": x.dtype, "keras_history": history(x)}}
        if isinstance(x, (list, tuple)):
            return [as_arg(v) for v in x]
        if isinstance(x, dict):
            return {k: as_arg(v) for k, v in x.items()}
        return x

    from .models import InputLayer
    layers = []
    for layer in model.layers:
        calls = [r for r in relevant if r.layer is layer]
        build_shape = None
        if calls and not isinstance(layer, InputLayer):
            first = calls[0].inputs
            build_shape = ([_shape(t) for t in first] if isinstance(first, (list, tuple)) else _shape(first))
        entry = _strip_input_shape(serialize_layer(layer, build_shape))
        shapes = _build_shapes_dict(layer, calls[0]) if calls else None
        if shapes:
            entry["build_config"] = {"shapes_dict": shapes}
        entry["name"] = layer.name
        entry["inbound_nodes"] = [] if isinstance(layer, InputLayer) else [
            {"args": as_arg([r.inputs, *r.rest]), "kwargs": as_arg(dict(r.kwargs))} for r in calls]
        layers.append(entry)
    # Keras 3 writes a single (non-list) input or output as one [name, node, tensor] triple.
    inputs = [history(t) for t in model.inputs]
    outputs = [history(t) for t in model.outputs]
    return {"name": model.name, "trainable": model.trainable, "layers": layers,
            "input_layers": inputs[0] if model._single_input else inputs,
            "output_layers": outputs[0] if model._single_output else outputs}


def _build_shapes_dict(layer, record):
    """Keras 3's ``build_config`` for a layer whose ``build`` takes the shapes of several call
    arguments (MultiHeadAttention's query_shape, value_shape, key_shape): ``{"<argument>_shape":
    shape}`` for each tensor argument of its first call that ``build`` takes; None for others."""
    from .tensor import SymbolicTensor
    build_takes = [name for name in inspect.signature(layer.build).parameters if name.endswith("_shape")]
    if len(build_takes) < 2:
        return None
    bound = inspect.signature(layer.call).bind_partial(record.inputs, *record.rest, **record.kwargs)
    return {f"{name}_shape": _shape(value) for name, value in bound.arguments.items()
            if isinstance(value, SymbolicTensor) and f"{name}_shape" in build_takes}


# ---- the to_json / to_yaml document -------------------------------------------------------

def serialize_model(model, include_compile=True):
    """What ``to_json`` writes: ``{"module", "class_name", "config", "registered_name", "build_config",
    "compile_config"}`` as Keras 3 does."""
    from .models import Model, Sequential
    config = model.get_config()
    if type(model) is Sequential:
        out = {"module": "keras", "class_name": "Sequential", "config": config, "registered_name": None}
        if model._input is not None:
            out["build_config"] = {"input_shape": _shape(model._input)}
    elif type(model) is Model and model._is_functional:
        out = {"module": "keras.src.models.functional", "class_name": "Functional", "config": config,
               "registered_name": "Functional", "build_config": {"input_shape": None}}
    else:
        cls = type(model)
        out = {"module": None if cls.__module__ == "__main__" else cls.__module__, "class_name": cls.__name__,
               "config": config, "registered_name": get_registered_name(cls)}
        if getattr(model, "_build_input_shape", None) is not None:
            out["build_config"] = {"input_shape": _plain(model._build_input_shape)}
    if include_compile:
        out["compile_config"] = _compile_config(model)
    return out


def _compile_config(model):
    """Keras 3's record of the compile() arguments ({} when not compiled). Reading ignores it:
    a model rebuilt from a config is not compiled (the seed's model_from_json)."""
    if not getattr(model, "compiled", False):
        return {}
    from . import optimizers
    outputs = getattr(model, "compiled_outputs", None) or []
    if len(outputs) > 1:  # one loss per output: by output name, as Keras 3 writes a dict of them
        loss = {o.name: _loss_config(o.loss) for o in outputs} if model.compiled_loss is not None else None
    else:
        loss = _loss_config(model.compiled_loss)
    return {"optimizer": {"module": "keras.optimizers", **optimizers.serialize(model.optimizer),
                          "registered_name": None},
            "loss": loss, "loss_weights": getattr(model, "compiled_loss_weights", None),
            "metrics": _metrics_config(model.compiled_metrics),
            "weighted_metrics": _metrics_config(getattr(model, "compiled_weighted_metrics", None)),
            "run_eagerly": model.run_eagerly, "steps_per_execution": 1, "jit_compile": False}


def _loss_config(loss):
    from . import losses
    if type(loss) is losses.LossFunctionWrapper and isinstance(loss.name, str):
        return loss.name   # compile(loss="mse") wraps the function; Keras writes the name given
    if loss is None:
        return None
    return {"module": "keras.losses", **losses.serialize(loss), "registered_name": None}


def _metrics_config(metrics):
    """compile()'s metrics as given (a list, one name, a dict or list per output), each metric by
    its name or config; None when there are none."""
    if metrics is None:
        return None
    if isinstance(metrics, dict):
        return {k: _metrics_config(v) for k, v in metrics.items()} or None
    if isinstance(metrics, (list, tuple)):
        return [_metrics_config(m) for m in metrics] or None
    if isinstance(metrics, str):
        return metrics
    return getattr(metrics, "__name__", None) or _metric_config(metrics)


def _metric_config(metric):
    """Keras 3's form of a metric object; a built-in one is named as Keras's own (module keras.metrics)."""
    from . import metrics
    if metrics.ALL_OBJECTS.get(type(metric).__name__) is type(metric):
        return {"module": "keras.metrics", **metrics.serialize(metric), "registered_name": None}
    return serialize_keras_object(metric)


def _plain(value):
    """JSON/YAML-safe data: tuples as lists, numpy scalars and arrays as Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def model_to_json(model, **kwargs):
    return json.dumps(_plain(serialize_model(model)), **kwargs)


def model_to_yaml(model, **kwargs):
    import yaml
    return yaml.safe_dump(_plain(serialize_model(model)), **kwargs)


# ---- reading ------------------------------------------------------------------------------

def model_from_config(config, custom_objects=None):
    """A new, uncompiled model with fresh weights from a config dict (either Keras's schema)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ConfigError("model_from_config expects a dict with 'class_name' and 'config' (what "
                          f"json.loads(model.to_json()) returns), got {type(config).__name__}"
                          + (f" with keys {sorted(config)}" if isinstance(config, dict) else ""))
    with custom_object_scope(custom_objects):
        check_known_classes(config)
        model = deserialize_layer(config)
        build_shape = (config.get("build_config") or {}).get("input_shape")
        if build_shape is not None and not model.built:
            model.build(_as_shape(build_shape))
            model.built = True
    return model


def model_from_json(json_string, custom_objects=None):
    try:
        config = json.loads(json_string)
    except json.JSONDecodeError as e:
        raise ConfigError(f"model_from_json: the text is not valid JSON: {e}") from None
    return model_from_config(config, custom_objects)


def _yaml_loader():
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """SafeLoader that also reads the !!python/tuple tags tf.keras 2's yaml.dump wrote."""
    ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                                 lambda loader, node: loader.construct_sequence(node))
    return ConfigLoader


def model_from_yaml(yaml_string, custom_objects=None):
    import yaml
    try:
        config = yaml.load(yaml_string, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        raise ConfigError(f"model_from_yaml: the text is not valid YAML: {e}") from None
    return model_from_config(config, custom_objects)


def _as_shape(shape):
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return [_as_shape(s) for s in shape]
    return tuple(None if d is None else int(d) for d in shape)


def model_from_layer_config(cls, config):
    """``cls.from_config(config)`` for Model classes: Sequential, functional or user subclasses."""
    from .models import Model, Sequential
    if issubclass(cls, Sequential):
        return _sequential_from_config(cls, config)
    if isinstance(config, dict) and {"layers", "input_layers", "output_layers"} <= set(config):
        return _functional_from_config(cls, config)
    if cls is Model:
        raise ConfigError("a functional model config needs 'layers', 'input_layers' and 'output_layers'; got "
                          f"keys {sorted(config) if isinstance(config, dict) else type(config).__name__}")
    try:
        return cls(**config)
    except TypeError as e:
        raise ConfigError(f"cannot rebuild model class {cls.__name__} from its config {config!r}: {e}. "
                          "A subclassed model's get_config() must return the arguments of its __init__") from e


def _sequential_from_config(cls, config):
    if isinstance(config, list):   # Keras 1 / early tf.keras: the config is the layer list itself
        config = {"layers": config}
    model = cls(name=config.get("name"), trainable=config.get("trainable", True))
    for entry in config.get("layers", []):
        model.add(deserialize_layer(entry))
    if model._input is None and config.get("build_input_shape") is not None and model.layers:
        model.build(_as_shape(config["build_input_shape"]))
    return model


class _NotReady(Exception):
    """A layer call needs a tensor that an earlier call has not made yet."""


def skips_first_node(entry):
    """tf.keras 2 counts the construction of a nested model built from an input (a functional
    model, or a Sequential whose layers start with an InputLayer) as that model's node 0, so
    its calls are nodes 1, 2, ... in a tf.keras 2 config (``_should_skip_first_node``)."""
    if not isinstance(entry, dict) or entry.get("class_name") not in ("Functional", "Model", "Sequential"):
        return False
    config = entry.get("config")
    if entry["class_name"] != "Sequential":
        return isinstance(config, dict) and "input_layers" in config
    layer_list = config if isinstance(config, list) else (config or {}).get("layers") or []
    return bool(layer_list) and isinstance(layer_list[0], dict) and layer_list[0].get("class_name") == "InputLayer"


def is_legacy_tensor_ref(value):
    """Whether ``value`` is how tf.keras 2's config names a tensor in a call's kwargs:
    ``[layer name, node index, tensor index]`` (its ``_is_serialized_node_data``)."""
    return (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:]))


def _functional_from_config(cls, config):
    from .models import InputLayer
    layers, entries, node_offset = {}, [], {}
    for entry in config["layers"]:
        if is_keras3_op(entry):   # a keras.ops call between layers, replayed as the same call
            layers[entry.get("name")] = keras3_op_call(entry)
            entries.append((entry.get("name"), entry.get("inbound_nodes", [])))
            node_offset[entry.get("name")] = 0
            continue
        layer = deserialize_layer(entry)
        name = entry.get("name", layer.name)
        layers[name] = layer
        entries.append((name, entry.get("inbound_nodes", [])))
        node_offset[name] = 1 if skips_first_node(entry) else 0
    # tf.keras 2 writes nodes as lists and its input/output lists always nested; a
    # one-element list there means a plain single input, as tf.keras 2 treats it.
    legacy = any(not isinstance(node, dict) for _, nodes in entries for node in nodes)
    made = {}  # (layer name, node index) -> the call's outputs
    for name, layer in layers.items():
        if isinstance(layer, InputLayer):
            made[(name, 0)] = layer.output

    def tensor(layer_name, node, index):
        if layer_name not in layers:
            raise ConfigError(f"the functional config refers to layer {layer_name!r}, which it does not define")
        if legacy:
            node -= node_offset[layer_name]
        if (layer_name, node) not in made:
            raise _NotReady()
        return flatten(made[(layer_name, node)])[index]

    def resolve(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return tensor(*value["config"]["keras_history"])
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    def call_args(node):
        if isinstance(node, dict):   # Keras 3: {"args": [...], "kwargs": {...}}
            return resolve(node.get("args", [])), resolve(node.get("kwargs", {}))
        # tf.keras 2: [[layer name, node index, tensor index, call kwargs], ...], one per input;
        # tensors among the kwargs (MultiHeadAttention's value=, attention_mask=) are
        # [layer name, node index, tensor index] lists there
        tensors = [tensor(*ref[:3]) for ref in node]
        kwargs = node[0][3] if node and len(node[0]) > 3 else {}
        return [tensors[0] if len(tensors) == 1 else tensors], legacy_kwarg_tensors(dict(kwargs))

    def legacy_kwarg_tensors(value):
        if is_legacy_tensor_ref(value):
            return tensor(*value)
        if isinstance(value, list):
            return [legacy_kwarg_tensors(v) for v in value]
        if isinstance(value, dict):
            return {k: legacy_kwarg_tensors(v) for k, v in value.items()}
        return value

    # Calls are replayed in dependency order; each layer's calls stay in their own order,
    # so a shared layer's node indices come out as written.
    next_node = {name: 0 for name, _ in entries}
    pending = sum(len(nodes) for _, nodes in entries)
    while pending:
        progress = False
        for name, nodes in entries:
            while next_node[name] < len(nodes):
                try:
                    args, kwargs = call_args(nodes[next_node[name]])
                except _NotReady:
                    break
                made[(name, next_node[name])] = layers[name](*args, **kwargs)
                next_node[name] += 1
                pending -= 1
                progress = True
        if not progress:
            stuck = [f"'{name}' call {next_node[name]}" for name, nodes in entries if next_node[name] < len(nodes)]
            raise ConfigError("the functional config cannot be replayed: these layer calls need tensors that no "
                              "call makes: " + ", ".join(stuck))

    def ends(refs):
        single = bool(refs) and isinstance(refs[0], str)
        refs = [refs] if single else refs
        try:
            tensors = [tensor(*ref[:3]) for ref in refs]
        except _NotReady:
            raise ConfigError(f"the functional config's inputs/outputs {refs} are not made by any call") from None
        return tensors[0] if single or legacy and len(tensors) == 1 else tensors

    return cls(inputs=ends(config["input_layers"]), outputs=ends(config["output_layers"]),
               name=config.get("name"), trainable=config.get("trainable", True))
