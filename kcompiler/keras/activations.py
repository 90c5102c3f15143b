"""keras.activations: each a function of keras.ops, resolvable by name."""
from . import ops


def linear(x):
    return x


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras 3's relu: the positive part (x where x > threshold, else 0), clipped to
    [0, max_value], minus negative_slope * relu(threshold - x). Element-wise ops that fuse
    into one kernel."""
    if max_value is None and threshold == 0.0:
        return ops.relu(x) if negative_slope == 0.0 else ops.leaky_relu(x, negative_slope)
    clip = max_value is not None
    if threshold != 0.0:
        y = ops.where(ops.greater(x, threshold), x, 0.0)
    elif max_value == 6.0:
        y, clip = ops.relu6(x), False
    else:
        y = ops.relu(x)
    if clip:
        y = ops.clip(y, 0.0, float(max_value))
    if negative_slope != 0.0:
        y = ops.subtract(y, ops.multiply(ops.relu(ops.subtract(threshold, x)), float(negative_slope)))
    return y


def elu(x, alpha=1.0):
    return ops.elu(x, alpha)


def selu(x):
    return ops.selu(x)


def exponential(x):
    return ops.exp(x)


def tanh(x):
    return ops.tanh(x)


def sigmoid(x):
    return ops.sigmoid(x)


def softmax(x, axis=-1):
    return ops.softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    return ops.log_softmax(x, axis=axis)


def softplus(x):
    return ops.softplus(x)


def softsign(x):
    return ops.softsign(x)


def swish(x):
    return ops.silu(x)


silu = swish


def gelu(x, approximate=False):
    return ops.gelu(x, approximate=approximate)


def hard_sigmoid(x):
    return ops.hard_sigmoid(x)


def leaky_relu(x, negative_slope=0.2):
    return ops.leaky_relu(x, negative_slope)


def relu6(x):
    return ops.relu6(x)


ALL = {f.__name__: f for f in (linear, relu, elu, selu, exponential, tanh, sigmoid, softmax, log_softmax,
                               softplus, softsign, swish, gelu, hard_sigmoid, leaky_relu, relu6)}
ALL["silu"] = swish


def get(identifier):
    """An activation function from a name, a function or None (linear)."""
    if identifier is None:
        return linear
    if isinstance(identifier, str):
        if identifier not in ALL:
            raise ValueError(f"unknown activation {identifier!r}; expected one of {', '.join(sorted(ALL))}")
        return ALL[identifier]
    if isinstance(identifier, dict):
        return get(identifier.get("config", identifier.get("class_name")))
    if callable(identifier):
        return identifier
    raise ValueError(f"cannot interpret {identifier!r} as an activation")


def serialize(fn):
    for name, f in ALL.items():
        if f is fn and name != "silu":
            return name
    return getattr(fn, "__name__", str(fn))


def deserialize(name):
    return get(name)
