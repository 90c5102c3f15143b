"""keras.models: model classes and (de)serialisation entry points."""
from .model_files import load_model, save_model
from .models import Model, Sequential
from .saving import model_from_config, model_from_json, model_from_yaml

__all__ = ["Model", "Sequential", "load_model", "save_model", "model_from_config", "model_from_json",
           "model_from_yaml"]
