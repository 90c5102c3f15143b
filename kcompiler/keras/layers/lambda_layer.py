"""Lambda: a layer whose call is a user function, traced like any keras.ops code.

Its config stores the function as Keras 3 does (and reads tf.keras 2's form too): a named
function by its (registered) name, which loading resolves through custom_objects or the
registry; a Python ``lambda`` as marshalled bytecode (``{"class_name": "__lambda__",
"config": {"code", "defaults", "closure"}}``). Loading such bytecode runs code from the file,
so, as in Keras, it is refused unless safe mode is off (``load_model(..., safe_mode=False)``,
``serialization.safe_mode_scope``); the loaded function sees ``keras`` (kcompiler.keras),
``ops`` and ``np`` as globals.
"""
import base64
import inspect
import marshal
import types

from ...errors import UnsupportedError
from .base import Layer

__all__ = ["Lambda"]

UNSAFE_LAMBDA = ("Requested the deserialization of a `Lambda` layer whose `function` is a Python lambda. This carries "
                 "a potential risk of arbitrary code execution and thus it is disallowed by default. If you trust "
                 "the source of the artifact, you can override this error by passing `safe_mode=False` to the "
                 "loading function, or calling `keras.config.enable_unsafe_deserialization().")


def dump_function(fn):
    """(code, defaults, closure) of a Python function: base64 of its marshalled code object."""
    code = base64.encodebytes(marshal.dumps(fn.__code__)).decode("ascii")
    closure = tuple(cell.cell_contents for cell in fn.__closure__) if fn.__closure__ else None
    return code, fn.__defaults__, closure


def load_function(code, defaults=None, closure=None):
    """The function that dump_function wrote (same Python version: marshal's format is per version)."""
    from ... import keras
    import numpy
    try:
        code_object = marshal.loads(base64.decodebytes(code.encode("ascii")))
    except (ValueError, EOFError, TypeError) as e:
        raise UnsupportedError(f"Lambda: the function's bytecode cannot be loaded by this Python ({e}); it was "
                               "probably saved by another Python version") from None
    cells = tuple(types.CellType(value) for value in closure) if closure is not None else None
    globs = {"keras": keras, "ops": keras.ops, "np": numpy, "__builtins__": __builtins__}
    return types.FunctionType(code_object, globs, code_object.co_name, tuple(defaults) if defaults else None, cells)


class Lambda(Layer):
    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda: `function` must be callable, got {function!r}")
        self.function = function
        self.arguments = arguments or {}
        self.mask = mask
        self.supports_masking = mask is not None
        self._output_shape = output_shape
        params = inspect.signature(function).parameters
        self._fn_takes = {name for name in ("mask", "training") if name in params}

    def call(self, inputs, mask=None, training=None):
        kwargs = dict(self.arguments)
        if "mask" in self._fn_takes:
            kwargs["mask"] = mask
        if "training" in self._fn_takes:
            kwargs["training"] = training
        return self.function(inputs, **kwargs)

    def compute_mask(self, inputs, mask=None):
        if callable(self.mask):
            return self.mask(inputs, mask)
        return self.mask

    def get_config(self):
        from ..serialization import serialize_keras_object
        config = {"function": _function_config(self.function)}
        if self._output_shape is not None:
            config["output_shape"] = (_function_config(self._output_shape) if callable(self._output_shape)
                                      else self._output_shape)
        if self.mask is not None:
            config["mask"] = _function_config(self.mask) if callable(self.mask) else serialize_keras_object(self.mask)
        config["arguments"] = serialize_keras_object(self.arguments) if not isinstance(self.arguments, dict) \
            else {k: serialize_keras_object(v) for k, v in self.arguments.items()}
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # tf.keras 2 writes (code, defaults, closure) lists or names, tagged by *_type keys
        for key in ("function", "output_shape"):
            kind = config.pop(f"{key}_type", None)
            if kind == "lambda":
                config[key] = {"class_name": "__lambda__", "config": dict(zip(("code", "defaults", "closure"),
                                                                               config[key]))}
            elif kind == "function":
                config[key] = {"class_name": "function", "config": config[key]}
        config.pop("module", None)
        config.pop("output_shape_module", None)
        if config.get("output_shape") is None:
            config.pop("output_shape", None)
        config["function"] = _function_from_config(config["function"])
        if "output_shape" in config:
            shape = config["output_shape"]
            config["output_shape"] = (_function_from_config(shape) if isinstance(shape, dict)
                                      else tuple(shape) if isinstance(shape, list) else shape)
        if isinstance(config.get("mask"), dict):
            config["mask"] = _function_from_config(config["mask"])
        return cls(**config)


def _function_config(fn):
    from ..serialization import serialize_keras_object
    if isinstance(fn, types.LambdaType) and fn.__name__ == "<lambda>":
        code, defaults, closure = dump_function(fn)
        return {"class_name": "__lambda__", "config": {"code": code, "defaults": defaults, "closure": closure}}
    return serialize_keras_object(fn)


def _function_from_config(entry):
    from ..serialization import deserialize_keras_object, in_safe_mode
    if isinstance(entry, dict) and entry.get("class_name") == "__lambda__":
        if in_safe_mode():
            raise ValueError(UNSAFE_LAMBDA)
        inner = entry["config"]
        return load_function(inner["code"], inner.get("defaults"), inner.get("closure"))
    return deserialize_keras_object(entry)
