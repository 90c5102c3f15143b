"""Exceptions raised by kcompiler. Every message names the layer, the shape and what was expected."""


class KCompilerError(Exception):
    """Base class of kcompiler's own errors."""


class ShapeError(KCompilerError, ValueError):
    """An op or layer got an operand whose shape or dtype it cannot take."""


class UnsupportedError(KCompilerError, NotImplementedError):
    """The model uses something the compiler does not support (a layer, an op, an option)."""


class ConfigError(KCompilerError, ValueError):
    """A configuration (JSON/YAML/dict) cannot be turned back into a model."""


class ModelFileError(KCompilerError, ValueError):
    """A file cannot be read as a model or weights file (not one, damaged, unsafe to read, over a
    size cap, or weights that do not fit the model); the message names the file."""


class ModelFileConfigError(ModelFileError, ConfigError):
    """A model file's config cannot be turned back into a model (an unknown class or function, a
    malformed entry): both a ModelFileError and a ConfigError."""


class IndexRangeError(KCompilerError, IndexError, ValueError):
    """A step met an index outside its valid range (an Embedding id, a sparse label); ``value``
    is the offending index. The step changed no state (weights, optimizer, metrics)."""

    def __init__(self, message, value=None):
        super().__init__(message)
        self.value = value
