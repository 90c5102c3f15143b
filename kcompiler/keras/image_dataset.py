"""keras.utils.image_dataset_from_directory, without TensorFlow: an ImageDataset of numpy batches.

What equals Keras 3 exactly: which files are found and in which order (class folders in
alphanumeric order, or ``class_names``' order; inside a class folder every file with an image
suffix, folders walked in sorted order, names sorted as strings), the labels and class names,
Keras's one-time shuffle of that list (``numpy.random.RandomState(seed)`` over the paths and,
seeded again, over the labels), the training/validation split taken from the end of that list
(``int(validation_split * n)`` files), the shapes, dtypes and label encodings, and the images
themselves where no resizing happens (a file already of ``image_size``). Resizing follows
tf.image.resize as image_utils.resize documents ('bilinear', the default, and 'nearest' in
TensorFlow's arithmetic). Files are decoded by Pillow instead of TensorFlow; Pillow also
decodes the files TensorFlow refuses (a BMP read as grayscale).

Not the same: Keras shuffles the training batches again on every pass with tf.data's
buffered shuffle (a buffer of 8 batches) and TensorFlow's random stream; here each epoch
visits the files in a permutation drawn from ``numpy.random.default_rng(seed)`` (a full
shuffle; one new permutation per epoch, as Keras's reshuffle_each_iteration). The validation
dataset is never shuffled, as in Keras.

The ImageDataset follows the PyDataset protocol: ``len(ds)`` batches, ``ds[i]`` is batch i
(``(images, labels)``, or ``images`` without labels), ``on_epoch_end()`` starts the next
epoch's order. Iterating it yields one epoch of batches and then calls on_epoch_end, like a
pass over a tf.data.Dataset; ``take(n)`` and ``unbatch()`` work as tf.data's.
"""
import copy
import math
import os

import numpy as np

from .image_utils import (KERAS_RESIZE_METHODS, convert_color, open_image, pil_image, resize, resize_with_pad,
                          resolve_data_format, smart_resize)

__all__ = ["image_dataset_from_directory", "ImageDataset"]

ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}


def _valid_files(directory, follow_links):
    for root, _, files in sorted(os.walk(directory, followlinks=follow_links), key=lambda entry: entry[0]):
        for name in sorted(files):
            if name.lower().endswith(ALLOWLIST_FORMATS):
                yield os.path.join(root, name)


