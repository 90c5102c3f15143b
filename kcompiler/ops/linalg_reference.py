"""numpy references of the contractions."""
import numpy as np

from ..ir.registry import reference


def _t(x, flag):
    return np.swapaxes(x, -1, -2) if flag else x


@reference("matmul")
def matmul(a, b, transpose_a=False, transpose_b=False):
    return np.matmul(_t(a, transpose_a), _t(b, transpose_b)).astype(a.dtype)


@reference("bias_add")
def bias_add(x, bias):
    return (x + bias).astype(x.dtype)
