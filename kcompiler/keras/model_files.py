"""Whole-model files: ``Model.save``, ``keras.models.save_model`` and ``keras.models.load_model``.

Two formats, as the two Kerases write them:

* ``.keras`` (Keras 3): a zip archive, members stored uncompressed in this order:
  ``metadata.json`` (``keras_version``, ``date_saved``), ``config.json`` (what ``to_json``
  writes: module, class_name, config, registered_name, build_config, compile_config) and
  ``model.weights.h5`` (the ``.weights.h5`` layout of callbacks/model_checkpoint.py, the
  optimizer's variables included). Real Keras 3 loads the files written here.
* legacy HDF5 (tf.keras 2; a ``.h5``/``.hdf5`` path or ``save_format='h5'``): root attributes
  ``model_config`` (JSON in tf.keras 2's schema), ``keras_version``, ``backend`` and, for a
  compiled model, ``training_config``; the weights in a ``model_weights`` group (tf.keras 2's
  ``.h5`` layout) and the optimizer state in ``optimizer_weights``. tf_keras loads the files
  written here; files written by tf_keras's or Keras 3's ``model.save('x.h5')`` load here
  (Keras 3's optimizer_weights are its ``optimizer.variables``, the learning rate included).
  tf.keras 2's config passes the tensors after a call's first argument as keyword arguments
  (``[layer, node, tensor]`` lists: MultiHeadAttention's ``value``, ``attention_mask``) and
  records a MultiHeadAttention's ``query/value/key_shape``; both are read and written so.

Loading rebuilds the architecture from the config, loads the weights and, when the file
records how the model was compiled and ``compile=True``, compiles it the same way and
restores the optimizer's variables (building them first, as Keras does), so training goes
on where it stopped. A file whose optimizer state does not fit the optimizer (tf_keras's
SGD keeps momentum slots even without momentum) loads with a fresh optimizer and a
warning, as Keras does.

A file is written through atomic_file.write_file_atomically: killing the process or filling
the disk during a save leaves the previous file at the path intact.

Differences from Keras, on purpose: ``include_optimizer=False`` also leaves the optimizer's
variables out of a ``.keras`` file (Keras 3 ignores the argument there); ``safe_mode`` is
as in Keras: on by default, it refuses to load a Lambda whose function is stored as Python
bytecode; saving with
``overwrite=False`` over an existing file raises FileExistsError instead of asking on the
terminal. Every problem with a file raises one exception that names the file:
FileNotFoundError for a path with no file, otherwise ModelFileError (kcompiler.errors): not a
model file, damaged, unsafe to read or over a size cap (model_file_checks.py says what is
refused before anything is parsed), weights that do not fit, or a config that does not
rebuild a model; for a config the subclass ModelFileConfigError, also a ConfigError (a class
or function the config names is unknown: pass custom_objects). UnsupportedError (a layer or
option kcompiler does not have) is not a problem with the file and stays what it is.
"""
import datetime
import inspect
import io
import json
import os
import re
import warnings
import zipfile

import numpy as np

from ..errors import (ConfigError, KCompilerError, ModelFileConfigError, ModelFileError,  # noqa: F401
                      UnsupportedError)
from .atomic_file import write_file_atomically
from .model_file_checks import (DATA_ERRORS, MAX_CONFIG_BYTES, check_hdf5_file, file_problems, parse_json,
                                read_archive_member)

KERAS3_VERSION = "3.15.1"   # the Keras 3 release whose .keras format this writes
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
LEGACY_SUFFIXES = (".h5", ".hdf5")


def _h5py():
    import h5py
    return h5py


# ---- saving ----------------------------------------------------------------------------------

