"""numpy references of the reductions."""
import numpy as np

from ..ir.registry import reference


def _axes(axes):
    return tuple(axes) if isinstance(axes, (list, tuple)) else axes


for _name, _f in {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}.items():
    reference(_name)(lambda x, axes=None, keepdims=False, _f=_f:
                     np.asarray(_f(x, axis=_axes(axes), keepdims=keepdims), dtype=x.dtype))

reference("argmax")(lambda x, axis, keepdims=False:
                    np.asarray(np.argmax(x, axis=axis, keepdims=keepdims), dtype=np.int32))
reference("argmin")(lambda x, axis, keepdims=False:
                    np.asarray(np.argmin(x, axis=axis, keepdims=keepdims), dtype=np.int32))
