"""numpy references of depthwise_conv2d and its gradients: a loop over the kernel taps, each
tap an element-wise product of a strided slice of the padded input with that tap's weights
(float64 inside, the input's dtype out)."""
import numpy as np

from ..ir.registry import reference
from .conv_reference import crop_hw, geometry, pad_hw, tap


@reference("depthwise_conv2d")
def depthwise_conv2d(x, kernel, strides=(1, 1), padding="valid", dilation=(1, 1)):
    kh, kw, channels, multiplier = kernel.shape
    pads, out_hw = geometry(x.shape[1:3], (kh, kw), strides, padding, dilation)
    xp = pad_hw(x.astype(np.float64), pads)
    y = np.zeros((x.shape[0],) + out_hw + (channels, multiplier))
    for i in range(kh):
        for j in range(kw):
            rows, cols = tap(i, j, out_hw, strides, dilation)
            y += xp[:, rows, cols, :, None] * kernel[i, j].astype(np.float64)
    return y.reshape(y.shape[:3] + (channels * multiplier,)).astype(x.dtype)


@reference("depthwise_conv2d_backward_input")
def depthwise_conv2d_backward_input(dy, kernel, input_hw, strides=(1, 1), padding="valid", dilation=(1, 1)):
    kh, kw, channels, multiplier = kernel.shape
    pads, out_hw = geometry(input_hw, (kh, kw), strides, padding, dilation)
    padded_hw = (input_hw[0] + sum(pads[0]), input_hw[1] + sum(pads[1]))
    dxp = np.zeros((dy.shape[0],) + padded_hw + (channels,))
    dy64 = dy.astype(np.float64).reshape(dy.shape[:3] + (channels, multiplier))
    for i in range(kh):
        for j in range(kw):
            rows, cols = tap(i, j, out_hw, strides, dilation)
            dxp[:, rows, cols, :] += (dy64 * kernel[i, j].astype(np.float64)).sum(axis=-1)
    return crop_hw(dxp, pads, input_hw).astype(dy.dtype)


@reference("depthwise_conv2d_backward_kernel")
def depthwise_conv2d_backward_kernel(x, dy, kernel_shape, strides=(1, 1), padding="valid", dilation=(1, 1)):
    kh, kw, channels, multiplier = kernel_shape
    pads, out_hw = geometry(x.shape[1:3], (kh, kw), strides, padding, dilation)
    xp = pad_hw(x.astype(np.float64), pads)
    dy64 = dy.astype(np.float64).reshape(dy.shape[:3] + (channels, multiplier))
    dk = np.zeros((kh, kw, channels, multiplier))
    for i in range(kh):
        for j in range(kw):
            rows, cols = tap(i, j, out_hw, strides, dilation)
            dk[i, j] = np.einsum("nhwc,nhwcm->cm", xp[:, rows, cols, :], dy64)
    return dk.astype(x.dtype)
