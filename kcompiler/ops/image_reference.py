"""numpy references of upsample_bilinear (float32, in TensorFlow's order of operations) and of
its gradient (float64 scatter of each output pixel's four weights)."""
import numpy as np

from ..ir.registry import reference
from .image import source_scale


def source_points(in_size, factor):
    """Per output index along one axis: (lower, upper, lerp) as TensorFlow computes them, in float32."""
    src = ((np.arange(in_size * factor, dtype=np.float32) + np.float32(0.5)) * np.float32(source_scale(factor))
           - np.float32(0.5))
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    return lower, upper, (src - floor).astype(np.float32)


@reference("upsample_bilinear")
def upsample_bilinear(x, size):
    n, h, w, c = x.shape
    top_i, bottom_i, y_lerp = source_points(h, size[0])
    left_i, right_i, x_lerp = source_points(w, size[1])
    x_lerp = x_lerp[None, None, :, None]
    rows_top, rows_bottom = x[:, top_i], x[:, bottom_i]
    top = rows_top[:, :, left_i] + (rows_top[:, :, right_i] - rows_top[:, :, left_i]) * x_lerp
    bottom = rows_bottom[:, :, left_i] + (rows_bottom[:, :, right_i] - rows_bottom[:, :, left_i]) * x_lerp
    return (top + (bottom - top) * y_lerp[None, :, None, None]).astype(x.dtype)


@reference("upsample_bilinear_grad")
def upsample_bilinear_grad(dy, size, input_hw):
    h, w = input_hw
    top_i, bottom_i, y_lerp = source_points(h, size[0])
    left_i, right_i, x_lerp = source_points(w, size[1])
    dx = np.zeros((dy.shape[0], h, w, dy.shape[3]))
    d = dy.astype(np.float64)
    for rows, wy in ((top_i, 1.0 - y_lerp.astype(np.float64)), (bottom_i, y_lerp.astype(np.float64))):
        for cols, wx in ((left_i, 1.0 - x_lerp.astype(np.float64)), (right_i, x_lerp.astype(np.float64))):
            weight = wy[:, None, None] * wx[None, :, None]
            for o, i in enumerate(rows):
                np.add.at(dx[:, i], (slice(None), cols), d[:, o] * weight[o])
    return dx.astype(dy.dtype)
