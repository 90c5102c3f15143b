"""Model configs and their JSON/YAML forms (being written; see the foundation issue)."""
from ..errors import ConfigError


def model_config(model):
    raise NotImplementedError("model configs are not implemented yet")


def model_to_json(model, **kwargs):
    raise NotImplementedError("to_json is not implemented yet")


def model_to_yaml(model, **kwargs):
    raise NotImplementedError("to_yaml is not implemented yet")


def model_from_config(config, custom_objects=None):
    raise ConfigError("model_from_config is not implemented yet")


def model_from_json(text, custom_objects=None):
    raise ConfigError("model_from_json is not implemented yet")


def model_from_yaml(text, custom_objects=None):
    raise ConfigError("model_from_yaml is not implemented yet")
