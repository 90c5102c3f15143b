"""keras.datasets and utils.get_file: Keras's cache (~/.keras/datasets, or $KERAS_HOME), downloads
only when a file is missing or its hash does not match. No network: files are placed in a
temporary cache, and downloads go through a stand-in for urlretrieve."""
import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from kcompiler import keras
from kcompiler.keras.datasets import cifar10, cifar100, mnist


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    folder = tmp_path / "keras_home" / "datasets"
    folder.mkdir(parents=True)
    return folder


def fake_mnist(path, seed=0):
    rng = np.random.default_rng(seed)
    arrays = dict(x_train=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 6),
                  x_test=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 2))
    np.savez(path, **arrays)
    return arrays


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_mnist_reads_the_cached_file(cache, monkeypatch):
    arrays = fake_mnist(cache / "mnist.npz")
    monkeypatch.setattr(mnist, "FILE_HASH", sha256(cache / "mnist.npz"))
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda *a: pytest.fail("no download expected"))
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert x_train.dtype == np.uint8 and x_test.shape == (2, 28, 28)
    other = cache.parent / "elsewhere.npz"  # an absolute path is used as it is
    fake_mnist(other, seed=1)
    monkeypatch.setattr(mnist, "FILE_HASH", sha256(other))
    (x_train, _), _ = mnist.load_data(path=str(other))
    assert not np.array_equal(x_train, arrays["x_train"])


def test_a_file_with_the_wrong_hash_is_downloaded_again(cache, monkeypatch, capsys):
    fake_mnist(cache / "mnist.npz", seed=0)
    good = cache.parent / "good.npz"
    arrays = fake_mnist(good, seed=3)
    monkeypatch.setattr(mnist, "FILE_HASH", sha256(good))
    downloads = []

    def urlretrieve(url, target, *args):
        downloads.append(url)
        os.replace(good, target)
    monkeypatch.setattr(urllib.request, "urlretrieve", urlretrieve)
    (x_train, _), _ = mnist.load_data()
    assert downloads == [mnist.ORIGIN]
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    out = capsys.readouterr().out
    assert "hash does not match" in out and f"Downloading data from {mnist.ORIGIN}" in out


def test_a_failed_download_leaves_nothing_behind(cache, monkeypatch):
    def urlretrieve(url, target, *args):
        open(target, "wb").write(b"partial")
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlretrieve", urlretrieve)
    with pytest.raises(Exception, match="URL fetch failure"):
        mnist.load_data()
    assert not (cache / "mnist.npz").exists()


def write_cifar_batch(path, labels_key, n, seed, extra_labels=None):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"data": data, labels_key: [int(c) for c in rng.integers(0, 10, n)]}  # as CIFAR: Python ints
    batch.update(extra_labels or {})
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return data, batch[labels_key]


def test_cifar10_reads_the_extracted_batches(cache):
    folder = cache / "cifar-10-batches-py"
    folder.mkdir()
    parts = [write_cifar_batch(folder / f"data_batch_{i}", b"labels", 2, i) for i in range(1, 6)]
    test_data, test_labels = write_cifar_batch(folder / "test_batch", b"labels", 3, 9)
    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    assert x_train.shape == (10, 32, 32, 3) and y_train.shape == (10, 1) and x_test.shape == (3, 32, 32, 3)
    assert x_train.dtype == y_train.dtype == np.uint8
    first = parts[0][0][0].reshape(3, 32, 32)  # stored channels first: R plane, G plane, B plane
    np.testing.assert_array_equal(x_train[0, :, :, 1], first[1])
    np.testing.assert_array_equal(y_test[:, 0], test_labels)


def test_cifar100_fine_and_coarse_labels(cache, tmp_path):
    folder = tmp_path / "cifar100"  # an absolute path
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 4), ("test", 2)):
        coarse = [int(c) for c in rng.integers(0, 20, n)]
        write_cifar_batch(folder / name, b"fine_labels", n, n, {b"coarse_labels": coarse})
    (_, fine), _ = cifar100.load_data(path=str(folder))
    (_, coarse), (x_test, _) = cifar100.load_data(label_mode="coarse", path=str(folder))
    assert fine.shape == coarse.shape == (4, 1) and x_test.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="label_mode"):
        cifar100.load_data(label_mode="medium")


def test_cifar_batches_may_only_hold_arrays(cache):
    folder = cache / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": os.system}, f)  # would call a function when unpickled
    with pytest.raises(pickle.UnpicklingError, match="Refusing"):
        cifar10.load_data()


def test_get_file_untar(cache, tmp_path, monkeypatch):
    source = tmp_path / "archive" / "stuff"
    source.mkdir(parents=True)
    (source / "a.txt").write_text("hello")
    with tarfile.open(cache / "stuff.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="stuff")
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda *a: pytest.fail("no download expected"))
    path = keras.utils.get_file("stuff", origin="https://example.invalid/stuff.tar.gz", untar=True)
    assert path == str(cache / "stuff") and open(os.path.join(path, "a.txt")).read() == "hello"
