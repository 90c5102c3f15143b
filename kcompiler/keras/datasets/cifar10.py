"""keras.datasets.cifar10: 50,000 training and 10,000 test 32x32 colour images in 10 classes."""
import os

import numpy as np

from ._cifar import channels_last, dataset_folder, load_batch

ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FILE_HASH = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


def load_data(path="cifar-10-batches-py"):
    """((x_train, y_train), (x_test, y_test)): images (n, 32, 32, 3) uint8, labels (n, 1) uint8.
    ``path``: the extracted dataset folder (data_batch_1..5, test_batch); a relative path is
    relative to ~/.keras/datasets, and a missing folder is downloaded and extracted there."""
    folder = dataset_folder(path, ORIGIN, FILE_HASH)
    parts = [load_batch(os.path.join(folder, f"data_batch_{i}")) for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts]).astype(np.uint8)
    y_train = np.concatenate([np.asarray(p[1]) for p in parts])
    x_test, y_test = load_batch(os.path.join(folder, "test_batch"))
    return channels_last(x_train, y_train, np.asarray(x_test, np.uint8), y_test)
