"""Neural-network ops that are not plain element-wise math: softmax, log_softmax,
embedding gather and its scatter-add gradient, the sparse-label range check, and dropout.

``gather`` and ``check_index`` may fail: an index outside its range stops the step with an
IndexRangeError that names the layer (or loss), the index and the range.

Dropout draws its mask from a counter-based generator (Philox4x32-10 keyed by
attrs.seed, counter = (element index, step)), so the mask is a pure function of
(seed, step, index): the backward pass recomputes it instead of storing it, and a
generated kernel reproduces the reference bit for bit. ``gaussian_noise`` and
``gaussian_dropout`` (Keras's GaussianNoise and GaussianDropout) draw a standard normal per
element the same way (Box-Muller over two Philox uniforms of the element's counter, keyed by
(seed, 1) and (seed, 2); dropout's key is (seed, 0)): x + stddev * z, and x * (1 + stddev * z) with stddev =
sqrt(rate / (1 - rate)).
"""
from ..errors import ShapeError
from ..ir.graph import operands
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import expect_float, normalize_axis, same_type


def _softmax_rule(name):
    def rule(in_types, attrs):
        expect_float(name, in_types[0])
        normalize_axis(name, attrs.get("axis", -1), in_types[0].rank)
        return same_type(in_types, attrs)
    return rule


def _softmax_vjp(grad_op):
    def vjp(b, nid, dy):
        return [b.op(grad_op, nid, dy, axis=b.attrs(nid).get("axis", -1))]
    return vjp


register("softmax", shape=_softmax_rule("softmax"), vjp=_softmax_vjp("softmax_grad"), kind="reduction",
         doc="exp(x - max) / sum(exp(x - max)) along attrs.axis")
register("softmax_grad", shape=lambda t, a: same_type(t, a), kind="reduction",
         doc="(y, dy) -> y * (dy - sum(dy * y))")
register("log_softmax", shape=_softmax_rule("log_softmax"), vjp=_softmax_vjp("log_softmax_grad"),
         kind="reduction", doc="x - max - log(sum(exp(x - max))) along attrs.axis")
register("log_softmax_grad", shape=lambda t, a: same_type(t, a), kind="reduction",
         doc="(y, dy) -> dy - exp(y) * sum(dy)")


def _gather_rule(in_types, attrs):
    table, idx = in_types
    if table.rank != 2:
        raise ShapeError(f"gather: the table must have rank 2, got {fmt_shape(table.shape)}")
    if not idx.dtype.startswith("int"):
        raise ShapeError(f"gather: indices must be integers, got {idx.dtype}")
    return TensorType(idx.shape + (table.shape[1],), table.dtype)


def _gather_vjp(b, nid, dy):
    table, idx = b.operands(nid)
    return [b.op("scatter_add", idx, dy, rows=b.shape(table)[0]), None]


def _gather_index_error(g, nid, value):
    rows = g.nodes[operands(g, nid)[0]]["type"].shape[0]
    return f"{g.nodes[nid].get('layer') or 'gather'}: id {value} is outside [0, {rows}) (input_dim={rows})"


register("gather", shape=_gather_rule, vjp=_gather_vjp, kind="opaque", index_error=_gather_index_error,
         doc="rows of table (V, D) picked by integer indices; an index outside [0, V) is an error")


def _check_index_rule(in_types, attrs):
    if not in_types[0].dtype.startswith("int"):
        raise ShapeError(f"check_index: expects integers, got {in_types[0].dtype}")
    return same_type(in_types, attrs)


def _check_index_error(g, nid, value):
    attrs = g.nodes[nid]["attrs"]
    return f"{attrs['what']}: label {value} is outside [0, {attrs['limit']}) (num_classes={attrs['limit']})"


register("check_index", shape=_check_index_rule, kind="opaque", index_error=_check_index_error,
         doc="x unchanged; a value outside [0, attrs.limit) is an error (sparse labels; attrs.what names "
             "the loss or metric)")


def _scatter_add_rule(in_types, attrs):
    idx, upd = in_types
    return TensorType((attrs["rows"], upd.shape[-1]), upd.dtype)


register("scatter_add", shape=_scatter_add_rule, kind="opaque",
         doc="(indices, updates) -> zeros((rows, D)) with updates added at their rows")


def _random_rule(op, check):
    def rule(in_types, attrs):
        x, step = in_types
        expect_float(op, x)
        check(attrs)
        if step.shape != () or not step.dtype.startswith("int"):
            raise ShapeError(f"{op}: the step operand must be an integer scalar, got {step}")
        return TensorType(x.shape, x.dtype)
    return rule


def _check_rate(attrs):
    if not 0 <= attrs["rate"] < 1:
        raise ShapeError(f"dropout: rate must be in [0, 1), got {attrs['rate']}")


def _check_stddev(attrs):
    if not attrs["stddev"] >= 0:
        raise ShapeError(f"gaussian noise: stddev must be >= 0, got {attrs['stddev']}")


def _multiplicative_noise_vjp(b, nid, dy):
    # The noise depends only on (seed, step, index): applying the same op to dy
    # reproduces it, so nothing is stored between forward and backward.
    (_, step) = b.operands(nid)
    return [b.add(b.g.nodes[nid]["op"], (dy, step), b.attrs(nid)), None]


register("dropout", shape=_random_rule("dropout", _check_rate), vjp=_multiplicative_noise_vjp, kind="elementwise",
         doc="(x, step) -> x * keep / (1 - rate), keep = philox(seed, index, step) >= rate")
register("gaussian_noise", shape=_random_rule("gaussian_noise", _check_stddev),
         vjp=lambda b, nid, dy: [dy, None], kind="elementwise",
         doc="(x, step) -> x + stddev * z, z standard normal from philox(seed, index, step)")
register("gaussian_dropout", shape=_random_rule("gaussian_dropout", _check_stddev), vjp=_multiplicative_noise_vjp,
         kind="elementwise", doc="(x, step) -> x * (1 + stddev * z), z as in gaussian_noise")
