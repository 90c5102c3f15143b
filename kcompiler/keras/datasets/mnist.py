"""keras.datasets.mnist: 60,000 training and 10,000 test images of handwritten digits, 28x28 uint8."""
import numpy as np

from ..utils import get_file

ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
FILE_HASH = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


def load_data(path="mnist.npz"):
    """((x_train, y_train), (x_test, y_test)). ``path``: where the dataset is cached; a relative
    path is relative to ~/.keras/datasets. A missing file (or one whose hash does not match)
    is downloaded there first."""
    path = get_file(path, origin=ORIGIN, file_hash=FILE_HASH)
    with np.load(path, allow_pickle=False) as f:
        x_train, y_train = f["x_train"], f["y_train"]
        x_test, y_test = f["x_test"], f["y_test"]
    return (x_train, y_train), (x_test, y_test)
