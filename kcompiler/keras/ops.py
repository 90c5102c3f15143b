"""keras.ops: the math users write layers, losses and metrics with.

Every function lowers to primitives of the op registry through ``apply_op``: traced
into the graph under construction, or run at once on concrete values.
"""
import numpy as np

from .backend import apply_op
from .tensor import SymbolicTensor, Tensor, to_array
from .variables import Variable


def _unary(op):
    def fn(x, **attrs):
        return apply_op(op, [x], **attrs)
    fn.__name__ = op
    return fn


negative = _unary("neg")
exp = _unary("exp")
log = _unary("log")
sqrt = _unary("sqrt")
rsqrt = _unary("rsqrt")
square = _unary("square")
abs = absolute = _unary("abs")
sign = _unary("sign")
floor = _unary("floor")
ceil = _unary("ceil")
round = _unary("round")
reciprocal = _unary("reciprocal")
sin = _unary("sin")
cos = _unary("cos")
log1p = _unary("log1p")
expm1 = _unary("expm1")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
relu = _unary("relu")
relu6 = _unary("relu6")
selu = _unary("selu")
softplus = _unary("softplus")
softsign = _unary("softsign")
silu = swish = _unary("silu")
hard_sigmoid = _unary("hard_sigmoid")
logical_not = _unary("logical_not")


def elu(x, alpha=1.0):
    return apply_op("elu", [x], alpha=float(alpha))


def gelu(x, approximate=True):
    return apply_op("gelu", [x], approximate=bool(approximate))


def leaky_relu(x, negative_slope=0.2):
    return apply_op("leaky_relu", [x], negative_slope=float(negative_slope))


def _binary(op):
    def fn(x1, x2):
        return apply_op(op, [x1, x2])
    fn.__name__ = op
    return fn


add = _binary("add")
subtract = _binary("sub")
multiply = _binary("mul")
divide = true_divide = _binary("div")
maximum = _binary("maximum")
minimum = _binary("minimum")
power = _binary("pow")
greater = _binary("greater")
greater_equal = _binary("greater_equal")
less = _binary("less")
less_equal = _binary("less_equal")
equal = _binary("equal")
not_equal = _binary("not_equal")
logical_and = _binary("logical_and")
logical_or = _binary("logical_or")


def where(condition, x1, x2):
    return apply_op("where", [condition, x1, x2])


def cast(x, dtype):
    return apply_op("cast", [x], dtype=str(np.dtype(dtype)))


def clip(x, x_min, x_max):
    return apply_op("clip", [x], lo=float(x_min), hi=float(x_max))


def matmul(x1, x2):
    return apply_op("matmul", [x1, x2])


def _reduce(op):
    def fn(x, axis=None, keepdims=False):
        axes = None if axis is None else (tuple(axis) if isinstance(axis, (list, tuple)) else (int(axis),))
        return apply_op(op, [x], axes=axes, keepdims=bool(keepdims))
    fn.__name__ = op
    return fn


sum = _reduce("sum")
mean = _reduce("mean")
max = amax = _reduce("max")
min = amin = _reduce("min")


def argmax(x, axis=-1, keepdims=False):
    return apply_op("argmax", [x], axis=int(axis), keepdims=bool(keepdims))


def argmin(x, axis=-1, keepdims=False):
    return apply_op("argmin", [x], axis=int(axis), keepdims=bool(keepdims))


def var(x, axis=None, keepdims=False):
    m = mean(x, axis=axis, keepdims=True)
    return mean(square(subtract(x, m)), axis=axis, keepdims=keepdims)


def std(x, axis=None, keepdims=False):
    return sqrt(var(x, axis=axis, keepdims=keepdims))


def softmax(x, axis=-1):
    return apply_op("softmax", [x], axis=int(axis))


def log_softmax(x, axis=-1):
    return apply_op("log_softmax", [x], axis=int(axis))


def shape(x):
    return tuple(x.shape) if not isinstance(x, (np.ndarray, list)) else np.shape(x)


def reshape(x, newshape):
    """Keras's reshape: -1 infers one dimension. A symbolic batch stays symbolic."""
    newshape = (newshape,) if isinstance(newshape, int) else tuple(newshape)
    return apply_op("reshape", [x], shape=tuple(int(d) if d is not None else 0 for d in newshape))


def transpose(x, axes=None):
    rank = len(x.shape) if hasattr(x, "shape") else np.ndim(x)
    perm = tuple(reversed(range(rank))) if axes is None else tuple(a % rank for a in axes)
    return apply_op("transpose", [x], perm=perm)


def broadcast_to(x, shape):
    return apply_op("broadcast_to", [x], shape=tuple(shape))


def _reshape_keeping_leading(x, new_shape, same_until):
    """reshape to ``new_shape``; its symbolic dims before position ``same_until`` are the input's
    own at the same position (0: copied), a later one is inferred (-1)."""
    return apply_op("reshape", [x], shape=tuple(d if d is not None else (0 if i < same_until else -1)
                                               for i, d in enumerate(new_shape)))


def expand_dims(x, axis):
    s = list(shape(x))
    axis = axis % (len(s) + 1)
    s.insert(axis, 1)
    return _reshape_keeping_leading(x, s, axis)


def squeeze(x, axis=None):
    s = list(shape(x))
    axes = [i for i, d in enumerate(s) if d == 1] if axis is None else [a % len(s) for a in np.atleast_1d(axis)]
    kept = [d for i, d in enumerate(s) if i not in axes]
    return _reshape_keeping_leading(x, kept, sorted(axes)[0] if len(axes) else len(s))


def concatenate(xs, axis=0):
    return apply_op("concatenate", list(xs), axis=int(axis))


def stack(xs, axis=0):
    return concatenate([expand_dims(x, axis) for x in xs], axis=axis)


