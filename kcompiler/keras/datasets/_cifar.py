"""What cifar10 and cifar100 share: finding the extracted folder, reading a pickled batch."""
import os
import pickle

import numpy as np

from ..utils import get_file, keras_cache_dir

_ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                    ("numpy._core.multiarray", "_reconstruct")}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickled dicts of numpy arrays and lists: nothing else may be built."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Refusing to deserialize `{module}.{name}` while loading a Keras dataset. "
                                     "The file may be corrupted or malicious.")


def load_batch(fpath, label_key="labels"):
    """(data as (n, 3, 32, 32) uint8, labels) from one pickled CIFAR batch file."""
    with open(fpath, "rb") as f:
        d = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    d = {(k.decode("utf8") if isinstance(k, bytes) else k): v for k, v in d.items()}
    data = np.asarray(d["data"])
    return data.reshape(data.shape[0], 3, 32, 32), d[label_key]


def dataset_folder(path, origin, file_hash):
    """The extracted folder ``path`` (relative paths are under ~/.keras/datasets); downloaded and
    extracted only when that folder is missing."""
    folder = os.path.join(keras_cache_dir(), "datasets", os.fspath(path))
    if os.path.isdir(folder):
        return folder
    return get_file(path, origin=origin, untar=True, file_hash=file_hash)


def channels_last(x_train, y_train, x_test, y_test):
    """Keras's layout: images (n, 32, 32, 3), labels (n, 1), both uint8."""
    x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
    y_train = np.reshape(np.asarray(y_train, np.uint8), (len(y_train), 1))
    y_test = np.reshape(np.asarray(y_test, np.uint8), (len(y_test), 1))
    return (x_train, y_train), (x_test.astype(x_train.dtype), y_test)
