"""keras.datasets.cifar100: 50,000 training and 10,000 test 32x32 colour images in 100 classes
(20 coarse classes)."""
import os

import numpy as np

from ._cifar import channels_last, dataset_folder, load_batch

ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
FILE_HASH = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"


def load_data(label_mode="fine", path="cifar-100-python"):
    """((x_train, y_train), (x_test, y_test)) with the 'fine' (100) or 'coarse' (20) labels.
    ``path``: the extracted dataset folder (train, test), relative to ~/.keras/datasets unless
    absolute; downloaded and extracted there when missing."""
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f'`label_mode` must be one of `"fine"`, `"coarse"`. Received: label_mode={label_mode}.')
    folder = dataset_folder(path, ORIGIN, FILE_HASH)
    x_train, y_train = load_batch(os.path.join(folder, "train"), label_key=f"{label_mode}_labels")
    x_test, y_test = load_batch(os.path.join(folder, "test"), label_key=f"{label_mode}_labels")
    return channels_last(np.asarray(x_train, np.uint8), y_train, np.asarray(x_test, np.uint8), y_test)
