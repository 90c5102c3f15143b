"""Register-tiled micro-kernels of the convolutions as implicit GEMMs: the operands are read
where they lie (the input image, dy), never copied into a column matrix.

The tiles keep an MR x NR block of the product in MR * NR/W vector accumulators (the
SGEMM's register tile, gemm.register_tile: 6 x 16 in <8 x float> on AVX2 hosts, 12 x 32 in
<16 x float> with AVX-512, where the forward tile has 8 rows: ``forward_tile``), broadcast
one scalar per tile row and load NR/W vectors per step.
The *image* they read is the input of the convolution, or (when some window reaches into the
padding) a zero-padded copy of a group of images in scratch memory (conv.py pads it): in
both, every tap of every window lies inside the image, so the tiles never test an index.

``forward tile``  ``void f(float* x0, i64* origins, i64 mr, float* Bp, float* C)``
    rows r0 .. r0+mr-1 of y = cols @ K (rows r = (n, oh, ow) of the column matrix) in one
    NR-wide panel: ``origins[i]`` is the offset in x0 of the window of row r0 + i
    (store_origins), Bp the panel of the packed kernel (``Bp[k * NR + j] = K[k, p * NR + j]``,
    zero past Cout), C the panel's first column in row r0 of y (rows Cout apart). The scalar
    of tile row i at step k = (tap, c) is ``x0[origins[i] + offsets[k]]``, ``offsets`` a
    constant table (one load per step, shared by the rows, and no index arithmetic).

``weight-gradient tile``
``void f(float* x0, float* dy0, i64 nimg, i64 nrows, i64 m0, i64 mr, float* C, i1 add)``
    rows m0 .. m0+mr-1 (m = (tap, c)) of the NR-wide columns at C of dK = cols^T @ dy, summed
    over the first nrows output rows of the nimg images from x0 and dy0 (x0 and dy0 point at
    those rows of the first image; dy0 at the panel's columns, rows Cout apart): the scalar
    of tile row i at pixel (n, oh, ow) is ``x0[n * IMAGE + (oh*sh*W + ow*sw) * Cin +
    offsets[m0 + i]]``, the vectors are dy's row, read in place. ``add``: C += the sum, else
    C = the sum.

``input-gradient tile``  ``void f(float* dy, i64* rows, float* Bp, float* dx, i64* targets)``
    dx[targets[i] + j] += sum_co dy[rows[i] + co] * Bp[co * NR + j] for the rows i whose target
    is not -1: one tap's share of dx for MR rows of dy (dx is conv_transpose(dy), each dy row
    adding into the dx pixel every tap of its window reads; targets past the padding are -1),
    over one NR-wide panel of the input channels (Bp: that tap's K^T, packed). Summing taps
    in place of a column matrix and its col2im scatter: nothing is written twice.

Rows past ``mr`` (a last partial tile) repeat the last valid row, so they read only memory the
tile reads anyway; their results are dropped. Columns past the valid ``nr`` of an edge panel
(static) are zero in Bp (forward) or loaded as zeros (weight gradient), and never stored.
"""
from dataclasses import dataclass

import llvmlite.ir as ir

from .gemm import _fma, _splat, _vload, _vstore, register_tile
from .irutil import c64, f32, i1, i64, opaque, void

fptr = f32.as_pointer()


@dataclass(frozen=True)
class Image:
    """How the tiles see the images they read: rows of ``width`` pixels of ``cin`` floats,
    ``floats`` per image (the input itself, or its padded copy)."""
    width: int
    cin: int
    floats: int


@dataclass(frozen=True)
class Tile:
    """The register tile: ``mr`` x ``nr`` floats in vectors of ``vw``."""
    vw: int
    mr: int
    nr: int

    @property
    def nv(self):
        return self.nr // self.vw


def host_tile():
    vw, mr, nr, _ = register_tile()
    return Tile(vw, mr, nr)