def index_directory(directory, labels, class_names, shuffle, seed, follow_links):
    """(file paths, labels or None, class names) as Keras's dataset_utils.index_directory."""
    if labels == "inferred":
        subdirs = [d for d in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")]
        if class_names is not None:
            if not set(class_names).issubset(set(subdirs)):
                raise ValueError("The `class_names` passed did not match the names of the subdirectories of the "
                                 f"target directory. Expected: {subdirs} (or a subset of it), but received: "
                                 f"class_names={class_names}")
            subdirs = list(class_names)
    else:
        subdirs = [""]
        if class_names is not None:
            raise ValueError("When `labels=None` (no labels), argument `class_names` cannot be specified."
                             if labels is None else
                             "When argument `labels` is specified, argument `class_names` cannot be specified "
                             "(the `class_names` will be the sorted list of labels).")
    paths, found_labels = [], []
    for index, subdir in enumerate(subdirs):
        for path in _valid_files(os.path.join(directory, subdir), follow_links):
            paths.append(path)
            found_labels.append(index)
    if labels == "inferred":
        class_names, labels = subdirs, np.asarray(found_labels, np.int32)
    elif labels is None:
        class_names = None
    else:
        if len(labels) != len(paths):
            raise ValueError("Expected the lengths of `labels` to match the number of files in the target "
                             f"directory. len(labels) is {len(labels)} while we found {len(paths)} files in "
                             f"directory {directory}.")
        class_names = [str(label) for label in sorted(set(labels))]
        labels = np.asarray(labels, np.int32)
    if shuffle:
        np.random.RandomState(seed).shuffle(paths)
        if labels is not None:
            np.random.RandomState(seed).shuffle(labels)
    return paths, labels, class_names


def _split(paths, labels, validation_split, subset):
    """Keras's get_training_or_validation_split: the last int(split * n) files validate."""
    if not validation_split:
        return paths, labels
    n_val = int(validation_split * len(paths))
    if subset == "training":
        print(f"Using {len(paths) - n_val} files for training.")
        keep = slice(None, -n_val)
    else:
        print(f"Using {n_val} files for validation.")
        keep = slice(-n_val, None)
    return paths[keep], (None if labels is None else labels[keep])


def _check_arguments(labels, label_mode, class_names, color_mode, image_size, interpolation, validation_split,
                     subset, shuffle, seed, crop_to_aspect_ratio, pad_to_aspect_ratio):
    if labels not in ("inferred", None):
        if not isinstance(labels, (list, tuple)):
            raise ValueError("`labels` argument should be a list/tuple of integer labels, of the same size as the "
                             "number of image files in the target directory. If you wish to infer the labels "
                             "from the subdirectory names in the target directory, pass `labels=\"inferred\"`. "
                             "If you wish to get a dataset that only contains images (no labels), pass "
                             f"`labels=None`. Received: labels={labels}")
        if class_names:
            raise ValueError("You can only pass `class_names` if `labels=\"inferred\"`. Received: "
                             f"labels={labels}, and class_names={class_names}")
    if label_mode not in {"int", "categorical", "binary", None}:
        raise ValueError('`label_mode` argument must be one of "int", "categorical", "binary", or None. '
                         f"Received: label_mode={label_mode}")
    if color_mode not in CHANNELS:
        raise ValueError(f'`color_mode` must be one of {{"rgb", "rgba", "grayscale"}}. Received: '
                         f"color_mode={color_mode}")
    if not isinstance(image_size, (list, tuple)) or len(image_size) != 2:
        raise ValueError(f"Invalid `image_size` value. Expected a tuple of 2 integers. Received: "
                         f"image_size={image_size}")
    if interpolation not in KERAS_RESIZE_METHODS:
        raise ValueError(f"Argument `interpolation` should be one of {KERAS_RESIZE_METHODS}. "
                         f"Received: interpolation={interpolation}")
    if validation_split and not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be between 0 and 1, received: {validation_split}")
    if (validation_split or subset) and not (validation_split and subset):
        raise ValueError("If `subset` is set, `validation_split` must be set, and inversely.")
    if subset not in ("training", "validation", "both", None):
        raise ValueError(f'`subset` must be either "training", "validation" or "both", received: {subset}')
    if validation_split and shuffle and seed is None:
        raise ValueError("If using `validation_split` and shuffling the data, you must provide a `seed` "
                         "argument, to make sure that there is no overlap between the training and "
                         "validation subset.")
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ValueError("Only one of `pad_to_aspect_ratio`, `crop_to_aspect_ratio` can be set to `True`.")


class ImageDataset:
    """Batches of images loaded from files (see the module's docstring). Attributes as Keras's
    dataset: ``class_names``, ``file_paths``; ``element_spec`` is not provided."""

    # For fit's data adapters: this is a dataset, which orders its own batches, so fit's
    # `shuffle` does not apply to it (Keras ignores `shuffle` for a tf.data.Dataset).
    orders_its_own_batches = True

    def __init__(self, file_paths, labels, *, label_mode, class_names, batch_size, image_size, color_mode,
                 interpolation, crop_to_aspect_ratio, pad_to_aspect_ratio, data_format, shuffle, seed):
        self.file_paths = list(file_paths)
        self.class_names = class_names
        self.batch_size = batch_size
        self._labels = labels if label_mode else None
        self._label_mode = label_mode
        self._image_size = tuple(int(d) for d in image_size)
        self._color_mode = color_mode
        self._interpolation = interpolation
        self._crop, self._pad = crop_to_aspect_ratio, pad_to_aspect_ratio
        self._data_format = data_format
        self._rng = np.random.default_rng(seed) if shuffle else None
        self._limit = None
        self._order = self._next_order()

    def _next_order(self):
        n = len(self.file_paths)
        return self._rng.permutation(n) if self._rng is not None else np.arange(n)

    def __len__(self):
        n = len(self.file_paths)
        count = n if self.batch_size is None else math.ceil(n / self.batch_size)
        return count if self._limit is None else min(count, self._limit)

    def load_image(self, path):
        """One file as a float32 array of the dataset's size, channels and data format."""
        img = convert_color(open_image(path, "image_dataset_from_directory"), self._color_mode)
        x = np.asarray(img, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if self._crop:
            x = smart_resize(x, self._image_size, self._interpolation)
        elif self._pad:
            x = resize_with_pad(x, self._image_size, self._interpolation)
        else:
            x = resize(x, self._image_size, self._interpolation)
        return x.transpose(2, 0, 1) if self._data_format == "channels_first" else x

    def _encoded_labels(self, index):
        labels = self._labels[index]
        if self._label_mode == "binary":
            return labels.astype(np.float32)[..., None]
        if self._label_mode == "categorical":
            return np.eye(len(self.class_names), dtype=np.float32)[labels]
        return labels

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch index {i} out of range for a dataset of {len(self)} batches")
        i %= len(self)
        if self.batch_size is None:
            index = self._order[i]
            x = self.load_image(self.file_paths[index])
        else:
            index = self._order[i * self.batch_size:(i + 1) * self.batch_size]
            x = np.stack([self.load_image(self.file_paths[j]) for j in index])
        return x if self._labels is None else (x, self._encoded_labels(index))

    def on_epoch_end(self):
        if self._rng is not None:
            self._order = self._next_order()

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
        self.on_epoch_end()

    def take(self, count):
        """The first ``count`` batches (a view: it shares this dataset's order)."""
        view = copy.copy(self)
        view._limit = count if self._limit is None else min(count, self._limit)
        return view

    def unbatch(self):
        """The same samples one by one."""
        view = copy.copy(self)
        view.batch_size, view._limit = None, None
        return view

    def __repr__(self):
        return (f"<ImageDataset: {len(self.file_paths)} files, {len(self)} batches of {self.batch_size}, "
                f"image_size={self._image_size}, classes={self.class_names}>")


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None,
                                 color_mode="rgb", batch_size=32, image_size=(256, 256), shuffle=True, seed=None,
                                 validation_split=None, subset=None, interpolation="bilinear", follow_links=False,
                                 crop_to_aspect_ratio=False, pad_to_aspect_ratio=False, data_format=None,
                                 verbose=True, **kwargs):
    """Keras's image_dataset_from_directory (the module's docstring says what equals Keras).
    Returns an ImageDataset, or [training, validation] for ``subset='both'``. ``kwargs``: only
    tf.keras 2's old name ``smart_resize`` for crop_to_aspect_ratio (the seed's signature)."""
    if "smart_resize" in kwargs:
        crop_to_aspect_ratio = kwargs.pop("smart_resize")
    if kwargs:
        raise TypeError(f"Unknown keywords argument(s): {tuple(kwargs)}")
    pil_image("image_dataset_from_directory")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    interpolation = str(interpolation).lower()
    _check_arguments(labels, label_mode, class_names, color_mode, image_size, interpolation, validation_split,
                     subset, shuffle, seed, crop_to_aspect_ratio, pad_to_aspect_ratio)
    if labels is None or label_mode is None:
        labels = label_mode = None
    if seed is None:
        seed = np.random.randint(1e6)
    paths, labels, class_names = index_directory(os.fspath(directory), labels, class_names, shuffle, seed,
                                                 follow_links)
    if verbose:
        print(f"Found {len(paths)} files." if labels is None else
              f"Found {len(paths)} files belonging to {len(class_names)} classes.")
    if label_mode == "binary" and len(class_names) != 2:
        raise ValueError(f'When passing `label_mode="binary"`, there must be exactly 2 class_names. Received: '
                         f"class_names={class_names}")
    data_format = resolve_data_format(data_format)

    def dataset(subset_paths, subset_labels, shuffled):
        return ImageDataset(subset_paths, subset_labels, label_mode=label_mode, class_names=class_names,
                            batch_size=batch_size, image_size=image_size, color_mode=color_mode,
                            interpolation=interpolation, crop_to_aspect_ratio=crop_to_aspect_ratio,
                            pad_to_aspect_ratio=pad_to_aspect_ratio, data_format=data_format, shuffle=shuffled,
                            seed=seed)

    if subset == "both":
        train = _split(paths, labels, validation_split, "training")
        val = _split(paths, labels, validation_split, "validation")
        for which, (subset_paths, _) in (("training", train), ("validation", val)):
            if not subset_paths:
                raise ValueError(f"No {which} images found in directory {directory}. Allowed formats: "
                                 f"{ALLOWLIST_FORMATS}")
        return [dataset(*train, shuffle), dataset(*val, False)]
    subset_paths, subset_labels = _split(paths, labels, validation_split, subset)
    if not subset_paths:
        raise ValueError(f"No images found in directory {directory}. Allowed formats: {ALLOWLIST_FORMATS}")
    return dataset(subset_paths, subset_labels, shuffle)
