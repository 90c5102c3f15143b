"""keras.optimizers: SGD, Adam, AdamW, Adamax, Nadam, Adagrad, Adadelta, RMSprop, schedules, and names.

Each optimizer's update is keras.ops math recorded as state updates, so one definition
runs eagerly (``apply_gradients`` on concrete gradients) and inside the compiled
training step (``trace_updates``). See base.py.
"""
import inspect

from . import schedules
from .adagrad import Adadelta, Adagrad
from .adam import Adam, Adamax, AdamW, Nadam
from .base import Optimizer, clip_by_global_norm, current_value
from .rmsprop import RMSprop
from .sgd import SGD

ALL_OBJECTS = {c.__name__.lower(): c for c in (SGD, Adam, AdamW, Adamax, Nadam, Adagrad, Adadelta, RMSprop)}


def _class_for(name):
    cls = ALL_OBJECTS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"Could not interpret optimizer identifier: {name!r}. Known optimizers: "
                         f"{', '.join(c.__name__ for c in ALL_OBJECTS.values())}")
    return cls


def serialize(optimizer):
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config, custom_objects=None):
    name = config["class_name"]
    cls = (custom_objects or {}).get(name) or _class_for(name)
    return cls.from_config(config.get("config", {}))


def get(identifier):
    """An optimizer from an instance, a name ('sgd', 'Adam', 'rmsprop', ... any case), a config dict
    or an Optimizer class."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return _class_for(identifier)()
    if inspect.isclass(identifier) and issubclass(identifier, Optimizer):
        return identifier()
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adamax", "Nadam", "Adagrad", "Adadelta", "RMSprop",
           "schedules", "get", "serialize", "deserialize", "current_value", "clip_by_global_norm"]