# Rows of the forward tile with <16 x float> vectors. LLVM schedules a step's broadcasts of the
# image ahead of its multiply-adds, so the tile's broadcasts, accumulators and kernel vectors
# must all fit the 32 zmm registers: with 12 rows (12 + 24 + 2) it kept 6 accumulators on the
# stack, stored and reloaded every step. Measured on a Zen 4 host (2 cores, W3's three
# convolutions): 12 rows 106-110 GFLOP/s, 10 rows 152-210, 8 rows 184-223, 6 rows 177-211.
# The other two tiles keep the SGEMM's 12 rows (they ran at 170-207 GFLOP/s with them).
FORWARD_ROWS_512 = 8


def forward_tile(t):
    """The forward tile's shape for host tile ``t``: fewer rows with <16 x float> vectors."""
    return Tile(t.vw, min(t.mr, FORWARD_ROWS_512), t.nr) if t.vw == 16 else t


def _function(module, name, args, names):
    fn = ir.Function(module, ir.FunctionType(void, args), name=module.get_unique_name(name))
    fn.linkage = "internal"
    for a, n in zip(fn.args, names):
        a.name = n
    return fn


def _gep(b, p, i):
    return b.gep(p, [c64(i) if isinstance(i, int) else i], inbounds=True)


def accumulate(b, count, accs, body, name):
    """``for k in [0, count): accs = body(k, accs)`` as one loop whose accumulators are phis
    (count >= 1, an int or an i64); returns the accumulators after the loop."""
    pre = b.block
    loop = b.function.append_basic_block(name)
    after = b.function.append_basic_block(name + ".end")
    b.branch(loop)
    b.position_at_end(loop)
    k = b.phi(i64, name=name + ".k")
    k.add_incoming(c64(0), pre)
    phis = [b.phi(a.type) for a in accs]
    for phi, a in zip(phis, accs):
        phi.add_incoming(a, pre)
    new = body(k, phis)
    k1 = b.add(k, c64(1))
    k.add_incoming(k1, b.block)
    for phi, v in zip(phis, new):
        phi.add_incoming(v, b.block)
    b.cbranch(b.icmp_signed("<", k1, count if not isinstance(count, int) else c64(count)), loop, after)
    b.position_at_end(after)
    return new


def _row(b, i, mr):
    """Tile row i, or the last valid one (mr - 1) when i >= mr."""
    return c64(0) if i == 0 else b.select(b.icmp_signed("<", c64(i), mr), c64(i), b.sub(mr, c64(1)))


def window_origin(b, g, image, r, n0):
    """Offset in the image group starting at image ``n0`` of the first tap of row ``r``'s
    window (r = (n, oh, ow) of the column matrix)."""
    pixels = g.out_h * g.out_w
    n, pix = b.udiv(r, c64(pixels)), b.urem(r, c64(pixels))
    oh, ow = b.udiv(pix, c64(g.out_w)), b.urem(pix, c64(g.out_w))
    pixel = b.add(b.mul(oh, c64(g.sh * image.width)), b.mul(ow, c64(g.sw)))
    return b.add(b.mul(b.sub(n, n0), c64(image.floats)), b.mul(pixel, c64(image.cin)))


def tap_offset(b, g, image, m):
    """Offset of element m (an i64) = (tap, c) of a column-matrix row from its window's origin."""
    tap, c = b.udiv(m, c64(g.cin)), b.urem(m, c64(g.cin))
    ti, tj = b.udiv(tap, c64(g.kw)), b.urem(tap, c64(g.kw))
    return b.add(b.mul(b.add(b.mul(ti, c64(g.dh * image.width)), b.mul(tj, c64(g.dw))), c64(image.cin)), c)


