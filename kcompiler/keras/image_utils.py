"""Image helpers of keras.utils / keras.preprocessing.image: array_to_img, img_to_array, load_img,
save_img, smart_resize, and the resizing that image_dataset_from_directory applies.

Files are read and written with Pillow, an optional dependency (``pip install 'kcompiler[image]'``),
imported only when one of these is called. load_img, save_img, array_to_img and img_to_array
are Keras 3's (which uses Pillow too), so they give the same pixels.

``resize`` is what Keras does with ``tf.image.resize`` (antialias off), on float32 (h, w, c)
arrays: 'bilinear' and 'nearest' are TensorFlow's kernels written again in numpy (half-pixel
centres, float32 arithmetic in TensorFlow's order), equal to Keras up to float32 rounding;
'bicubic', 'area' and 'lanczos3' go to Pillow's BICUBIC, BOX and LANCZOS filters, which
antialias when they shrink an image and treat the borders differently, so their values differ
from TensorFlow's (more when shrinking). 'lanczos5', 'gaussian' and 'mitchellcubic' (TensorFlow's
scale_and_translate kernels) are not available.
"""
import io
import pathlib
import warnings

import numpy as np

from ..errors import UnsupportedError
from .backend import image_data_format

__all__ = ["array_to_img", "img_to_array", "load_img", "save_img", "smart_resize"]

# load_img's interpolation names (Pillow's filters, as Keras's load_img)
PIL_FILTERS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")
# resize's names: computed as TensorFlow does / given to Pillow's filter of that name
TF_RESIZE_METHODS = ("bilinear", "nearest")
PIL_RESIZE_METHODS = {"bicubic": "BICUBIC", "area": "BOX", "lanczos3": "LANCZOS"}
KERAS_RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                        "mitchellcubic")


