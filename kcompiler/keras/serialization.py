"""Turning layers and the objects inside their configs into plain data and back.

The written form is Keras 3's: ``{"module", "class_name", "config", "registered_name"}``
for every object, built-in activations as strings. The reader also takes tf.keras 2
configs (no ``module``, ``batch_input_shape``, string dtypes), so one path serves
``model_from_json`` for both. Classes are looked up by name: first in the active
``custom_objects``, then among registered objects, then in ``kcompiler.keras.layers``,
so layers added to that module need no entry here.
"""
import inspect
from contextlib import contextmanager

from ..errors import ConfigError, UnsupportedError
from . import activations, constraints, initializers, regularizers
from .layers.base import Layer

# ---- registration and custom objects ----------------------------------------------------

_REGISTERED = {}       # "Package>Name" -> class or function
_REGISTERED_NAMES = {}  # id(object) -> "Package>Name"
_scopes = []           # custom_objects dicts of the enclosing custom_object_scope()s


def register_keras_serializable(package="Custom", name=None):
    """Decorator: make a class or function loadable by name (keras.saving.register_keras_serializable)."""
    def decorator(obj):
        key = f"{package}>{name or obj.__name__}"
        if inspect.isclass(obj) and not hasattr(obj, "get_config"):
            raise ValueError(f"register_keras_serializable: class {obj.__name__} has no get_config()")
        _REGISTERED[key] = obj
        _REGISTERED_NAMES[id(obj)] = key
        return obj
    return decorator


def get_registered_name(obj):
    """The name an object is registered under ("Package>Name"), or its plain name."""
    return _REGISTERED_NAMES.get(id(obj), getattr(obj, "__name__", None))


@contextmanager
def custom_object_scope(*dicts):
    """Within the block, configs may name the classes and functions in ``dicts``."""
    merged = {}
    for d in dicts:
        merged.update(d or {})
    _scopes.append(merged)
    try:
        yield merged
    finally:
        _scopes.pop()


CustomObjectScope = custom_object_scope

# Whether deserializing may refuse to run code stored in a config (a Lambda's bytecode), as
# Keras's safe mode: on unless a load says safe_mode=False or enable_unsafe_deserialization().
_safe_mode = [True]


def in_safe_mode():
    return _safe_mode[-1]


@contextmanager
def safe_mode_scope(safe_mode):
    """Within the block, safe mode is ``safe_mode`` (None: unchanged)."""
    _safe_mode.append(_safe_mode[-1] if safe_mode is None else bool(safe_mode))
    try:
        yield
    finally:
        _safe_mode.pop()


def enable_unsafe_deserialization():
    """Let every later load run the code a config stores (keras.config.enable_unsafe_deserialization)."""
    _safe_mode[0] = False


def get_custom_objects():
    """The global registry (keras.saving.get_custom_objects), keyed by registered name."""
    return _REGISTERED