def offset_table(module, g, image):
    """The constant table of tap_offset(m) for every m < KH*KW*Cin (i64), in ``module``."""
    name = f"conv.offsets.{image.width}.{image.cin}"  # one per image layout (the geometry is the kernel's)
    table = module.globals.get(name)
    if table is None:
        values = []
        for m in range(g.width):
            (ti, tj), c = divmod(m // g.cin, g.kw), m % g.cin
            values.append((ti * g.dh * image.width + tj * g.dw) * image.cin + c)
        table = ir.GlobalVariable(module, ir.ArrayType(i64, g.width), name=name)
        table.linkage, table.global_constant = "internal", True
        table.initializer = ir.Constant(ir.ArrayType(i64, g.width), values)
    return table


def _fmas(b, fma, a_scalars, b_vectors, accs, t):
    """accs[i * nv + j] += a_scalars[i] * b_vectors[j]."""
    out = []
    for i, a in enumerate(a_scalars):
        av = _splat(b, a, t.vw)
        out += [b.call(fma, [av, bv, accs[i * t.nv + j]]) for j, bv in enumerate(b_vectors)]
    return out


def _store_tile(b, t, accs, C, ldc, mr, nr, add=None):
    """Rows i < mr (i64) of the tile into C (rows ``ldc`` floats apart), its first ``nr``
    (static) columns: C = acc, or C += acc where the i1 ``add`` is true."""
    for i in range(t.mr):
        guard = b.if_then(b.icmp_signed(">", mr, c64(i)), likely=True) if i else None
        if guard is not None:
            guard.__enter__()
        row = _gep(b, C, i * ldc)
        for j in range(t.nv):
            lanes = min(t.vw, nr - j * t.vw)
            if lanes <= 0:
                break
            acc = accs[i * t.nv + j]
            if lanes == t.vw:
                p = _gep(b, row, j * t.vw)
                if add is None:
                    _vstore(b, acc, p, 4)
                else:
                    _vstore(b, b.fadd(acc, b.select(add, _vload(b, p, 4, t.vw), ir.Constant(acc.type, None))), p, 4)
            else:
                for lane in range(lanes):
                    p = _gep(b, row, j * t.vw + lane)
                    value = b.extract_element(acc, ir.Constant(ir.IntType(32), lane))
                    if add is not None:
                        value = b.fadd(value, b.select(add, b.load(p), ir.Constant(f32, 0.0)))
                    b.store(value, p)
        if guard is not None:
            guard.__exit__(None, None, None)


def _zero(t):
    return [ir.Constant(ir.VectorType(f32, t.vw), None)] * (t.mr * t.nv)


def emit_forward_tile(module, g, image, t, nr):
    """The forward tile for geometry ``g`` (ops.conv.ConvGeometry) reading ``image``, for a panel
    of ``nr`` valid columns (static); see the module docstring. Not inlined: inlined into the
    loop over the panels, LLVM hoisted the panel-invariant loads of the image out of it and
    spilled them (W3's first convolution ran at half speed)."""
    fn = _function(module, "conv.tile", [fptr, i64.as_pointer(), i64, fptr, fptr],
                   ("x0", "origins", "mr", "Bp", "C"))
    fn.attributes.add("noinline")
    for a in (fn.args[0], fn.args[3], fn.args[4]):
        a.add_attribute("noalias")
    x0, origin_array, mr, bp, C = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = _fma(module, t.vw)
    offsets = offset_table(module, g, image)
    rows = [b.gep(x0, [b.load(_gep(b, origin_array, i))], inbounds=True) for i in range(t.mr)]

    def step(k, accs):
        offset = b.load(b.gep(offsets, [c64(0), k], inbounds=True))
        a = [b.load(b.gep(row, [offset], inbounds=True)) for row in rows]
        bk = b.gep(bp, [b.mul(k, c64(t.nr))], inbounds=True)
        return _fmas(b, fma, a, [_vload(b, _gep(b, bk, j * t.vw), 64, t.vw) for j in range(t.nv)], accs, t)

    # the steps' count hidden from the optimiser: a short loop (W2's first convolution: 9 steps)
    # was unrolled whole, every step's kernel vectors loaded up front and ~50 registers spilled
    # (that convolution 1.4x slower)
    accs = accumulate(b, opaque(b, c64(g.width)), _zero(t), step, "k")
    _store_tile(b, t, accs, C, g.cout, mr, nr)
    b.ret_void()
    return fn


def store_origins(b, g, image, t, r0, mr, n0, array):
    """array[i] = the window origin (window_origin) of tile row i of the tile at row r0, rows
    past mr repeating the last valid one."""
    for i in range(t.mr):
        b.store(window_origin(b, g, image, b.add(r0, _row(b, i, mr)), n0), _gep(b, array, i))


def emit_weight_gradient_tile(module, g, image, t, nr):
    """The weight-gradient tile for geometry ``g`` reading ``image``, for a panel of ``nr``
    valid columns (static); see the module docstring."""
    fn = _function(module, "conv.kgrad_tile", [fptr, fptr, i64, i64, i64, i64, fptr, i1],
                   ("x0", "dy0", "nimg", "nrows", "m0", "mr", "C", "add"))
    for a in (fn.args[0], fn.args[1], fn.args[6]):
        a.add_attribute("noalias")
    x0, dy0, nimg, nrows, m0, mr, C, add = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = _fma(module, t.vw)
    vt = ir.VectorType(f32, t.vw)
    table = offset_table(module, g, image)
    offsets = [b.load(b.gep(table, [c64(0), b.add(m0, _row(b, i, mr))], inbounds=True)) for i in range(t.mr)]
    out_rows = g.out_h * g.out_w

    def vectors(drow):
        out = []
        for j in range(t.nv):
            lanes = min(t.vw, nr - j * t.vw)
            if lanes == t.vw:
                out.append(_vload(b, _gep(b, drow, j * t.vw), 4, t.vw))
            elif lanes > 0:  # an edge panel: the valid lanes one by one, zeros after
                v = ir.Constant(vt, None)
                for lane in range(lanes):
                    v = b.insert_element(v, b.load(_gep(b, drow, j * t.vw + lane)), ir.Constant(ir.IntType(32), lane))
                out.append(v)
            else:
                out.append(ir.Constant(vt, None))
        return out

    def image_loop(n, accs):
        ximg = b.gep(x0, [b.mul(n, c64(image.floats))], inbounds=True)
        dimg = b.gep(dy0, [b.mul(n, c64(out_rows * g.cout))], inbounds=True)

        def row_loop(oh, accs):
            xrow = b.gep(ximg, [b.mul(oh, c64(g.sh * image.width * image.cin))], inbounds=True)
            drow0 = b.gep(dimg, [b.mul(oh, c64(g.out_w * g.cout))], inbounds=True)

            def pixel_loop(ow, accs):
                q = b.gep(xrow, [b.mul(ow, c64(g.sw * image.cin))], inbounds=True)
                a = [b.load(b.gep(q, [o], inbounds=True)) for o in offsets]
                drow = b.gep(drow0, [b.mul(ow, c64(g.cout))], inbounds=True)
                return _fmas(b, fma, a, vectors(drow), accs, t)

            return accumulate(b, g.out_w, accs, pixel_loop, "ow")

        return accumulate(b, nrows, accs, row_loop, "oh")

    accs = accumulate(b, nimg, _zero(t), image_loop, "n")
    _store_tile(b, t, accs, C, g.cout, mr, nr, add)
    b.ret_void()
    return fn


def emit_input_gradient_tile(module, g, t, nr):
    """The input-gradient tile for geometry ``g`` and a panel of ``nr`` valid input channels
    (static); see the module docstring. Not inlined, like the forward tile."""
    fn = _function(module, "conv.dx_tile", [fptr, i64.as_pointer(), fptr, fptr, i64.as_pointer()],
                   ("dy", "rows", "Bp", "dx", "targets"))
    fn.attributes.add("noinline")
    for a in (fn.args[0], fn.args[2], fn.args[3]):
        a.add_attribute("noalias")
    dy, row_array, bp, dx, target_array = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = _fma(module, t.vw)
    rows = [b.gep(dy, [b.load(_gep(b, row_array, i))], inbounds=True) for i in range(t.mr)]

    def step(co, accs):
        a = [b.load(b.gep(row, [co], inbounds=True)) for row in rows]
        bk = b.gep(bp, [b.mul(co, c64(t.nr))], inbounds=True)
        return _fmas(b, fma, a, [_vload(b, _gep(b, bk, j * t.vw), 64, t.vw) for j in range(t.nv)], accs, t)

    accs = accumulate(b, g.cout, _zero(t), step, "co")
    for i in range(t.mr):
        target = b.load(_gep(b, target_array, i))
        with b.if_then(b.icmp_signed(">=", target, c64(0)), likely=True):
            _store_tile(b, Tile(t.vw, 1, t.nr), accs[i * t.nv:(i + 1) * t.nv], b.gep(dx, [target], inbounds=True),
                        0, c64(1), nr, add=ir.Constant(i1, 1))
    b.ret_void()
    return fn
