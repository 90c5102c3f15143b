"""keras.callbacks.ModelCheckpoint, and the HDF5 weight files it writes (``model.save_weights``).

Two layouts, chosen by the file name, as the two Kerases write them:

* ``*.weights.h5`` — Keras 3's: one group per layer under ``layers/<key>`` for Sequential and
  functional models (key = the snake-cased class name, numbered ``dense``, ``dense_1``, ...
  in layer order) or ``<attribute>`` for subclassed models and nested layers
  (``bidirectional/forward_layer``); a layer's own variables are datasets
  ``<group>/vars/0, 1, ...`` (trainable first), recurrent layers keep theirs in
  ``<group>/cell/vars``; every ``vars`` group carries the object's ``name``. The optimizer's
  variables go to ``optimizer/vars``. Real Keras 3 reads these files and writes ones we read.
* any other ``*.h5`` — tf.keras 2's: root attributes ``layer_names``/``backend``/``keras_version``,
  a group per layer name with attribute ``weight_names`` (``dense/kernel:0``, ...) and one
  dataset per weight at ``<layer name>/<weight name>``. Loading goes by the order of the
  layers that have weights and of the weights in each, as tf.keras does; a stored weight whose
  name is another variable of the layer (a swapped query and key kernel) is refused.

Files are written through atomic_file.write_file_atomically: a save replaces the previous
file whole or leaves it as it was. Loading refuses what model_file_checks.py refuses, reads a
weight only once its shape fits the model's, and raises ModelFileError naming the file for any
problem with it (FileNotFoundError for a path with no file).
"""
import io
import os

import numpy as np

from ...errors import ModelFileError
from .. import backend
from ..atomic_file import write_file_atomically
from ..model_file_checks import check_hdf5_file, file_problems
from ..layers.base import Layer
from .monitor_callback import MonitorCallback

_RECURRENT = ("SimpleRNN", "LSTM", "GRU")


def _h5py():
    import h5py
    return h5py


def hdf5_image(fill):
    """The bytes of an HDF5 file built in memory by ``fill(h5py.File)``. Every weights and model
    file is made this way and then written with write_file_atomically: nothing opens a
    user's path for writing, so a crash or a full disk never destroys the previous file."""
    data = io.BytesIO()
    with _h5py().File(data, "w") as f:  # an in-memory file object, not a path
        fill(f)
    return data.getvalue()


# ---- Keras 3 layout (.weights.h5) ---------------------------------------------------------

def _numbered(objects):
    """[(key, object)]: Keras 3 names the items of a list by class, numbering repeats."""
    used, out = {}, []
    for obj in objects:
        name = backend.snake_case(type(obj).__name__)
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        out.append((name, obj))
    return out


def _children(layer):
    """[(relative group path, sublayer)] as Keras 3 walks a layer or model."""
    from ..models import Sequential
    if isinstance(layer, Sequential) or getattr(layer, "_is_functional", False):
        return [(f"layers/{key}", sub) for key, sub in _numbered(layer.layers)]
    out, seen = [], set()
    for attr in sorted(k for k in vars(layer) if not k.startswith("_")):
        value = getattr(layer, attr)
        if isinstance(value, Layer) and value is not layer:
            items = [(attr, value)]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value):
            items = [(f"{attr}/{key}", v) for key, v in _numbered(value)]
        else:
            continue
        for path, sub in items:
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append((path, sub))
    rest = [s for s in layer.layers if id(s) not in seen]
    return out + [(f"layers/{key}", sub) for key, sub in _numbered(rest)]


def _own_variables(layer):
    own = layer._own_weights()
    return [w for w in own if w.trainable] + [w for w in own if not w.trainable]


def _recurrent_name(layer):
    return next((c.__name__ for c in type(layer).__mro__ if c.__name__ in _RECURRENT), None)


def _walk(layer, path):
    """[(group path, name attribute, variables)] for ``layer`` and everything inside it."""
    cell = _recurrent_name(layer)
    if cell is not None:
        out = [(path, layer.name, []), (f"{path}/cell", f"{backend.snake_case(cell)}_cell", _own_variables(layer))]
    else:
        out = [(path, layer.name, _own_variables(layer))]
    for child_path, sub in _children(layer):
        out.extend(_walk(sub, f"{path}/{child_path}" if path else child_path))
    return out


def _save_keras3(model, f):
    for path, name, variables in _walk(model, ""):
        group = f.require_group(f"{path}/vars" if path else "vars")
        group.attrs["name"] = name
        for i, var in enumerate(variables):
            group.create_dataset(str(i), data=np.asarray(var.numpy()))
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and hasattr(optimizer, "variables"):
        group = f.require_group("optimizer/vars")
        group.attrs["name"] = optimizer.name
        for i, var in enumerate(optimizer.variables):
            group.create_dataset(str(i), data=np.asarray(var.numpy()))