def pil_image(what):
    """The PIL.Image module, or an ImportError saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"{what} needs Pillow, an optional dependency of kcompiler: install it with "
                          "pip install 'kcompiler[image]' (or pip install Pillow)") from None
    return Image


def resolve_data_format(data_format):
    """data_format, or keras.config.image_data_format() for None."""
    value = image_data_format() if data_format is None else str(data_format).lower()
    if value not in ("channels_last", "channels_first"):
        raise ValueError("The `data_format` argument must be one of {'channels_first', 'channels_last'}. "
                         f"Received: data_format={data_format!r}")
    return value


def array_to_img(x, data_format=None, scale=True, dtype=None):
    """A PIL image from a rank-3 array: 1 channel -> 'L' (or 'I' when values exceed 255), 3 ->
    'RGB', 4 -> 'RGBA'; with ``scale`` the values are first stretched to [0, 255]."""
    Image = pil_image("array_to_img")
    data_format = resolve_data_format(data_format)
    x = np.asarray(x, dtype=dtype or "float32")
    if x.ndim != 3:
        raise ValueError(f"Expected image array to have rank 3 (single image). Got array with shape: {x.shape}")
    if data_format == "channels_first":
        x = x.transpose(1, 2, 0)
    if scale:
        x = x - np.min(x)
        x_max = np.max(x)
        if x_max != 0:
            x /= x_max
        x *= 255
    channels = x.shape[2]
    if channels in (3, 4):
        return Image.fromarray(x.astype("uint8"))  # (h, w, 3) -> RGB, (h, w, 4) -> RGBA
    if channels == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"))  # mode 'I'
        return Image.fromarray(x[:, :, 0].astype("uint8"))  # mode 'L'
    raise ValueError(f"Unsupported channel number: {channels}")


def img_to_array(img, data_format=None, dtype=None):
    """A PIL image (or anything numpy can read) as a rank-3 float32 array."""
    data_format = resolve_data_format(data_format)
    x = np.asarray(img, dtype=dtype or "float32")
    if x.ndim == 3:
        return x.transpose(2, 0, 1) if data_format == "channels_first" else x
    if x.ndim == 2:
        return x.reshape((1,) + x.shape if data_format == "channels_first" else x.shape + (1,))
    raise ValueError(f"Unsupported image shape: {x.shape}")


def save_img(path, x, data_format=None, file_format=None, scale=True, **kwargs):
    """Writes the array as an image file (the format from the file's suffix unless given)."""
    if file_format is None and isinstance(path, (str, pathlib.Path)):
        file_format = pathlib.Path(path).suffix[1:].lower()
    if file_format and file_format.lower() == "jpg":
        file_format = "jpeg"
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and file_format == "jpeg":
        warnings.warn("The JPEG format does not support RGBA images, converting to RGB.")
        img = img.convert("RGB")
    img.save(path, format=file_format, **kwargs)


def open_image(path, what):
    """The PIL image of a path or a BytesIO (the file is read whole, so no handle stays open)."""
    Image = pil_image(what)
    if isinstance(path, io.BytesIO):
        return Image.open(path)
    if isinstance(path, (pathlib.Path, bytes, str)):
        with open(path, "rb") as f:
            return Image.open(io.BytesIO(f.read()))
    raise TypeError(f"path should be path-like or io.BytesIO, not {type(path)}")


def convert_color(img, color_mode):
    """Keras's colour modes: 'grayscale' (kept as it is when already L, I;16 or I), 'rgb', 'rgba'."""
    if color_mode == "grayscale":
        return img if img.mode in ("L", "I;16", "I") else img.convert("L")
    if color_mode in ("rgb", "rgba"):
        mode = color_mode.upper()
        return img if img.mode == mode else img.convert(mode)
    raise ValueError(f'color_mode must be "grayscale", "rgb", or "rgba", got {color_mode!r}')


def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest", keep_aspect_ratio=False):
    """A PIL image from a file, converted to ``color_mode`` and resized by Pillow to
    ``target_size`` = (height, width) (with ``keep_aspect_ratio``: the largest centred crop of the
    target's aspect ratio is resized)."""
    img = convert_color(open_image(path, "load_img"), color_mode)
    if target_size is None:
        return img
    width_height = (target_size[1], target_size[0])
    if img.size == width_height:
        return img
    if interpolation not in PIL_FILTERS:
        raise ValueError(f"Invalid interpolation method {interpolation} specified. Supported methods are "
                         f"{', '.join(PIL_FILTERS)}")
    resample = getattr(pil_image("load_img").Resampling, interpolation.upper())
    if not keep_aspect_ratio:
        return img.resize(width_height, resample)
    width, height = img.size
    target_width, target_height = width_height
    crop_height = min(height, (width * target_height) // target_width)
    crop_width = min(width, (height * target_width) // target_height)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return img.resize(width_height, resample, box=[left, top, left + crop_width, top + crop_height])


# ---- resizing as tf.image.resize ------------------------------------------------------------
# Data loading, not model math: image_dataset_from_directory resizes the decoded files before any
# step sees them (Keras does it in tf.data, outside the model), as Pillow decodes them; the numpy
# here is index arithmetic reproducing tf.image.resize's sampling so that the pixels equal Keras's.

def _half_pixel_linear(in_size, out_size):
    """TensorFlow's bilinear source rows for each output row: (lower, upper, weight of upper)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int64)
    return lower, upper, (position - floor).astype(np.float32)


def _half_pixel_nearest(in_size, out_size):
    scale = np.float32(in_size) / np.float32(out_size)
    position = np.floor((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.clip(position, 0, in_size - 1).astype(np.int64)


def resize(image, size, interpolation="bilinear"):
    """A float32 (h, w, c) image resized to ``size`` = (height, width) as tf.image.resize does
    (see the module's docstring for which methods are TensorFlow's arithmetic)."""
    image = np.asarray(image, dtype=np.float32)
    (h, w), (out_h, out_w) = image.shape[:2], size
    if interpolation == "nearest":
        return image[_half_pixel_nearest(h, out_h)][:, _half_pixel_nearest(w, out_w)]
    if interpolation == "bilinear":
        top, bottom, y_lerp = _half_pixel_linear(h, out_h)
        left, right, x_lerp = _half_pixel_linear(w, out_w)
        x_lerp = x_lerp[None, :, None]
        rows_top, rows_bottom = image[top], image[bottom]
        upper = rows_top[:, left] + (rows_top[:, right] - rows_top[:, left]) * x_lerp
        lower = rows_bottom[:, left] + (rows_bottom[:, right] - rows_bottom[:, left]) * x_lerp
        return upper + (lower - upper) * y_lerp[:, None, None]
    if interpolation in PIL_RESIZE_METHODS:
        Image = pil_image(f"resizing with interpolation={interpolation!r}")
        resample = getattr(Image.Resampling, PIL_RESIZE_METHODS[interpolation])
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize((out_w, out_h), resample))
                  for c in range(image.shape[2])]
        return np.stack(planes, -1).astype(np.float32)
    if interpolation in KERAS_RESIZE_METHODS:
        raise UnsupportedError(f"interpolation={interpolation!r} is not supported here (TensorFlow's "
                               "scale_and_translate kernels); use one of "
                               f"{', '.join(TF_RESIZE_METHODS + tuple(PIL_RESIZE_METHODS))}")
    raise ValueError(f"Argument `interpolation` should be one of {KERAS_RESIZE_METHODS}. "
                     f"Received: interpolation={interpolation}")


def smart_resize(x, size, interpolation="bilinear", data_format="channels_last"):
    """Keras's smart_resize: the largest centred crop of the target's aspect ratio, resized; for
    one (h, w, c) image or a batch of them (channels_first: (c, h, w))."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (3, 4):
        raise ValueError("Expected an image array with shape `(height, width, channels)`, or `(batch_size, "
                         f"height, width, channels)`, but got input with incorrect rank, of shape {x.shape}.")
    channels_first = data_format == "channels_first"
    if channels_first:  # to channels_last and back
        x = np.moveaxis(x, -3, -1)
    height, width = x.shape[-3], x.shape[-2]
    target_height, target_width = size
    crop_height = max(min(height, int(float(width * target_height) / target_width)), 1)
    crop_width = max(min(width, int(float(height * target_width) / target_height)), 1)
    top, left = int(float(height - crop_height) / 2), int(float(width - crop_width) / 2)
    crop = x[..., top:top + crop_height, left:left + crop_width, :]
    images = crop if crop.ndim == 4 else crop[None]
    out = np.stack([resize(image, size, interpolation) for image in images])
    out = out if crop.ndim == 4 else out[0]
    return np.moveaxis(out, -1, -3) if channels_first else out


def resize_with_pad(image, size, interpolation="bilinear"):
    """tf.image.resize_with_pad: resized to fit inside ``size`` keeping its aspect ratio, then
    padded with zeros to ``size``, centred."""
    (height, width), (target_height, target_width) = image.shape[:2], size
    ratio = max(np.float32(width) / np.float32(target_width), np.float32(height) / np.float32(target_height))
    resized_height = int(np.floor(np.float32(height) / ratio))
    resized_width = int(np.floor(np.float32(width) / ratio))
    top, left = max(0, (target_height - resized_height) // 2), max(0, (target_width - resized_width) // 2)
    out = np.zeros((target_height, target_width, image.shape[2]), np.float32)
    out[top:top + resized_height, left:left + resized_width] = resize(image, (resized_height, resized_width),
                                                                      interpolation)
    return out
