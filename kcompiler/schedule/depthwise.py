"""Kernel descriptions of depthwise_conv2d and its two gradients (kcompiler/ops/depthwise.py).

All three walk the images in parallel, then pixels, with the C*M output channels innermost
and contiguous (what a backend vectorises). The kernel taps are unrolled (their offsets are
compile-time constants) and each one is guarded by whether it falls inside the input along
each axis; the guard depends on the pixel only, never on the channel, so a backend can hoist
it out of the channel loop. Index arithmetic stays non-negative: a tap's input row
oh*sh + i*dh - pt is compared as oh*sh + i*dh >= pt before it is formed.

* forward: per output element, a local accumulates the valid taps and is stored once (never
  read back), so an element-wise epilogue (BatchNormalization's apply, ReLU6) can run at that
  store: the fusion pass makes it a ``fused_pool_grad`` node, as for pooling gradients;
* input gradient: the gather form, per input element, of the taps (i, j) whose output pixel
  (ih + pt - i*dh) / sh is whole and inside the output; stored once too;
* kernel gradient: the taps in parallel; each zeroes its C*M row and adds, for every output
  pixel where it is inside the input, x's channel row times dy's.
"""
from ..ir.registry import description
from ..ops.conv import conv_geometry
from .kernel import Assign, Const, If, Kernel, Load, Local, Store, Var, call, loop, node_buffers

F32 = "float32"
ZERO = Const(0.0, F32)


def _geometry(op, node, in_types):
    """(ConvGeometry, depth multiplier) of a node of one of the three ops."""
    attrs = node["attrs"]
    if op == "depthwise_conv2d":
        x_shape, kernel_shape = in_types[0].shape, in_types[1].shape
    elif op == "depthwise_conv2d_backward_input":
        kernel_shape = in_types[1].shape
        x_shape = (in_types[0].shape[0],) + tuple(attrs["input_hw"]) + (kernel_shape[2],)
    else:
        x_shape, kernel_shape = in_types[0].shape, tuple(attrs["kernel_shape"])
    # conv_geometry's cout is the kernel's last axis: the depth multiplier here
    return conv_geometry(op, x_shape, kernel_shape, attrs), kernel_shape[3]


def _tap(position, stride, count, offset, pad, size):
    """(input index, conditions for it to lie in [0, size)) of position * stride + offset - pad
    for position in [0, count) and offset >= 0: the conditions compare before anything is
    subtracted, and those true for every position are left out."""
    reach = _scaled(position, stride)
    reach = reach + offset if offset else reach
    conditions = []
    if offset < pad:
        conditions.append(call("ge", reach, Const(pad, "int64")))
    if (count - 1) * stride + offset >= size + pad:
        conditions.append(call("lt", reach, Const(size + pad, "int64")))
    return (call("sub", reach, Const(pad, "int64")) if pad else reach), conditions


def _guarded(conditions, statements):
    """``statements`` under If(all conditions), or bare when there are none."""
    if not conditions:
        return list(statements)
    out = conditions[0]
    for c in conditions[1:]:
        out = call("and", out, c)
    return [If(out, tuple(statements))]


def _scaled(var, factor):
    return var * factor if factor != 1 else var


def _input_index(g, n, row, col, channel):
    """Flat NHWC index of x[n, row, col, channel] (row, col already unpadded expressions)."""
    return ((n * g.in_h + row) * g.in_w + col) * g.cin + channel


@description("depthwise_conv2d")
def describe_depthwise_conv2d(node, in_types, name):
    g, multiplier = _geometry("depthwise_conv2d", node, in_types)
    n, oh, ow, e = Var("n"), Var("oh"), Var("ow"), Var("e")
    width = g.cin * multiplier
    acc = Var("acc", F32)
    channel = e // multiplier if multiplier > 1 else e
    body = [Local(acc, ZERO)]
    for i in range(g.kh):
        row, row_inside = _tap(oh, g.sh, g.out_h, i * g.dh, g.pad_top, g.in_h)
        for j in range(g.kw):
            col, col_inside = _tap(ow, g.sw, g.out_w, j * g.dw, g.pad_left, g.in_w)
            value = call("mul", Load("in0", _input_index(g, n, row, col, channel), F32),
                         Load("in1", (i * g.kw + j) * width + e, F32))
            body += _guarded(row_inside + col_inside, [Assign(acc, call("add", acc, value))])
    out_index = ((n * g.out_h + oh) * g.out_w + ow) * width + e
    body.append(Store("out0", out_index, acc))
    nest = loop("n", g.batch, [loop("oh", g.out_h, [loop("ow", g.out_w, [loop("e", width, body)])])],
                parallel=True)
    return Kernel(name, node_buffers(node, in_types), (nest,))


