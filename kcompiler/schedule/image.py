"""Kernel descriptions of upsample_bilinear and its gradient (kcompiler/ops/image.py).

Both walk the pixels they write in parallel (image, row, column), channels innermost and
contiguous. An axis's source geometry is computed in the kernel, in float32 as TensorFlow
does: ``src = (o + 0.5) * scale - 0.5``, ``lower = max(floor(src), 0)``,
``upper = min(ceil(src), size - 1)``, ``lerp = src - floor(src)``; the forward computes it
once per output row and column (locals outside the channel loop).

The gradient gathers instead of scattering, so pixels stay independent: input index i along
an axis is a tap only of output indices in [f*i - f, f*i + 2f) (the window where
``src`` lies within one pixel of i), so each input pixel visits those 3f x 3f outputs,
skips the ones outside the image, and adds dy times its weight: (1 - lerp) where it is the
lower tap, lerp where it is the upper one (both at a clamped border).
"""
from ..ir.registry import description
from ..ops.image import factors, source_scale
from .kernel import INDEX, Const, If, Kernel, Load, Local, Store, Var, call, loop, node_buffers

F32 = "float32"


def _axis(name, position, size, factor):
    """Locals (lower, upper, lerp) of output ``position`` along an axis of ``size`` inputs."""
    src, floor = Var(f"{name}_src", F32), Var(f"{name}_floor", F32)
    lower, upper, lerp = Var(f"{name}_lower"), Var(f"{name}_upper"), Var(f"{name}_lerp", F32)
    half = Const(0.5, F32)
    statements = [
        Local(src, call("sub", call("mul", call("add", call("cast", position, dtype=F32), half),
                                             Const(source_scale(factor), F32)), half)),
        Local(floor, call("floor", src)),
        Local(lower, call("max", call("cast", floor, dtype=INDEX), Const(0, INDEX))),
        Local(upper, call("min", call("cast", call("ceil", src), dtype=INDEX), Const(size - 1, INDEX))),
        Local(lerp, call("sub", src, floor)),
    ]
    return statements, lower, upper, lerp


@description("upsample_bilinear")
def describe_upsample_bilinear(node, in_types, name):
    n_, h, w, channels = in_types[0].shape
    fh, fw = factors("upsample_bilinear", node["attrs"])
    n, oh, ow, c = Var("n"), Var("oh"), Var("ow"), Var("c")
    rows, top, bottom, y_lerp = _axis("y", oh, h, fh)
    cols, left, right, x_lerp = _axis("x", ow, w, fw)
    image = n * (h * w * channels)

    def x(row, col):
        return Load("in0", image + (row * w + col) * channels + c, F32)

    def between(a, b, t):
        return call("add", a, call("mul", call("sub", b, a), t))

    top_value = between(x(top, left), x(top, right), x_lerp)
    bottom_value = between(x(bottom, left), x(bottom, right), x_lerp)
    out = ((n * (h * fh) + oh) * (w * fw) + ow) * channels + c
    pixel = cols + [loop("c", channels, [Store("out0", out, between(top_value, bottom_value, y_lerp))])]
    body = loop("n", n_, [loop("oh", h * fh, rows + [loop("ow", w * fw, pixel, parallel=True)], parallel=True)],
                parallel=True)
    return Kernel(name, node_buffers(node, in_types), (body,))


def _weight(lower, upper, lerp, i):
    """The weight of input index ``i`` in the output whose taps are (lower, upper, lerp)."""
    zero, one = Const(0.0, F32), Const(1.0, F32)
    as_lower = call("select", call("eq", lower, i), call("sub", one, lerp), zero)
    return call("add", as_lower, call("select", call("eq", upper, i), lerp, zero))


@description("upsample_bilinear_grad")
def describe_upsample_bilinear_grad(node, in_types, name):
    n_, out_h, out_w, channels = in_types[0].shape
    h, w = node["attrs"]["input_hw"]
    fh, fw = factors("upsample_bilinear_grad", node["attrs"])
    n, i, j, c, a, b = Var("n"), Var("i"), Var("j"), Var("c"), Var("a"), Var("b")
    oh, ow = Var("oh"), Var("ow")
    dx = ((n * h + i) * w + j) * channels + c
    rows, top, bottom, y_lerp = _axis("y", oh, h, fh)
    cols, left, right, x_lerp = _axis("x", ow, w, fw)
    wy, wx = Var("wy", F32), Var("wx", F32)
    dy = Load("in0", ((n * out_h + oh) * out_w + ow) * channels + c, F32)
    add = loop("c", channels, [Store("out0", dx, call("add", Load("out0", dx, F32), call("mul", call(
        "mul", wy, wx), dy)))])
    column = [Local(ow, j * fw + (b - fw))] + [If(_inside(ow, out_w), tuple(cols + [
        Local(wx, _weight(left, right, x_lerp, j)), add]))]
    row = [Local(oh, i * fh + (a - fh))] + [If(_inside(oh, out_h), tuple(rows + [
        Local(wy, _weight(top, bottom, y_lerp, i)), loop("b", 3 * fw, column)]))]
    pixel = [loop("c", channels, [Store("out0", dx, Const(0.0, F32))]), loop("a", 3 * fh, row)]
    body = loop("n", n_, [loop("i", h, [loop("j", w, pixel, parallel=True)], parallel=True)], parallel=True)
    return Kernel(name, node_buffers(node, in_types), (body,))


def _inside(index, size):
    return call("and", call("ge", index, Const(0, INDEX)), call("lt", index, Const(size, INDEX)))
