"""Image helpers and image_dataset_from_directory against Keras 3 (fixtures: tests/fixtures/keras/images/,
what Keras made of the folder that tests/image_folder.py writes; make_image_fixtures.py)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from kcompiler import keras
from image_folder import CLASS_NAMES, write_image_folder
from keras_fixtures import cases, load

PIL = pytest.importorskip("PIL")
KIND = "images"


@pytest.fixture
def folder(tmp_path):
    directory = tmp_path / "images"
    return directory, write_image_folder(directory)


def relative(paths, directory):
    return [str(Path(p).relative_to(directory)) for p in paths]


def all_batches(dataset):
    xs, ys = [], []
    for x, y in dataset:
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("name", [n for n in cases(KIND) if n.startswith("dataset_") and "split" not in n])
def test_unshuffled_dataset_equals_keras(folder, name):
    directory, _ = folder
    case = load(KIND, name)
    kwargs = case["spec"]["kwargs"]
    ds = keras.utils.image_dataset_from_directory(directory, batch_size=3, shuffle=False, verbose=False, **kwargs)
    assert relative(ds.file_paths, directory) == case["spec"]["file_paths"]
    assert ds.class_names == case["spec"]["class_names"]
    assert len(ds) == -(-len(ds.file_paths) // 3)
    x, y = all_batches(ds)
    assert x.dtype == np.float32 and x.shape == case["x"].shape
    assert y.dtype == case["y"].dtype and y.shape == case["y"].shape
    np.testing.assert_array_equal(y, case["y"])
    # Pillow and TensorFlow's libpng turn RGB into grey with different rounding: one grey level
    converted = kwargs.get("color_mode") == "grayscale"
    np.testing.assert_allclose(x, case["x"], rtol=0 if converted else 1e-5, atol=1.0 if converted else 1e-3)
    if converted:  # the files that are grey already are exact
        grey = [i for i, path in enumerate(ds.file_paths) if "/dogs/" in path]
        np.testing.assert_array_equal(x[grey], case["x"][grey])


def test_images_already_of_the_target_size_are_exactly_keras_pixels(folder):
    directory, written = folder
    case = load(KIND, "dataset_rgb_same_size")
    same_size = [i for i, path in enumerate(case["spec"]["file_paths"]) if written[path].shape[:2] == (8, 6)]
    assert len(same_size) == 7
    ds = keras.utils.image_dataset_from_directory(directory, batch_size=4, image_size=(8, 6), shuffle=False,
                                                  verbose=False)
    x, _ = all_batches(ds)
    np.testing.assert_array_equal(x[same_size], case["x"][same_size])
    for i in same_size:  # and they are the files' own values (grey files repeated over R, G, B)
        pixels = written[case["spec"]["file_paths"][i]].astype(np.float32)
        np.testing.assert_array_equal(x[i], np.broadcast_to(pixels, (8, 6, 3)))


@pytest.mark.parametrize("seed", [7, 1337])
def test_shuffled_split_takes_the_same_files_as_keras(folder, seed):
    directory, _ = folder
    case = load(KIND, f"dataset_split_seed_{seed}")
    train, val = keras.utils.image_dataset_from_directory(directory, batch_size=4, image_size=(8, 6), seed=seed,
                                                          validation_split=0.3, subset="both", verbose=False)
    assert relative(train.file_paths, directory) == case["spec"]["training"]
    assert relative(val.file_paths, directory) == case["spec"]["validation"]
    assert train.class_names == val.class_names == CLASS_NAMES
    np.testing.assert_array_equal(all_batches(val)[1], case["y_validation"])  # validation: never shuffled
    only_val = keras.utils.image_dataset_from_directory(directory, image_size=(8, 6), seed=seed,
                                                        validation_split=0.3, subset="validation", verbose=False)
    assert relative(only_val.file_paths, directory) == case["spec"]["validation"]


def test_training_batches_are_reshuffled_each_epoch_and_reproducible_by_seed(folder):
    directory, _ = folder

    def epochs(seed):
        ds = keras.utils.image_dataset_from_directory(directory, batch_size=4, image_size=(8, 6), seed=seed,
                                                      verbose=False)
        return [all_batches(ds) for _ in range(3)]

    first, again, other = epochs(5), epochs(5), epochs(6)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    orders = [tuple(x[:, 0, 0, 0]) for x, _ in first]
    assert len(set(orders)) == 3  # a new order every epoch...
    assert len({tuple(sorted(o)) for o in orders}) == 1  # ...of the same files
    assert orders[0] != tuple(other[0][0][:, 0, 0, 0])
    # each image keeps its own label: the unshuffled dataset says which
    plain = keras.utils.image_dataset_from_directory(directory, batch_size=None, image_size=(8, 6), shuffle=False,
                                                     verbose=False)
    label_of = {x.tobytes(): int(y) for x, y in plain}
    for x, y in first:
        assert [label_of[image.tobytes()] for image in x] == list(y)


def test_label_modes_and_labels(folder):
    directory, _ = folder
    kw = dict(image_size=(4, 4), shuffle=False, verbose=False, batch_size=2)
    ds = keras.utils.image_dataset_from_directory(directory, label_mode="binary", class_names=["dogs", "cats"], **kw)
    x, y = all_batches(ds)
    assert y.dtype == np.float32 and y.shape == (7, 1) and list(y[:, 0]) == [0.0] * 3 + [1.0] * 4
    ds = keras.utils.image_dataset_from_directory(directory, labels=list(range(10))[::-1], **kw)
    assert ds.class_names == [str(i) for i in range(10)]
    assert list(all_batches(ds)[1]) == list(range(10))[::-1]
    ds = keras.utils.image_dataset_from_directory(directory, labels=None, **kw)
    batch = ds[0]
    assert isinstance(batch, np.ndarray) and batch.shape == (2, 4, 4, 3) and ds.class_names is None
    ds = keras.utils.image_dataset_from_directory(directory, label_mode=None, color_mode="rgba", **kw)
    assert ds[-1].shape == (2, 4, 4, 4)


def test_unbatched_take_and_unbatch(folder):
    directory, _ = folder
    kw = dict(image_size=(4, 5), shuffle=False, verbose=False)
    ds = keras.utils.image_dataset_from_directory(directory, batch_size=None, **kw)
    assert len(ds) == 10
    x, y = ds[3]
    assert x.shape == (4, 5, 3) and y.shape == () and y.dtype == np.int32
    batched = keras.utils.image_dataset_from_directory(directory, batch_size=4, **kw)
    assert len(batched) == 3 and batched[2][0].shape == (2, 4, 5, 3)
    assert len(list(batched.take(2))) == 2 and len(batched.take(5)) == 3
    samples = list(batched.unbatch())
    assert len(samples) == 10
    np.testing.assert_array_equal(samples[3][0], x)
    with pytest.raises(IndexError):
        batched[3]


def test_verbose_prints_what_keras_prints(folder, capsys):
    directory, _ = folder
    keras.utils.image_dataset_from_directory(directory, image_size=(4, 4), seed=1, validation_split=0.2,
                                             subset="training")
    assert capsys.readouterr().out == "Found 10 files belonging to 3 classes.\nUsing 8 files for training.\n"


def test_argument_errors(folder):
    directory, _ = folder
    make = keras.utils.image_dataset_from_directory
    with pytest.raises(ValueError, match="you must provide a `seed`"):
        make(directory, validation_split=0.2, subset="training")
    with pytest.raises(ValueError, match="color_mode"):
        make(directory, color_mode="cmyk")
    with pytest.raises(ValueError, match="exactly 2 class_names"):
        make(directory, label_mode="binary", verbose=False)
    with pytest.raises(ValueError, match="did not match the names of the subdirectories"):
        make(directory, class_names=["cats", "horses"])
    with pytest.raises(ValueError, match="lengths of `labels` to match"):
        make(directory, labels=[0, 1], verbose=False)
    with pytest.raises(ValueError, match="`subset` must be"):
        make(directory, validation_split=0.2, subset="test", seed=1)
    with pytest.raises(ValueError, match="Only one of `pad_to_aspect_ratio`"):
        make(directory, crop_to_aspect_ratio=True, pad_to_aspect_ratio=True)
    with pytest.raises(TypeError, match="Unknown keywords argument"):
        make(directory, smart_resise=True)
    with pytest.raises(NotImplementedError, match="gaussian"):
        make(directory, interpolation="gaussian", verbose=False)[0]


def test_smart_resize_is_tf_keras_2s_name_of_crop_to_aspect_ratio(folder):
    directory, _ = folder
    kw = dict(image_size=(4, 4), shuffle=False, verbose=False)
    cropped = all_batches(keras.utils.image_dataset_from_directory(directory, crop_to_aspect_ratio=True, **kw))[0]
    legacy = all_batches(keras.utils.image_dataset_from_directory(directory, smart_resize=True, **kw))[0]
    np.testing.assert_array_equal(legacy, cropped)


def test_pad_to_aspect_ratio_fits_the_image_and_pads_with_zeros(folder):
    directory, written = folder
    ds = keras.utils.image_dataset_from_directory(directory, image_size=(8, 12), pad_to_aspect_ratio=True,
                                                  shuffle=False, batch_size=None, verbose=False)
    x, _ = ds[3]  # cats/img_1.png, 8 x 6: kept at 8 x 6, 3 zero columns each side
    np.testing.assert_array_equal(x[:, 3:9], written["cats/img_1.png"].astype(np.float32))
    assert not x[:, :3].any() and not x[:, 9:].any()


def test_a_dataset_trains_a_model_as_its_arrays_do(folder):
    directory, _ = folder
    ds = keras.utils.image_dataset_from_directory(directory, batch_size=4, image_size=(6, 6), shuffle=False,
                                                  verbose=False)

    def model():
        keras.backend.clear_session()
        keras.utils.set_random_seed(3)
        m = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Conv2D(2, 3, activation="relu"), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
        m.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    on_batches = model()
    losses = [on_batches.train_on_batch(x, y) for _ in range(2) for x, y in ds]
    on_arrays = model()
    x, y = all_batches(ds)
    history = on_arrays.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    # Keras's epoch loss weighs each batch by its size (4, 4, 2)
    np.testing.assert_allclose(history.history["loss"][1], np.average(losses[3:], weights=[4, 4, 2]), rtol=1e-5)
    for a, b in zip(on_batches.get_weights(), on_arrays.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_takes_the_dataset_itself(folder):
    """ImageDataset has the PyDataset protocol (len, batch i, on_epoch_end) that fit's data
    adapters recognise: fit on it equals the batch loop over it. As for a tf.data.Dataset in
    Keras, fit's `shuffle` (True by default) does not reorder its batches: the adapter leaves
    alone a dataset whose `orders_its_own_batches` is true."""
    directory, _ = folder

    def datasets():
        return keras.utils.image_dataset_from_directory(directory, batch_size=4, image_size=(6, 6), seed=2,
                                                        validation_split=0.3, subset="both", verbose=False)

    def model():
        keras.backend.clear_session()
        keras.utils.set_random_seed(3)
        m = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
        m.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    on_batches, (train, _) = model(), datasets()
    for _ in range(2):
        for x, y in train:  # each pass ends with on_epoch_end (a new order), as an epoch of fit does
            on_batches.train_on_batch(x, y)
    fitted, (train, val) = model(), datasets()
    history = fitted.fit(train, epochs=2, validation_data=val, verbose=0)
    assert len(history.history["val_loss"]) == 2
    for a, b in zip(on_batches.get_weights(), fitted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- load_img, img_to_array, array_to_img, save_img -------------------------------------------

def test_the_helpers_are_in_utils_and_preprocessing_image():
    for name in ("array_to_img", "img_to_array", "load_img", "save_img"):
        assert getattr(keras.utils, name) is getattr(keras.preprocessing.image, name)
    assert keras.preprocessing.image_dataset_from_directory is keras.utils.image_dataset_from_directory


def test_load_img_and_img_to_array(folder):
    directory, written = folder
    img = keras.utils.load_img(directory / "birds" / "z.png")
    assert img.mode == "RGB" and img.size == (7, 10)
    x = keras.utils.img_to_array(img)
    assert x.dtype == np.float32 and x.shape == (10, 7, 3)
    np.testing.assert_array_equal(x, written["birds/z.png"][..., :3])
    rgba = keras.utils.img_to_array(keras.utils.load_img(directory / "birds" / "z.png", color_mode="rgba"),
                                    data_format="channels_first")
    np.testing.assert_array_equal(rgba, written["birds/z.png"].transpose(2, 0, 1))
    grey = keras.utils.load_img(directory / "dogs" / "a.png", color_mode="grayscale")
    assert grey.mode == "L" and keras.utils.img_to_array(grey).shape == (8, 6, 1)
    small = keras.utils.load_img(directory / "birds" / "z.png", target_size=(5, 7), interpolation="nearest")
    assert small.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(small), written["birds/z.png"][1::2, :, :3])  # the rows at 1, 3, ... 9
    cropped = keras.utils.load_img(directory / "birds" / "z.png", target_size=(7, 7), keep_aspect_ratio=True,
                                   interpolation="nearest")
    np.testing.assert_array_equal(np.asarray(cropped), written["birds/z.png"][1:8, :, :3])  # the centred 7 x 7


def test_array_to_img_scales_and_picks_the_mode():
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    img = keras.utils.array_to_img(x)
    assert img.mode == "RGB" and img.size == (4, 2)
    np.testing.assert_array_equal(np.asarray(img), (x / 23 * 255).astype(np.uint8))
    assert keras.utils.array_to_img(x[..., :1], scale=False).mode == "L"
    assert keras.utils.array_to_img(x[..., :1] * 100, scale=False).mode == "I"
    assert keras.utils.array_to_img(np.zeros((4, 2, 3)), data_format="channels_first").size == (3, 2)
    with pytest.raises(ValueError, match="rank 3"):
        keras.utils.array_to_img(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="Unsupported channel number: 2"):
        keras.utils.array_to_img(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("suffix", ["png", "bmp"])
def test_save_img_then_load_img_gives_the_pixels_back(tmp_path, suffix):
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 3)).astype(np.float32)
    path = tmp_path / f"x.{suffix}"
    keras.utils.save_img(path, x, scale=False)
    np.testing.assert_array_equal(keras.utils.img_to_array(keras.utils.load_img(path)), x)


def test_missing_pillow_is_an_import_error_naming_the_image_extra(monkeypatch, folder):
    directory, _ = folder
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"kcompiler\[image\]"):
        keras.utils.load_img(directory / "cats" / "img_1.png")
    with pytest.raises(ImportError, match=r"image_dataset_from_directory needs Pillow.*kcompiler\[image\]"):
        keras.utils.image_dataset_from_directory(directory)
