"""A small, deterministic image folder for image_dataset_from_directory, written with Pillow.

The tests and tests/fixtures/make_image_fixtures.py (which records what real Keras makes of
it) build the same folder, so its content is fixed here: three classes in three colour modes
and two sizes, PNG and BMP files, names whose string order differs from their numeric order,
a nested folder inside a class, and files that are not images (skipped).
"""
from pathlib import Path

import numpy as np

# (class folder, file name relative to it, Pillow mode, (height, width))
FILES = [
    ("cats", "img_1.png", "RGB", (8, 6)),
    ("cats", "img_10.png", "RGB", (8, 6)),
    ("cats", "img_2.png", "RGB", (8, 6)),
    ("cats", "img_3.PNG", "RGB", (8, 6)),
    ("dogs", "a.png", "L", (8, 6)),
    ("dogs", "b.png", "L", (8, 6)),
    ("dogs", "nested/c.png", "L", (8, 6)),
    ("birds", "z.png", "RGBA", (10, 7)),
    ("birds", "y.png", "RGBA", (10, 7)),
    ("birds", "x.bmp", "RGB", (10, 7)),
]
NOT_IMAGES = [("cats", "notes.txt"), ("dogs", "nested/readme.md")]
CLASS_NAMES = ["birds", "cats", "dogs"]  # sorted folder names


def pixels(index, mode, size):
    """The pixel values of file number ``index``: a gradient plus a checker, so that resizing
    and channel order both show."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    h, w = size
    rows, cols = np.mgrid[0:h, 0:w]
    planes = [(rows * (17 + 5 * c + index) + cols * (29 - 3 * c) + 41 * index + 60 * c + 20 * ((rows + cols) % 2))
              % 256 for c in range(channels)]
    if mode == "RGBA":
        planes[3] = 128 + (planes[3] % 128)
    return np.stack(planes, -1).astype(np.uint8)


def write_image_folder(directory):
    """Writes FILES (and NOT_IMAGES) under ``directory``; returns {relative path: uint8 array (h, w, c)}."""
    from PIL import Image
    directory = Path(directory)
    written = {}
    for index, (folder, name, mode, size) in enumerate(FILES):
        path = directory / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = pixels(index, mode, size)
        # Pillow infers the mode from the array: (h, w) -> L, (h, w, 3) -> RGB, (h, w, 4) -> RGBA
        Image.fromarray(array[..., 0] if mode == "L" else array).save(
            path, format="BMP" if name.endswith(".bmp") else "PNG")
        written[f"{folder}/{name}"] = array
    for folder, name in NOT_IMAGES:
        path = directory / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not an image\n")
    return written
