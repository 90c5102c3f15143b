"""keras.models: model classes and (de)serialisation entry points."""
from .models import Model, Sequential
from .saving import model_from_config, model_from_json, model_from_yaml

__all__ = ["Model", "Sequential", "model_from_config", "model_from_json", "model_from_yaml"]