def slice(x, start_indices, shape):
    return apply_op("slice", [x], begin=tuple(start_indices), size=tuple(shape))


def pad(x, pad_width, constant_values=0):
    return apply_op("pad", [x], pads=tuple(tuple(p) for p in pad_width), value=float(constant_values))


def getitem(x, index):
    """x[i], x[a:b], x[..., i]: basic indexing as slice + reshape."""
    s = list(shape(x))
    if not isinstance(index, tuple):
        index = (index,)
    if Ellipsis in index:
        e = index.index(Ellipsis)
        index = index[:e] + (builtin_slice(None),) * (len(s) - len(index) + 1) + index[e + 1:]
    index = index + (builtin_slice(None),) * (len(s) - len(index))
    begin, size, keep = [], [], []
    for d, ix in zip(s, index):
        if isinstance(ix, builtin_slice):
            if ix.step not in (None, 1):
                raise NotImplementedError("strided slicing is not supported")
            if d is None and ix.start is None and ix.stop is None:
                begin.append(0), size.append(-1), keep.append(None)
                continue
            start, stop, _ = ix.indices(d)
            begin.append(start), size.append(stop - start), keep.append(stop - start)
        else:
            i = int(ix)
            if d is not None and not -d <= i < d:
                raise IndexError(f"index {i} is out of bounds for an axis of size {d}")
            begin.append(i % d if d else i), size.append(1)
    out = apply_op("slice", [x], begin=tuple(begin), size=tuple(size))
    if len(keep) != len(s):
        out = apply_op("reshape", [out], shape=tuple(-1 if k is None else k for k in keep))
    return out


builtin_slice = __builtins__["slice"] if isinstance(__builtins__, dict) else __builtins__.slice


def ones(shape, dtype="float32"):
    return _constant_fill(shape, 1, dtype)


def zeros(shape, dtype="float32"):
    return _constant_fill(shape, 0, dtype)


def full(shape, fill_value, dtype="float32"):
    return _constant_fill(shape, fill_value, dtype)


def _constant_fill(shape, value, dtype):
    from .backend import active_builder
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = str(np.dtype(dtype))
    if active_builder() is not None:
        return apply_op("fill", [], shape=shape, value=value, dtype=dtype)
    return Tensor(np.full(shape, value, dtype=dtype))


def ones_like(x, dtype=None):
    return ones(shape(x), dtype or x.dtype)


def zeros_like(x, dtype=None):
    return zeros(shape(x), dtype or x.dtype)


def convert_to_tensor(x, dtype=None):
    if isinstance(x, (SymbolicTensor, Tensor)) and dtype is None:
        return x
    if isinstance(x, Variable):
        x = x.numpy()
    return Tensor(to_array(x, dtype=dtype, what="convert_to_tensor"))


def convert_to_numpy(x):
    if isinstance(x, SymbolicTensor):
        raise TypeError("convert_to_numpy: a symbolic tensor has no value while a model is being traced")
    if isinstance(x, (Tensor, Variable)):
        return np.array(x.numpy())
    return np.asarray(x)


def take(x, indices, axis=None):
    if axis not in (None, 0):
        raise NotImplementedError("take: only axis 0 (embedding lookup) is supported")
    return apply_op("gather", [x, indices])


def one_hot(x, num_classes, dtype="float32"):
    classes = np.arange(num_classes, dtype=np.int32)
    return cast(equal(expand_dims(x, -1), classes), dtype)


def random_op(op, x, **attrs):
    """Apply a random op of the registry (dropout, gaussian_noise, gaussian_dropout) to ``x``
    with the step counter operand: the graph's rng_step input while tracing, the eager
    counter (advanced) otherwise."""
    from .backend import active_builder, rng_step_node, _eager_step
    b = getattr(x, "builder", None) or active_builder()
    if b is None:
        step = np.asarray(_eager_step[0], dtype=np.int64)
        _eager_step[0] += 1
    else:
        step = SymbolicTensor(b, rng_step_node(b))
    return apply_op(op, [x, step], **attrs)


def dropout(x, rate, seed):
    return random_op("dropout", x, rate=float(rate), seed=int(seed))


# ---- added for losses, metrics and optimizers ------------------------------------------

def divide_no_nan(x1, x2):
    """x1 / x2, and 0 where x2 == 0 (the denominator is made safe first, so no inf/nan is formed)."""
    zero = equal(x2, 0)
    safe = where(zero, 1.0, x2)
    return where(zero, 0.0, divide(x1, safe))


def all(x, axis=None, keepdims=False):
    """True where every element along ``axis`` is non-zero."""
    return equal(min(cast(not_equal(x, 0) if x.dtype != "bool" else x, "float32"), axis=axis,
                     keepdims=keepdims), 1.0)


def any(x, axis=None, keepdims=False):
    """True where some element along ``axis`` is non-zero."""
    return equal(max(cast(not_equal(x, 0) if x.dtype != "bool" else x, "float32"), axis=axis,
                     keepdims=keepdims), 1.0)


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(d) for d in v)


def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """2-D convolution of NHWC ``inputs`` with an HWIO ``kernel`` (keras.ops.conv, rank 4 only)."""
    if data_format not in (None, "channels_last"):
        raise NotImplementedError("conv: only data_format='channels_last' is supported")
    return apply_op("conv2d", [inputs, kernel], strides=_pair(strides), padding=padding.lower(),
                    dilation=_pair(dilation_rate))


def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    return apply_op("max_pool2d", [inputs], pool=_pair(pool_size), strides=_pair(strides or pool_size),
                    padding=padding.lower())


def average_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    return apply_op("avg_pool2d", [inputs], pool=_pair(pool_size), strides=_pair(strides or pool_size),
                    padding=padding.lower())