def save_model(model, filepath, overwrite=True, save_format=None, include_optimizer=True, **kwargs):
    """Write ``model`` (architecture, weights, compile arguments, optimizer state) to ``filepath``:
    a ``.keras`` archive, or tf.keras 2's HDF5 file for a ``.h5``/``.hdf5`` path or ``save_format='h5'``."""
    for ignored in ("signatures", "options", "save_traces", "zipped"):  # tf.keras 2 / Keras 3 extras
        kwargs.pop(ignored, None)
    if kwargs:
        raise ValueError(f"The following argument(s) are not supported: {list(kwargs)}")
    filepath = os.fspath(filepath)
    fmt = _save_format(filepath, save_format)
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(f"{filepath} exists and overwrite=False")
    if os.path.isdir(filepath):
        raise IsADirectoryError(f"cannot save the model to {filepath}: it is a directory")
    dirname = os.path.dirname(filepath)
    if dirname:
        os.makedirs(dirname, exist_ok=True)
    if not model.built:
        warnings.warn("You are saving a model that has not yet been built. It might not contain any weights "
                      "yet. Consider building the model first by calling it on some data.", stacklevel=3)
    # The whole file is made in memory first, then replaces the previous one in one step (a crash
    # or a full disk during the write leaves the previous file as it was).
    data = _keras_archive(model, include_optimizer) if fmt == "keras" else _legacy_h5(model, include_optimizer)
    write_file_atomically(filepath, data)


def _save_format(filepath, save_format):
    fmt = None if save_format is None else str(save_format).lower()
    if fmt in ("h5", "hdf5"):
        return "h5"
    if fmt in ("keras", "keras_v3"):
        if not filepath.endswith(".keras"):
            raise ValueError(f"save_format='keras' writes a `.keras` file. Received: filepath={filepath}")
        return "keras"
    if fmt in ("tf", "savedmodel"):
        raise ValueError("save_format='tf' (a TensorFlow SavedModel) is not supported: save to a `.keras` file "
                         f"or to a `.h5` file. Received: filepath={filepath}")
    if fmt is not None:
        raise ValueError(f"Unknown save_format {save_format!r}: expected 'keras' or 'h5'")
    if filepath.endswith(".keras"):
        return "keras"
    if filepath.endswith(LEGACY_SUFFIXES):
        return "h5"
    raise ValueError("Invalid filepath extension for saving. Please add either a `.keras` extension for the "
                     f"native Keras format (recommended) or a `.h5` extension. Received: filepath={filepath}.")