def _assign(var, stored, where, skip_mismatch):
    """Assign the HDF5 dataset ``stored`` to ``var``. It is read only once its shape fits, so that a
    file cannot make loading decompress more data than the model holds."""
    if not isinstance(stored, _h5py().Dataset) or stored.dtype.kind not in "biuf":
        raise ValueError(f"weight file: {where} is not an array of numbers")
    if stored.shape != var.shape:
        if skip_mismatch:
            return
        raise ValueError(f"weight file: {where} has shape {stored.shape}, but the model's variable "
                         f"{var.path!r} has shape {var.shape}")
    var.assign(stored[()])


def _load_keras3(model, f, skip_mismatch=False):
    import warnings
    for path, _, variables in _walk(model, ""):
        key = f"{path}/vars" if path else "vars"
        if key not in f:
            if variables and not skip_mismatch:
                raise ValueError(f"weight file: no group {key!r} for the weights of {path or model.name!r}; "
                                 f"the file has {sorted(f.keys())} at its top level")
            continue
        stored = f[key]
        if len(stored) != len(variables):
            if skip_mismatch:
                continue
            raise ValueError(f"weight file: {key!r} holds {len(stored)} variables but the model's "
                             f"{path or model.name!r} has {len(variables)}")
        for i, var in enumerate(variables):
            _assign(var, stored[str(i)], f"{key}/{i}", skip_mismatch)
    optimizer = getattr(model, "optimizer", None)
    if "optimizer/vars" in f and optimizer is not None and hasattr(optimizer, "variables"):
        stored, mine = f["optimizer/vars"], optimizer.variables
        if len(stored) != len(mine):
            warnings.warn(f"Skipping variable loading for optimizer '{optimizer.name}', because it has "
                          f"{len(mine)} variables whereas the saved optimizer has {len(stored)} variables.",
                          stacklevel=3)
            return
        for i, var in enumerate(mine):
            _assign(var, stored[str(i)], f"optimizer/vars/{i}", skip_mismatch)


# ---- tf.keras 2 layout (.h5) --------------------------------------------------------------

def _legacy_names(layer, prefix):
    """[(weight name as tf.keras 2 wrote it, variable)] for ``layer``'s weights, in weights order."""
    cell = _recurrent_name(layer)
    scope = f"{prefix}/{backend.snake_case(cell)}_cell" if cell else prefix
    out = [(f"{scope}/{var.name}:0", var) for var in _own_variables(layer)]
    for sub in layer.layers:
        out.extend(_legacy_names(sub, f"{prefix}/{sub.name}"))
    return out


def _save_legacy(model, f):
    h5py = _h5py()
    text = h5py.string_dtype()
    f.attrs["layer_names"] = np.array([layer.name for layer in model.layers], dtype=text)
    f.attrs["backend"] = "tensorflow"
    f.attrs["keras_version"] = "2.4.0"
    for layer in model.layers:
        group = f.create_group(layer.name)
        named = _legacy_names(layer, layer.name)
        group.attrs["weight_names"] = np.array([n for n, _ in named], dtype=text)
        for name, var in named:
            group.create_dataset(name, data=np.asarray(var.numpy()))


def _load_legacy(model, f, skip_mismatch=False):
    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)
    stored = []
    for layer_name in (text(n) for n in f.attrs["layer_names"]):
        names = [text(n) for n in f[layer_name].attrs.get("weight_names", [])]
        if names:
            stored.append((layer_name, [(n, f[layer_name][n]) for n in names]))
    layers = [layer for layer in model.layers if layer.weights]
    if len(stored) != len(layers):
        raise ValueError(f"weight file: it holds weights for {len(stored)} layers "
                         f"({', '.join(n for n, _ in stored)}) but model '{model.name}' has {len(layers)} layers "
                         f"with weights ({', '.join(l.name for l in layers)})")
    for (layer_name, values), layer in zip(stored, layers):
        named = _legacy_names(layer, layer.name)
        if len(values) != len(named):
            raise ValueError(f"weight file: layer {layer_name!r} holds {len(values)} weights but layer "
                             f"'{layer.name}' has {len(named)}")
        for (name, var), (stored_name, value) in zip(named, values):
            _check_weight_name(layer_name, stored_name, name, [n for n, _ in named])
            _assign(var, value, f"{layer_name}/{stored_name}", skip_mismatch)


def _name_parts(name):
    return name.split(":")[0].split("/")


def _names_agree(stored, mine):
    """Whether a weight name in a tf.keras 2 file (``dense/kernel:0``, nested models' weights without
    the model's name, TimeDistributed's without the inner layer's) can be the variable we name
    ``mine``: the same variable name and, where the file names a sublayer
    (``multi_head_attention/query/kernel:0``), the same sublayer."""
    s, m = _name_parts(stored), _name_parts(mine)
    return s[-1] == m[-1] and (len(s) < 3 or len(m) >= 2 and s[-2] == m[-2])