def _source(ih, stride, count, offset, pad, bias):
    """(output index, conditions) of the output position whose tap at ``offset`` reads input
    index ``ih``: (ih + pad - offset) / stride when whole and in [0, count). ``bias`` strides
    are added first so that nothing negative is ever formed."""
    shifted = ih + (pad + bias * stride - offset)
    conditions = []
    if stride > 1:
        conditions.append(call("eq", shifted % stride, Const(0, "int64")))
    position = shifted // stride if stride > 1 else shifted
    conditions += [call("ge", position, Const(bias, "int64")), call("lt", position, Const(count + bias, "int64"))]
    return call("sub", position, Const(bias, "int64")), conditions


@description("depthwise_conv2d_backward_input")
def describe_depthwise_conv2d_backward_input(node, in_types, name):
    g, multiplier = _geometry("depthwise_conv2d_backward_input", node, in_types)
    n, ih, iw, c = Var("n"), Var("ih"), Var("iw"), Var("c")
    width = g.cin * multiplier
    acc = Var("acc", F32)
    body = [Local(acc, ZERO)]
    bias_h = -(-(g.kh - 1) * g.dh // g.sh) + 1
    bias_w = -(-(g.kw - 1) * g.dw // g.sw) + 1
    for i in range(g.kh):
        oh, row_ok = _source(ih, g.sh, g.out_h, i * g.dh, g.pad_top, bias_h)
        for j in range(g.kw):
            ow, col_ok = _source(iw, g.sw, g.out_w, j * g.dw, g.pad_left, bias_w)
            dy_row = ((n * g.out_h + oh) * g.out_w + ow) * width + _scaled(c, multiplier)
            k_row = (i * g.kw + j) * width + _scaled(c, multiplier)
            total = None
            for m in range(multiplier):
                term = call("mul", Load("in0", dy_row + m if m else dy_row, F32),
                            Load("in1", k_row + m if m else k_row, F32))
                total = term if total is None else call("add", total, term)
            body += _guarded(row_ok + col_ok, [Assign(acc, call("add", acc, total))])
    body.append(Store("out0", _input_index(g, n, ih, iw, c), acc))
    nest = loop("n", g.batch, [loop("ih", g.in_h, [loop("iw", g.in_w, [loop("c", g.cin, body)])])], parallel=True)
    return Kernel(name, node_buffers(node, in_types), (nest,))


@description("depthwise_conv2d_backward_kernel")
def describe_depthwise_conv2d_backward_kernel(node, in_types, name):
    g, multiplier = _geometry("depthwise_conv2d_backward_kernel", node, in_types)
    t, n, oh, ow, e = Var("t"), Var("n"), Var("oh"), Var("ow"), Var("e")
    width = g.cin * multiplier
    channel = e // multiplier if multiplier > 1 else e
    nests = []
    for i in range(g.kh):
        row, row_inside = _tap(oh, g.sh, g.out_h, i * g.dh, g.pad_top, g.in_h)
        for j in range(g.kw):
            col, col_inside = _tap(ow, g.sw, g.out_w, j * g.dw, g.pad_left, g.in_w)
            k = (i * g.kw + j) * width + e
            add = loop("e", width, [Store("out0", k, call(
                "add", Load("out0", k, F32),
                call("mul", Load("in0", _input_index(g, n, row, col, channel), F32),
                     Load("in1", ((n * g.out_h + oh) * g.out_w + ow) * width + e, F32))))])
            nests.append(If(call("eq", t, Const(i * g.kw + j, "int64")), (
                loop("e", width, [Store("out0", k, ZERO)]),
                loop("n", g.batch, [loop("oh", g.out_h, [loop("ow", g.out_w, _guarded(row_inside + col_inside,
                                                                                        [add]))])]))))
    # one parallel iteration per tap: each owns its C*M row of the kernel gradient
    return Kernel(name, node_buffers(node, in_types), (loop("t", g.kh * g.kw, nests, parallel=True),))