def _keras_archive(model, include_optimizer):
    from .callbacks.model_checkpoint import _save_keras3, hdf5_image
    from .saving import model_to_json
    metadata = {"keras_version": KERAS3_VERSION,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    config = model_to_json(model)

    def fill(f):
        _save_keras3(model, f)
        if not include_optimizer and "optimizer" in f:
            del f["optimizer"]
    weights = hdf5_image(fill)
    # Keras 3 stores its members uncompressed, in this order.
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(METADATA_FILE, json.dumps(metadata))
        zf.writestr(CONFIG_FILE, config)
        zf.writestr(WEIGHTS_FILE, weights)
    return archive.getvalue()


def _legacy_h5(model, include_optimizer):
    from .callbacks.model_checkpoint import _save_legacy, hdf5_image
    from .saving import _plain
    model_config = {"class_name": _legacy_model_class(model), "config": legacy_config(model.get_config())}

    def fill(f):
        weights = f.create_group("model_weights")
        _save_legacy(model, weights)
        f.attrs["keras_version"] = weights.attrs["keras_version"]
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(_plain(model_config))
        optimizer = getattr(model, "optimizer", None)
        if include_optimizer and getattr(model, "compiled", False) and optimizer is not None:
            f.attrs["training_config"] = json.dumps(_plain(_training_config(model)))
            _save_legacy_optimizer(optimizer, f)
    return hdf5_image(fill)


def _legacy_model_class(model):
    from .models import Model, Sequential
    if type(model) is Sequential:
        return "Sequential"
    if type(model) is Model and model._is_functional:
        return "Functional"
    return type(model).__name__


def _training_config(model):
    """tf.keras 2's ``training_config`` from the model's compile arguments."""
    from . import backend, optimizers
    from .saving import _compile_config
    compiled = _compile_config(model)
    optimizer = optimizers.serialize(model.optimizer)
    # Keys tf.keras 2's optimizers do not take; at these values they change nothing.
    for key in ("loss_scale_factor", "gradient_accumulation_steps"):
        if optimizer["config"].get(key) is None:
            optimizer["config"].pop(key, None)
    # tf.keras 2 names its (non-legacy) optimizers "Custom>Adam"; a plain "Adam" means its legacy
    # optimizer there, which refuses weight_decay and the other newer arguments.
    class_name = optimizer["class_name"]
    optimizer["class_name"] = f"Custom>{class_name}"
    optimizer["config"].update({"jit_compile": False, "is_legacy_optimizer": False})
    # Its default optimizer names are the class names ("Adam"), and Keras 3 reading the file
    # resolves the optimizer by that name.
    if re.fullmatch(rf"{backend.snake_case(class_name)}(_\d+)?", str(optimizer["config"].get("name"))):
        optimizer["config"]["name"] = class_name
    return {"loss": _legacy_object(compiled["loss"]), "metrics": _legacy_object(compiled["metrics"]),
            "weighted_metrics": _legacy_object(compiled["weighted_metrics"]),
            "loss_weights": compiled["loss_weights"], "optimizer_config": optimizer}


def _legacy_object(value):
    """Keras 3's form of a loss or metric object -> tf.keras 2's ``{"class_name", "config"}``;
    lists and dicts (per output, by output name) of them element by element."""
    if isinstance(value, dict) and "class_name" in value:
        return {"class_name": value["class_name"], "config": value["config"]}
    if isinstance(value, dict):
        return {k: _legacy_object(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_legacy_object(v) for v in value]
    return value


def _save_legacy_optimizer(optimizer, f):
    """tf.keras 2's ``optimizer_weights``: iterations then the slots, one dataset each, in the order
    ``optimizer.get_weights()`` returns them."""
    variables = optimizer._state_variables()
    h5py = _h5py()
    group = f.create_group("optimizer_weights")
    names = [f"{var.path}:0" for var in variables]
    group.attrs["weight_names"] = np.array(names, dtype=h5py.string_dtype())
    for name, var in zip(names, variables):
        group.create_dataset(name, data=np.asarray(var.numpy()))


# ---- tf.keras 2's config schema (for the legacy .h5 writer) -----------------------------------

def legacy_config(config):
    """A model's ``get_config()`` (Keras 3's schema) in the schema tf.keras 2 reads: InputLayers
    with ``batch_input_shape``, functional calls as ``[[layer, node, tensor, kwargs], ...]`` with
    tf.keras 2's node numbers, input and output lists always nested."""
    from .saving import skips_first_node
    config = dict(config)
    if not isinstance(config.get("layers"), list):
        return config
    # tf.keras 2 numbers the calls of a nested model built from an input from 1 (its node 0 is
    # its own construction); Keras 3 numbers them from 0.
    offset = {entry.get("name"): 1 for entry in config["layers"] if skips_first_node(entry)}
    config["layers"] = [_legacy_layer(entry, offset) for entry in config["layers"]]
    if "input_layers" in config:
        config["input_layers"] = [_legacy_ref(ref, offset) for ref in _nested_refs(config["input_layers"])]
        config["output_layers"] = [_legacy_ref(ref, offset) for ref in _nested_refs(config["output_layers"])]
    return config


def _nested_refs(refs):
    return [refs] if refs and isinstance(refs[0], str) else refs


def _legacy_ref(ref, offset):
    name, node, *rest = ref
    return [name, node + offset.get(name, 0), *rest]


def _legacy_layer(entry, offset):
    entry = dict(entry)
    call_arg_names = _call_arg_names(entry)
    for key in ("module", "registered_name", "build_config", "compile_config"):
        entry.pop(key, None)
    config = entry.get("config")
    if entry.get("class_name") == "InputLayer" and isinstance(config, dict):
        config = dict(config)
        if "batch_shape" in config:
            config["batch_input_shape"] = config.pop("batch_shape")
        entry["config"] = config
    elif entry.get("class_name") in ("Sequential", "Functional", "Model") and isinstance(config, dict):
        entry["config"] = legacy_config(config)
    elif entry.get("class_name") == "MultiHeadAttention" and isinstance(config, dict):
        entry["config"] = {**config, **_attention_build_shapes(entry.get("inbound_nodes"), call_arg_names)}
    if isinstance(entry.get("config"), dict):
        entry["config"] = _without_keras3_keys(entry.get("class_name"), entry["config"])
    if "inbound_nodes" in entry:
        entry["inbound_nodes"] = [_legacy_node(node, offset, call_arg_names, entry.get("name"))
                                  for node in entry["inbound_nodes"]]
    return entry


def _call_arg_names(entry):
    """The names of the arguments of the ``call`` of the layer class a config entry names."""
    from .serialization import layer_class
    cls = layer_class(entry.get("class_name"), entry.get("registered_name"))
    if cls is None:
        return []
    parameters = list(inspect.signature(cls.call).parameters.values())[1:]   # after self
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


# Keras 3 arguments that tf.keras 2's layers refuse, with the values at which leaving them out
# changes nothing (None: any value; a seed only draws dropout masks, which no two frameworks share).
_KERAS3_ONLY_KEYS = {
    "MultiHeadAttention": {"use_gate": (False,), "sliding_window": (None,), "seed": None},
    "Attention": {"seed": None},
    "AdditiveAttention": {"seed": None},
    "LayerNormalization": {"rms_scaling": (False,)},
}


def _without_keras3_keys(class_name, config):
    keys = _KERAS3_ONLY_KEYS.get(class_name, {})
    for key, inert in keys.items():
        if key in config and inert is not None and config[key] not in inert:
            raise ValueError(f"layer '{config.get('name')}' ({class_name}) has {key}={config[key]!r}, which tf.keras "
                             "2's HDF5 config cannot write; save the model to a `.keras` file instead")
    return {k: v for k, v in config.items() if k not in keys}


def _attention_build_shapes(nodes, call_arg_names):
    """The shapes of the query, value and key of a MultiHeadAttention's first call (None when not
    called): tf.keras 2 writes them into its config and its from_config requires them (it builds
    the layer with them)."""
    shapes = {"query_shape": None, "value_shape": None, "key_shape": None}
    node = nodes[0] if nodes else None
    if isinstance(node, dict):
        named = {**dict(zip(call_arg_names, node.get("args", []))), **node.get("kwargs", {})}
        value = named.get("value")
        key = named.get("key") if named.get("key") is not None else value
        for name, tensor in (("query", named.get("query")), ("value", value), ("key", key)):
            if _is_tensor(tensor):
                shapes[f"{name}_shape"] = tensor["config"]["shape"]
    return shapes


def _legacy_node(node, offset, call_arg_names, layer_name):
    """Keras 3's ``{"args": [...], "kwargs": {...}}`` -> tf.keras 2's list of
    ``[layer name, node index, tensor index, call kwargs]``, one per tensor of the first argument.
    As tf.keras 2 writes them, the arguments after the first are keyword arguments by their
    names in ``call`` (MultiHeadAttention's ``value``), and a tensor among the keyword arguments
    is a ``[layer name, node index, tensor index]`` list."""
    if not isinstance(node, dict):   # already tf.keras 2's form
        return node
    args, kwargs = node.get("args", []), node.get("kwargs", {})
    first = args[0] if args else []
    tensors = first if isinstance(first, list) else [first]
    if any(not _is_tensor(t) for t in tensors):
        raise ValueError(f"layer '{layer_name}' is called on something other than tensors as its first argument, "
                         "which tf.keras 2's HDF5 config cannot write; save the model to a `.keras` file instead")
    if len(args) > max(1, len(call_arg_names)):
        raise ValueError(f"layer '{layer_name}' is called with {len(args)} positional arguments, which tf.keras 2's "
                         "HDF5 config can write only by their names in call(), and its call() names "
                         f"{len(call_arg_names)}; save the model to a `.keras` file instead")
    kwargs = {**dict(zip(call_arg_names[1:], args[1:])), **kwargs}
    kwargs = _legacy_tensor_refs(kwargs, offset)
    return [_legacy_ref(t["config"]["keras_history"], offset) + [kwargs] for t in tensors]


def _is_tensor(value):
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _legacy_tensor_refs(value, offset):
    """Tensors inside call arguments as tf.keras 2 writes them: ``[layer name, node index, tensor index]``."""
    if _is_tensor(value):
        return _legacy_ref(value["config"]["keras_history"], offset)
    if isinstance(value, (list, tuple)):
        return [_legacy_tensor_refs(v, offset) for v in value]
    if isinstance(value, dict):
        return {k: _legacy_tensor_refs(v, offset) for k, v in value.items()}
    return value


# ---- loading ---------------------------------------------------------------------------------

def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """A model from a ``.keras`` archive or a tf.keras 2 HDF5 file, compiled as it was saved
    (unless ``compile=False``), with its weights and optimizer state."""
    filepath = os.fspath(filepath)
    if os.path.isdir(filepath):
        raise ModelFileError(f"cannot load a model from {filepath}: it is a directory (a TensorFlow SavedModel "
                             "is not supported; load a `.keras` or `.h5` file)")
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"No model file at {filepath}: the file does not exist")
    from .serialization import safe_mode_scope
    if zipfile.is_zipfile(filepath):
        with safe_mode_scope(safe_mode):
            return _load_keras(filepath, custom_objects, compile)
    if _h5py().is_hdf5(filepath):
        with safe_mode_scope(safe_mode):
            return _load_legacy_h5(filepath, custom_objects, compile)
    kind = ("a `.keras` file must be a zip archive" if filepath.endswith(".keras") else
            "an HDF5 model file is damaged or not HDF5" if filepath.endswith(LEGACY_SUFFIXES) else
            "expected a `.keras` zip archive or a `.h5` HDF5 file")
    raise ModelFileError(f"cannot load a model from {filepath}: it is neither a zip archive nor an HDF5 "
                         f"file ({kind})")


def _load_keras(filepath, custom_objects, compile):
    try:
        with zipfile.ZipFile(filepath, "r") as zf:
            names = zf.namelist()
            for member in (CONFIG_FILE, WEIGHTS_FILE):
                if member not in names:
                    raise ModelFileError(f"{filepath} is not a Keras model archive: it has no {member} "
                                         f"(members: {', '.join(names) or 'none'})")
            config_text = read_archive_member(zf, CONFIG_FILE, filepath, limit=MAX_CONFIG_BYTES)
            weights = read_archive_member(zf, WEIGHTS_FILE, filepath)
    except ModelFileError:
        raise
    except Exception as e:   # noqa: BLE001
        # Only zipfile runs here, so whatever it raises is the archive's fault: BadZipFile, a bad
        # CRC, zlib.error, NotImplementedError for an unknown compression method, MemoryError...
        raise ModelFileError(f"cannot read the model archive {filepath}: {type(e).__name__}: {e}") from None
    config = parse_json(config_text, filepath, CONFIG_FILE)
    if not isinstance(config, dict):
        raise ModelFileError(f"{filepath}: {CONFIG_FILE} does not hold a model config (got "
                             f"{type(config).__name__})")
    try:
        weights_file = _h5py().File(io.BytesIO(weights), "r")
    except OSError as e:
        raise ModelFileError(f"{filepath}: {WEIGHTS_FILE} is not a readable HDF5 file: {e}") from None
    from .callbacks.model_checkpoint import _load_keras3
    with weights_file as f:
        with file_problems(filepath, f"cannot read {WEIGHTS_FILE}"):
            check_hdf5_file(f, f"{filepath} ({WEIGHTS_FILE})")
        compile_config = config.pop("compile_config", None)
        model = _model_from_config(config, custom_objects, filepath)
        if compile and compile_config:
            _compile_from_config(model, compile_config, custom_objects, filepath)
        with file_problems(filepath, "the weights do not fit the model"):
            if getattr(model, "compiled", False):
                _build_optimizer_if_saved_built(model, len(f["optimizer/vars"]) if "optimizer/vars" in f else 0,
                                                len(model.optimizer.variables))
            _load_keras3(model, f)
    return model


def _load_legacy_h5(filepath, custom_objects, compile):
    h5py = _h5py()
    try:
        f = h5py.File(filepath, "r")
    except OSError as e:
        raise ModelFileError(f"cannot read the HDF5 file {filepath}: {e}") from None
    with f, file_problems(filepath, "cannot read the model"):
        check_hdf5_file(f, filepath)
        model_config = f.attrs.get("model_config")
        if model_config is None:
            hint = (" (it holds weights only: build the model and call model.load_weights)"
                    if "layer_names" in f.attrs or "layers" in f else "")
            raise ModelFileError(f"No model config found in the file at {filepath}{hint}")
        config = parse_json(model_config, filepath, "the model_config attribute")
        model = _model_from_config(config, custom_objects, filepath)
        from .callbacks.model_checkpoint import _load_legacy
        if not isinstance(f.get("model_weights"), h5py.Group):
            raise ModelFileError(f"{filepath} has a model config but no model_weights group")
        with file_problems(filepath, "the weights do not fit the model"):
            _load_legacy(model, f["model_weights"])
        training_config = f.attrs.get("training_config")
        if not compile:
            return model
        if training_config is None:
            warnings.warn("No training configuration found in the save file, so the model was *not* compiled. "
                          "Compile it manually.", stacklevel=3)
            return model
        training_config = parse_json(training_config, filepath, "the training_config attribute")
        if not isinstance(training_config, dict):
            raise ModelFileError(f"{filepath}: the training_config attribute is not a dict of compile arguments")
        _compile_from_config(model, _compile_config_from_training_config(training_config), custom_objects,
                             filepath)
        if isinstance(f.get("optimizer_weights"), h5py.Group):
            saved = len(f["optimizer_weights"].attrs.get("weight_names", []))
            _build_optimizer_if_saved_built(model, saved, len(model.optimizer.get_weights()))
            _load_legacy_optimizer(model, f["optimizer_weights"], filepath)
    return model


def _model_from_config(config, custom_objects, filepath):
    from .saving import model_from_config
    try:
        return model_from_config(config, custom_objects)
    except ConfigError as e:
        raise ModelFileConfigError(f"cannot load the model in {filepath}: {e}") from None
    except UnsupportedError:
        raise
    except (KCompilerError, *DATA_ERRORS) as e:
        raise ModelFileError(f"cannot load the model in {filepath}: its config does not describe a model that "
                             f"can be built: {type(e).__name__}: {e}") from e


# ---- compile arguments -----------------------------------------------------------------------

def _compile_config_from_training_config(training_config):
    """tf.keras 2's ``training_config`` in Keras 3's ``compile_config`` form."""
    return {"optimizer": training_config.get("optimizer_config"), "loss": training_config.get("loss"),
            "metrics": training_config.get("metrics"), "loss_weights": training_config.get("loss_weights"),
            "weighted_metrics": training_config.get("weighted_metrics")}


def _compile_from_config(model, config, custom_objects, filepath):
    """``model.compile`` with the arguments a file recorded."""
    from .serialization import custom_object_scope
    if not isinstance(config, dict):
        raise ModelFileError(f"{filepath}: its compile arguments are not a dict (got {type(config).__name__})")
    try:
        with custom_object_scope(custom_objects):
            kwargs = {"optimizer": _optimizer(config.get("optimizer")),
                      "loss": _loss(config.get("loss")),
                      "metrics": _metrics(config.get("metrics"))}
            if config.get("weighted_metrics") is not None:
                kwargs["weighted_metrics"] = _metrics(config["weighted_metrics"])
            if config.get("loss_weights") is not None:
                kwargs["loss_weights"] = config["loss_weights"]
            if config.get("run_eagerly"):
                kwargs["run_eagerly"] = True
        model.compile(**kwargs)
    except (ConfigError, *DATA_ERRORS) as e:
        raise ModelFileConfigError(f"cannot compile the model in {filepath} as it was saved: {e}. Pass "
                                   "compile=False to load it uncompiled, or the missing objects in "
                                   "custom_objects") from e


def _build_optimizer_if_saved_built(model, saved_count, unbuilt_count):
    """Create the optimizer's slots (as Keras's compile_from_config does) so that the saved state
    can be loaded into them, unless the file holds only an unbuilt optimizer's variables (a model
    saved before it trained): then loading them needs no slots, and the step builds them later."""
    if saved_count > unbuilt_count and model.built and model.trainable_weights:
        model.optimizer.build(model.trainable_weights)


def _user_object(name):
    from .serialization import get_registered_object
    return get_registered_object(name)


def _optimizer(config):
    from . import optimizers
    if config is None:
        return "rmsprop"   # compile's default
    if isinstance(config, str):
        return optimizers.get(config)
    class_name = str(config.get("class_name", ""))
    user = _user_object(config.get("registered_name")) or _user_object(class_name)
    if user is not None:
        return user.from_config(config.get("config", {}))
    # tf.keras 2 registers its optimizers as "Custom>Adam".
    class_name = class_name.split(">")[-1]
    return optimizers.deserialize({"class_name": class_name, "config": config.get("config", {})})


def _function_name(value):
    """The name a function is stored under: a string, or Keras 3's {"class_name": "function"} form."""
    if isinstance(value, dict) and value.get("class_name") == "function":
        return value.get("config")
    return value if isinstance(value, str) else None


def _loss(config):
    from . import losses
    if config is None:
        return None
    if isinstance(config, dict) and set(config) <= {"class_name", "config", "module", "registered_name"} \
            and "class_name" in config:
        name = _function_name(config)
        if name is not None:
            return _named_function(name, losses.ALL_OBJECTS, "loss")
        user = _user_object(config.get("registered_name")) or _user_object(config["class_name"])
        if user is not None:
            return user.from_config(config.get("config", {})) if isinstance(user, type) else user
        return losses.deserialize({"class_name": config["class_name"], "config": config.get("config", {})})
    if isinstance(config, str):
        return config if config in losses.ALL_OBJECTS else _named_function(config, losses.ALL_OBJECTS, "loss")
    if isinstance(config, dict):   # one loss per output name
        return {k: _loss(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_loss(v) for v in config]
    raise ValueError(f"cannot read the loss {config!r}")


def _named_function(name, builtins, what):
    if name in builtins:
        return builtins[name]
    user = _user_object(name)
    if user is None:
        raise ValueError(f"unknown {what} function {name!r}")
    return user


def _metrics(config):
    """compile(metrics=...) as recorded: a list; one list per output (tf.keras 2 writes one even
    for a single output, which is unwrapped); or a dict by output name. A MeanMetricWrapper of a
    built-in function is written back as its name ('mae', 'accuracy'), which compile resolves
    exactly as the original compile did."""
    from . import metrics
    if config is None:
        return None
    if isinstance(config, list) and len(config) == 1 and isinstance(config[0], list):
        config = config[0]
    if isinstance(config, dict) and "class_name" not in config:  # per output name
        return {k: _metrics(v) for k, v in config.items()}
    if not isinstance(config, list):
        config = [config]
    return [_metrics(entry) if isinstance(entry, (list, dict)) and "class_name" not in entry
            else None if entry is None else _metric(entry, metrics) for entry in config]


def _metric(entry, metrics):
    name = _function_name(entry)
    if name is not None:
        if name in metrics.ALL_OBJECTS or name.lower() in ("accuracy", "acc"):
            return name
        return _named_function(name, {}, "metric")
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise ValueError(f"cannot read the metric {entry!r}")
    config = dict(entry.get("config") or {})
    user = _user_object(entry.get("registered_name")) or _user_object(entry["class_name"])
    if user is not None:
        return user.from_config(config) if isinstance(user, type) else user
    if entry["class_name"] == "MeanMetricWrapper":
        metric_name, fn = config.get("name"), config.get("fn")
        if isinstance(metric_name, str) and (metric_name in metrics.ALL_OBJECTS
                                             or metric_name.lower() in ("accuracy", "acc")):
            return metric_name
        return metrics.MeanMetricWrapper(_metric_function(_function_name(fn), metrics), name=metric_name)
    return metrics.deserialize({"class_name": entry["class_name"], "config": config})


def _metric_function(name, metrics):
    """The function a MeanMetricWrapper names: an accuracy function, a loss function or a user's."""
    from . import losses
    for fn in (getattr(metrics, str(name), None), losses.ALL_OBJECTS.get(name), _user_object(name)):
        if inspect.isfunction(fn):
            return fn
    raise ValueError(f"unknown metric function {name!r}")


def _load_legacy_optimizer(model, group, filepath):
    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)
    names = [text(n) for n in group.attrs.get("weight_names", [])]
    try:
        datasets = [group[n] for n in names]
        # Shapes first: a crafted file must not make this decompress more than the optimizer holds.
        shapes = [getattr(d, "shape", None) for d in datasets]
        expected = [np.shape(w) for w in model.optimizer.get_weights()]
        # Keras 3's .h5 writer stores its optimizer.variables: the learning rate too.
        keras3_variables = model.optimizer.variables
        if shapes == expected:
            model.optimizer.set_weights([d[()] for d in datasets])
        elif shapes == [tuple(v.shape) for v in keras3_variables]:
            for var, dataset in zip(keras3_variables, datasets):
                var.assign(dataset[()])
        else:
            raise ValueError(f"the file holds arrays of shapes {shapes}, the optimizer {expected}")
    except (ValueError, KeyError) as e:
        warnings.warn(f"Error in loading the saved optimizer state from {filepath} ({e}). As a result, your "
                      "model is starting with a freshly initialized optimizer.", stacklevel=4)