def _check_weight_name(layer_name, stored, mine, all_mine):
    """Weights load by their order in the layer, as tf.keras does; a stored name that is another of
    the layer's variables (a query kernel where the key kernel goes, gamma where beta goes: the same
    shapes) would load wrong weights without any shape error, so it is refused. Names that are none
    of ours (Keras 2's depthwise_kernel for our kernel) leave the order to decide."""
    if _names_agree(stored, mine):
        return
    other = next((n for n in all_mine if _names_agree(stored, n)), None)
    if other is not None:
        known_as = "" if _name_parts(other) == _name_parts(stored) else f" (the model's {other!r})"
        raise ValueError(f"weight file: layer {layer_name!r} holds {stored!r}{known_as} where the model's layer "
                         f"expects {mine!r}: its weights are in another order or belong to another layer")


# ---- entry points ----------------------------------------------------------------------------

def save_weights(model, filepath, overwrite=True):
    filepath = os.fspath(filepath)
    if not filepath.endswith(".h5"):
        raise ValueError("The filename must end in `.weights.h5` (Keras 3's weights file) or `.h5` "
                         f"(tf.keras 2's). Received: filepath={filepath}")
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{filepath} exists and overwrite=False")
    save = _save_keras3 if filepath.endswith(".weights.h5") else _save_legacy
    write_file_atomically(filepath, hdf5_image(lambda f: save(model, f)))


def load_weights(model, filepath, skip_mismatch=False):
    filepath = os.fspath(filepath)
    if not filepath.endswith(".h5"):
        raise ValueError(f"load_weights reads `.weights.h5` and `.h5` files. Received: filepath={filepath}")
    try:
        f = _h5py().File(filepath, "r")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ModelFileError(f"cannot read the HDF5 file {filepath}: {e}") from None
    with f, file_problems(filepath, "the weights do not fit the model"):
        check_hdf5_file(f, filepath)
        if "layer_names" in f.attrs:
            _load_legacy(model, f, skip_mismatch)
        else:
            _load_keras3(model, f, skip_mismatch)


# ---- the callback ----------------------------------------------------------------------------

class ModelCheckpoint(MonitorCallback):
    """Save the model (or its weights) after every epoch, or every ``save_freq`` batches; with
    ``save_best_only`` only when ``monitor`` improved. ``filepath`` may hold ``{epoch:02d}``
    and any logs key (``{val_loss:.2f}``)."""
    chief_only = True  # rank 0 writes the checkpoints (every rank holds the same weights)

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None, options=None, **kwargs):
        super().__init__(monitor, mode, initial_value_threshold)
        self.verbose = verbose
        self.filepath = os.fspath(filepath)
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = None
        self._current_epoch = 0
        if save_freq != "epoch" and not isinstance(save_freq, int):
            raise ValueError(f"Unrecognized save_freq: {save_freq}. Expected save_freq are 'epoch' or integer values")
        if save_weights_only and not self.filepath.endswith(".h5"):
            raise ValueError("When using `save_weights_only=True` in `ModelCheckpoint`, the filepath provided must "
                             f"end in `.weights.h5` (Keras weights format). Received: filepath={self.filepath}")
        if not save_weights_only and not self.filepath.endswith((".keras", ".h5")):
            raise ValueError("The filepath provided must end in `.keras` (Keras model format). "
                             f"Received: filepath={self.filepath}")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            self._batches_seen_since_last_saving += batch + 1
        else:
            self._batches_seen_since_last_saving += batch - self._last_batch_seen
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        if self.save_freq == "epoch":
            self._save_model(epoch, None, logs)

    def _save_model(self, epoch, batch, logs):
        from ...runtime.progbar import Progbar
        logs = logs or {}
        filepath = self._file_path(epoch, batch, logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                import warnings
                warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=2)
            else:
                best = "None" if self.best is None else f"{self.best:.5f}"
                if not self._is_improvement(current, self.best):
                    if self.verbose > 0:
                        Progbar._write(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}\n")
                    return
                if self.verbose > 0:
                    Progbar._write(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to {current:.5f}, "
                                   f"saving model to {filepath}\n")
                self.best = current
        elif self.verbose > 0:
            Progbar._write(f"\nEpoch {epoch + 1}: saving model to {filepath}\n")
        dirname = os.path.dirname(filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if os.path.isdir(filepath):
            raise IOError(f"Please specify a non-directory filepath for ModelCheckpoint. Filepath used is an "
                          f"existing directory: {filepath}")
        if self.save_weights_only:
            self.model.save_weights(filepath, overwrite=True)
        else:
            self.model.save(filepath, overwrite=True)

    def _file_path(self, epoch, batch, logs):
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". Reason: {e}') from None
