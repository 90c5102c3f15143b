"""numpy references of conv2d and its gradients.

Each is a loop over the kernel window: kernel tap (i, j) meets the strided slice of
the padded input that starts at (i * dh, j * dw), so every op is a sum of small
matmuls over those slices. Sums run in float64 and are cast back, so the reference
is a sharper oracle than the float32 kernels it checks.
"""
import numpy as np

from ..ir.registry import reference
from .conv import output_size, same_padding


def geometry(in_hw, window, strides, padding, dilation):
    """((pad_top, pad_bottom), (pad_left, pad_right)), (out_h, out_w) of a windowed op."""
    if any(d is None for d in in_hw):
        raise ValueError(f"the input's spatial size {tuple(in_hw)} must be known to run this op")
    pads = tuple(same_padding(in_hw[a], window[a], strides[a], dilation[a], padding) for a in (0, 1))
    out = tuple(output_size(in_hw[a], window[a], strides[a], dilation[a], padding) for a in (0, 1))
    return pads, out


def tap(i, j, out_hw, strides, dilation):
    """The (rows, cols) slices of the padded input that kernel tap (i, j) reads."""
    oh, ow = out_hw
    sh, sw = strides
    dh, dw = dilation
    return (slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))


def pad_hw(x, pads, value=0.0):
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def crop_hw(xp, pads, in_hw):
    return xp[:, pads[0][0]:pads[0][0] + in_hw[0], pads[1][0]:pads[1][0] + in_hw[1], :]


@reference("conv2d")
def conv2d(x, kernel, strides=(1, 1), padding="valid", dilation=(1, 1)):
    kh, kw, _, cout = kernel.shape
    pads, out_hw = geometry(x.shape[1:3], (kh, kw), strides, padding, dilation)
    xp = pad_hw(x.astype(np.float64), pads)
    y = np.zeros((x.shape[0],) + out_hw + (cout,))
    for i in range(kh):
        for j in range(kw):
            rows, cols = tap(i, j, out_hw, strides, dilation)
            y += xp[:, rows, cols, :] @ kernel[i, j].astype(np.float64)
    return y.astype(x.dtype)


@reference("conv2d_backward_input")
def conv2d_backward_input(dy, kernel, input_hw, strides=(1, 1), padding="valid", dilation=(1, 1)):
    kh, kw, cin, _ = kernel.shape
    pads, out_hw = geometry(input_hw, (kh, kw), strides, padding, dilation)
    padded_hw = (input_hw[0] + sum(pads[0]), input_hw[1] + sum(pads[1]))
    dxp = np.zeros((dy.shape[0],) + padded_hw + (cin,))
    dy64 = dy.astype(np.float64)
    for i in range(kh):
        for j in range(kw):
            rows, cols = tap(i, j, out_hw, strides, dilation)
            dxp[:, rows, cols, :] += dy64 @ kernel[i, j].astype(np.float64).T
    return crop_hw(dxp, pads, input_hw).astype(dy.dtype)


@reference("conv2d_backward_kernel")
def conv2d_backward_kernel(x, dy, kernel_shape, strides=(1, 1), padding="valid", dilation=(1, 1)):
    kh, kw, cin, cout = kernel_shape
    pads, out_hw = geometry(x.shape[1:3], (kh, kw), strides, padding, dilation)
    xp = pad_hw(x.astype(np.float64), pads)
    dy64 = dy.astype(np.float64)
    dk = np.zeros((kh, kw, cin, cout))
    for i in range(kh):
        for j in range(kw):
            rows, cols = tap(i, j, out_hw, strides, dilation)
            dk[i, j] = np.einsum("nhwc,nhwf->cf", xp[:, rows, cols, :], dy64)
    return dk.astype(x.dtype)
