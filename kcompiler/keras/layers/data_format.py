"""Keras's ``data_format`` argument of the image layers, and channels_first as a layout transform.

Every image layer computes on channels_last (NHWC) data. A channels_first layer transposes its
(N, C, *spatial) input to (N, *spatial, C), runs the channels_last computation and transposes
its result back to (N, C, *spatial): two `transpose` ops in the IR around the same kernels,
with the same weights (Keras's kernels have the same shape in both formats). Between two
channels_first layers the one's closing transpose and the next one's opening transpose
compose to the identity, and the `simplify` pass removes such pairs (forward and, as the
gradient of a transpose is the inverse transpose, backward too): a channels_first model pays
one copy where NCHW data enters it and one where it leaves it.
"""
import functools

from .. import backend, ops

FORMATS = ("channels_last", "channels_first")


def standardize_data_format(layer, data_format):
    """Keras's rule: None means keras.config.image_data_format() (channels_last unless set)."""
    value = backend.image_data_format() if data_format is None else str(data_format).lower()
    if value not in FORMATS:
        raise ValueError(f"{layer._describe()}: data_format must be 'channels_last' or 'channels_first', "
                         f"got {data_format!r}")
    return value


def channels_last_shape(shape, data_format):
    """A shape of a layer's input as its channels_last computation sees it."""
    shape = tuple(shape)
    if data_format != "channels_first" or len(shape) < 3:
        return shape
    return (shape[0],) + shape[2:] + (shape[1],)


def channel_axis(data_format):
    return 1 if data_format == "channels_first" else -1


def to_channels_last(x):
    """(N, C, *spatial) -> (N, *spatial, C)."""
    rank = len(x.shape)
    return ops.transpose(x, (0, *range(2, rank), 1))


def to_channels_first(y):
    """(N, *spatial, C) -> (N, C, *spatial); a rank-2 result (N, C) is the same in both formats."""
    rank = len(y.shape)
    if rank < 3:
        return y
    return ops.transpose(y, (0, rank - 1, *range(1, rank - 1)))


def channels_last_call(call):
    """Decorates a layer's ``call(inputs, ...)`` written for channels_last data so that, when the
    layer's data_format is channels_first, it runs between the two layout transposes."""
    @functools.wraps(call)
    def wrapped(self, inputs, *args, **kwargs):
        if self.data_format != "channels_first":
            return call(self, inputs, *args, **kwargs)
        return to_channels_first(call(self, to_channels_last(inputs), *args, **kwargs))
    return wrapped