def get_registered_object(name, custom_objects=None):
    """The user object called ``name`` (custom_objects, scopes, then the registry), or None."""
    if not isinstance(name, str):
        return None
    for table in [custom_objects or {}] + _scopes[::-1]:
        if name in table:
            return table[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    short = [obj for key, obj in _REGISTERED.items() if key.rsplit(">", 1)[-1] == name]
    return short[0] if len(short) == 1 else None


# ---- layer classes ------------------------------------------------------------------------

def _builtin_layer_classes():
    from . import layers
    from .models import Model, Sequential
    table = {name: obj for name, obj in vars(layers).items() if inspect.isclass(obj) and issubclass(obj, Layer)}
    # Keras 3 writes functional models as "Functional"; tf.keras 2.0-2.3 as "Model".
    table.update({"Sequential": Sequential, "Functional": Model, "Model": Model})
    return table


def layer_class(class_name, registered_name=None):
    """The layer (or model) class a config names, or None if nothing by that name is known."""
    for name in (registered_name, class_name):
        obj = get_registered_object(name)
        if obj is not None:
            return obj
    return _builtin_layer_classes().get(class_name)


def _is_builtin(cls):
    return cls.__module__.startswith("kcompiler.")


# ---- writing ------------------------------------------------------------------------------

def serialize_keras_object(obj):
    """Keras 3's form of any object: a built-in activation as its name, others as a dict."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Layer):
        return serialize_layer(obj)
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        for name, fn in activations.ALL.items():
            if fn is obj:
                return activations.serialize(fn)
        # Keras 3's form of a plain function: its (registered) name is all that is stored.
        return {"module": "builtins", "class_name": "function", "config": get_registered_name(obj),
                "registered_name": "function"}
    for family, module in ((initializers, "keras.initializers"), (regularizers, "keras.regularizers"),
                           (constraints, "keras.constraints")):
        if family.ALL.get(type(obj).__name__) is type(obj):
            return {"module": module, "class_name": type(obj).__name__, "config": obj.get_config(),
                    "registered_name": None}
    if not hasattr(obj, "get_config"):
        raise TypeError(f"cannot serialize {obj!r}: it has no get_config()")
    return {"module": _module_of(type(obj)), "class_name": type(obj).__name__, "config": obj.get_config(),
            "registered_name": get_registered_name(type(obj))}


def _module_of(cls):
    return None if cls.__module__ == "__main__" else cls.__module__


def serialize_layer(layer, build_input_shape=None):
    """``{"module", "class_name", "config", "registered_name"[, "build_config"]}`` for a layer."""
    from .models import Model
    if isinstance(layer, Model):
        from .saving import serialize_model
        return serialize_model(layer, include_compile=False)
    cls = type(layer)
    builtin = _is_builtin(cls) and layer_class(cls.__name__) is cls
    entry = {"module": "keras.layers" if builtin else _module_of(cls), "class_name": cls.__name__,
             "config": layer.get_config(), "registered_name": None if builtin else get_registered_name(cls)}
    if build_input_shape is not None:
        entry["build_config"] = {"input_shape": build_input_shape}
    return entry


# ---- reading ------------------------------------------------------------------------------

# Keys that some Keras version writes and that change nothing here, with the values
# that change nothing (None: any value). Dropped only when a layer's constructor refuses
# them; a refused key whose value is None is dropped too: it is the default of an
# argument we do not have (Keras 3's quantization_config).
_INERT_KEYS = {
    "optional": (False,), "sparse": (False,), "ragged": (False,), "autocast": (True, False),
    "time_major": (False,), "stateful": (False,), "unroll": (False,),
    # tf.keras 2's kernel choice: a speed hint, the same numbers.
    "implementation": (0, 1, 2),
    # Keras 3's RNN seed only draws dropout masks, which never match across frameworks anyway.
    "seed": None,
    # Keras 3 forces this to return_sequences inside Bidirectional, which zeroes masked
    # steps itself (DESIGN §5); a plain RNN writes False.
    "zero_output_for_mask": None,
    # Keras 3 BatchNormalization's batch renormalisation, off unless renorm=True.
    "renorm": (False,), "renorm_momentum": None, "synchronized": None,
    "groups": (1,),
}

# Keys that tf.keras 2 writes for one layer class only, any value, which that class has no
# argument for and which change nothing here: SeparableConv2D inherits Conv's kernel_*
# arguments (its kernels are depthwise_kernel and pointwise_kernel, initialised by their own
# arguments); MultiHeadAttention records the shapes it was built with (the model's calls build
# it here) and softmax_robust_masking (both of tf.keras 2's masked softmaxes put -1e9 in a masked
# score, by adding or by replacing: the same probabilities as the replacement done here).
_INERT_CLASS_KEYS = {
    "SeparableConv2D": ("kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "MultiHeadAttention": ("query_shape", "key_shape", "value_shape", "softmax_robust_masking"),
}


def _constructor_keywords(cls):
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up the MRO to Layer."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if klass is Layer:
            return names | Layer._accepted_kwargs
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return names


def _dtype_name(dtype):
    # Keras 3 writes {"class_name": "DTypePolicy", "config": {"name": "float32"}}.
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name", "float32")
    return dtype


def normalize_layer_config(cls, config):
    """``config`` in the form ``cls.from_config`` takes, whichever Keras wrote it."""
    config = dict(config)
    if "dtype" in config:
        config["dtype"] = _dtype_name(config["dtype"])
    if "batch_shape" in config and "batch_shape" not in _constructor_keywords(cls):
        config["batch_input_shape"] = config.pop("batch_shape")
    return {key: _normalize_value(key, value) for key, value in config.items()}


def _drop_inert_keys(cls, config):
    """``config`` without the keys the constructor does not take and that change nothing."""
    accepted = _constructor_keywords(cls)
    class_keys = {key for klass in cls.__mro__ for key in _INERT_CLASS_KEYS.get(klass.__name__, ())}
    out = {}
    for key, value in config.items():
        inert = _INERT_KEYS.get(key, ())
        if key not in accepted and (value is None or key in class_keys
                                    or key in _INERT_KEYS and (inert is None or value in inert)):
            continue
        out[key] = value
    return out


def _family(key, value):
    module = value.get("module") if isinstance(value, dict) else None
    for family, name, suffix in ((initializers, "keras.initializers", "_initializer"),
                                 (regularizers, "keras.regularizers", "_regularizer"),
                                 (constraints, "keras.constraints", "_constraint")):
        if module == name or module is None and key.endswith(suffix):
            return family
    return None


def _normalize_value(key, value):
    """Resolve user objects inside a layer config; trim built-in objects' configs to what we take."""
    if isinstance(value, str) and key.endswith("activation"):
        return value if value in activations.ALL else (get_registered_object(value) or value)
    if not (isinstance(value, dict) and "class_name" in value):
        return value
    if value["class_name"] == "function":   # Keras 3's form of a function (activations)
        name = value.get("config")
        return name if name in activations.ALL else (get_registered_object(name) or name)
    if value["class_name"] == "DTypePolicy":
        return _dtype_name(value)
    cls = layer_class(value["class_name"], value.get("registered_name"))
    if inspect.isclass(cls) and issubclass(cls, Layer):   # a wrapped layer (Bidirectional)
        return {**value, "config": normalize_layer_config(cls, value.get("config", {}))}
    user = get_registered_object(value.get("registered_name")) or get_registered_object(value["class_name"])
    if user is not None:
        return user.from_config(value.get("config", {})) if inspect.isclass(user) else user
    family = _family(key, value)
    builtin = family.ALL.get(value["class_name"]) if family is not None else None
    if builtin is not None and isinstance(value.get("config"), dict):
        # Newer Keras adds arguments that default to None (GlorotUniform's input_axes).
        keywords = _constructor_keywords(builtin)
        trimmed = {k: v for k, v in value["config"].items() if k in keywords or v is not None}
        return {"class_name": value["class_name"], "config": trimmed}
    return value


def is_keras3_op(entry):
    """Whether a functional config's entry is a ``keras.ops`` call Keras 3 recorded between its
    layers (``{"module": "keras.src.ops.numpy", "class_name": "NotEqual", ...}``; it records, for
    one, the mask computations of Embedding(mask_zero=True) feeding Attention layers). Its ``.h5``
    writer leaves the module out: there, an entry with Keras 3's call records whose class is no
    layer but names a keras.ops function."""
    if not isinstance(entry, dict):
        return False
    if "module" in entry:
        return str(entry.get("module") or "").startswith("keras.src.ops.")
    nodes = entry.get("inbound_nodes")
    return (bool(nodes) and all(isinstance(node, dict) for node in nodes)
            and layer_class(entry.get("class_name"), entry.get("registered_name")) is None
            and _op_function(entry) is not None)


def _op_function(entry):
    from . import backend, ops
    fn = getattr(ops, backend.snake_case(str(entry.get("class_name"))), None)
    return fn if callable(fn) else None


def keras3_op_call(entry):
    """The function a Keras 3 op entry (is_keras3_op) stands for: the kcompiler.keras.ops function
    of that name with the op's config (its constructor arguments) as keyword arguments; an argument
    the function does not take raises UnsupportedError unless it is None (the op's default)."""
    fn = _op_function(entry)
    if fn is None:
        raise ConfigError(f"unknown keras.ops function {entry.get('class_name')!r} in the functional config")
    config = {k: v for k, v in (entry.get("config") or {}).items() if k != "name"}
    takes = inspect.signature(fn).parameters
    refused = sorted(k for k, v in config.items() if k not in takes and v is not None)
    if refused:
        raise UnsupportedError(f"the keras.ops call {entry.get('class_name')} "
                               f"'{(entry.get('config') or {}).get('name')}' in the functional config has "
                               f"argument(s) {refused}, which kcompiler's keras.ops.{fn.__name__} does not take")
    fixed = {k: v for k, v in config.items() if k in takes}
    return lambda *args, **kwargs: fn(*args, **fixed, **kwargs)


def unknown_classes(entry, where="the model", found=None):
    """Every class name in a layer/model config that cannot be resolved, with where it is used."""
    found = [] if found is None else found
    if not isinstance(entry, dict) or "class_name" not in entry:
        return found
    cls = layer_class(entry["class_name"], entry.get("registered_name"))
    config = entry.get("config")
    name = (config.get("name") if isinstance(config, dict) else None) or entry.get("name")
    here = f"layer '{name}'" if name else where
    if is_keras3_op(entry):
        if _op_function(entry) is None:
            found.append(f"the keras.ops function {entry['class_name']!r} ({here})")
        return found
    if cls is None:
        found.append(f"{entry['class_name']!r} ({here})")
        return found
    layer_configs = config if isinstance(config, list) else (config or {}).get("layers")
    for sub in layer_configs or []:
        unknown_classes(sub, f"inside {here}", found)
    for key, value in (config.items() if isinstance(config, dict) else ()):
        if key == "layers":
            continue
        if isinstance(value, dict) and "class_name" in value:
            sub_cls = layer_class(value["class_name"], value.get("registered_name"))
            if inspect.isclass(sub_cls) and issubclass(sub_cls, Layer):
                unknown_classes(value, f"{key} of {here}", found)
            elif not _object_known(key, value):
                label = value.get("config") if value["class_name"] == "function" else value["class_name"]
                found.append(f"{label!r} ({key} of {here})")
        elif isinstance(value, str) and key.endswith("activation") and not _function_known(value):
            found.append(f"{value!r} ({key} of {here})")
    return found


def _function_known(name):
    return name in activations.ALL or get_registered_object(name) is not None


def _object_known(key, value):
    if value["class_name"] == "function":
        return _function_known(value.get("config"))
    if value["class_name"] == "DTypePolicy":
        return True
    if get_registered_object(value.get("registered_name")) or get_registered_object(value["class_name"]):
        return True
    family = _family(key, value)
    return family is None or value["class_name"] in family.ALL


def check_known_classes(config):
    """Raise one ConfigError naming every class in ``config`` that cannot be resolved."""
    missing = unknown_classes(config)
    if missing:
        raise ConfigError("cannot rebuild the model: unknown class(es) or function(s) " + ", ".join(missing)
                          + ". Pass them in custom_objects={name: class_or_function} or decorate them with "
                          "@keras.saving.register_keras_serializable()")


def deserialize_layer(entry, custom_objects=None):
    """A new layer (or model) from ``{"class_name", "config", ...}`` (keras.layers.deserialize)."""
    with custom_object_scope(custom_objects):
        if not isinstance(entry, dict) or "class_name" not in entry:
            raise ConfigError(f"a layer config must be a dict with 'class_name' and 'config', got {entry!r}")
        cls = layer_class(entry["class_name"], entry.get("registered_name"))
        if cls is None:
            check_known_classes(entry)
        config = entry.get("config", {})
        from .models import Model
        if isinstance(cls, type) and issubclass(cls, Model):
            from .saving import model_from_layer_config
            return model_from_layer_config(cls, config)
        config = normalize_layer_config(cls, config)
        try:
            try:
                return cls.from_config(config)
            except TypeError:
                # Some layers take version-specific keys themselves (RNNs pop tf.keras 2's
                # implementation), so those are only dropped when the constructor refuses them.
                trimmed = _drop_inert_keys(cls, config)
                if trimmed == config:
                    raise
                return cls.from_config(trimmed)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot rebuild layer '{config.get('name')}' ({entry['class_name']}) from its "
                              f"config: {e}. A custom layer's get_config() must return every argument of "
                              "its __init__") from e


def deserialize_keras_object(config, custom_objects=None):
    """The object a ``serialize_keras_object`` form stands for (keras.saving.deserialize_keras_object):
    layers and models (with their build_config), initializers, regularizers, constraints and functions."""
    with custom_object_scope(custom_objects):
        if config is None:
            return None
        if isinstance(config, str) or isinstance(config, dict) and config.get("class_name") == "function":
            name = config if isinstance(config, str) else config.get("config")
            fn = activations.ALL.get(name) or get_registered_object(name)
            if fn is None:
                raise ConfigError(f"unknown function {name!r}: pass it in custom_objects or register it with "
                                  "@keras.saving.register_keras_serializable()")
            return fn
        if not isinstance(config, dict) or "class_name" not in config:
            raise ConfigError(f"cannot deserialize {config!r}: expected a dict with 'class_name' and 'config'")
        cls = layer_class(config["class_name"], config.get("registered_name"))
        if inspect.isclass(cls) and issubclass(cls, Layer):
            from .saving import model_from_config
            return model_from_config(config)
        value = _normalize_value("", config)
        if not isinstance(value, dict):
            return value   # a user object, already built from its config
        family = _family("", value) or next(
            (f for f in (initializers, regularizers, constraints) if value["class_name"] in f.ALL), None)
        if family is None or value["class_name"] not in family.ALL:
            raise ConfigError(f"unknown class {config['class_name']!r} (module {config.get('module')!r}): pass it "
                              "in custom_objects or register it with @keras.saving.register_keras_serializable()")
        return family.deserialize(value)
