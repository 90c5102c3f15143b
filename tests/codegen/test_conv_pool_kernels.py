"""LLVM kernels of conv2d, its gradients and the pooling ops against the numpy references:
forward and autodiff backward, fused and unfused (check_compiled), the gradient ops on
their own, the multi-threaded/chunked paths, and hypothesis-generated shapes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcompiler.codegen.llvm import conv as conv_kernels
from kcompiler.codegen.llvm import render
from kcompiler.codegen.llvm import threads
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ops.conv import output_size
from op_check import assert_close32, build_op_graph, check_compiled, run_compiled, run_op

RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def conv_attrs(strides=(1, 1), padding="valid", dilation=(1, 1)):
    return dict(strides=strides, padding=padding, dilation=dilation)


def pool_attrs(pool, strides, padding):
    return dict(pool=pool, strides=strides, padding=padding)


def check_op(op, inputs, attrs):
    """One op compiled (fused and unfused) equals its reference: for the gradient ops,
    which have no VJP of their own (max_pool2d_grad) or whose VJP check_compiled covers."""
    b, _, outs = build_op_graph(op, inputs, attrs)
    b.g.graph["outputs"] = outs
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    expected, _ = run_reference(b.g, feeds)
    for fuse in (True, False):
        for k, (got, want) in enumerate(zip(run_compiled(b.g, feeds, fuse=fuse), expected)):
            assert_close32(got, want, f"{op} output {k} (fuse={fuse})")


# (input shape, kernel shape, attrs): valid/same, strides 1, 2 and (2, 3), dilation 2, kernels
# 1x1, 3x3, 2x3, odd sizes, batch 1 and 3, windows mostly in the padding.
CONV_CASES = [
    ((2, 5, 5, 2), (3, 3, 2, 3), conv_attrs()),
    ((1, 5, 6, 2), (3, 3, 2, 2), conv_attrs(padding="same")),
    ((3, 7, 5, 1), (2, 3, 1, 2), conv_attrs(strides=(2, 2))),
    ((1, 6, 7, 2), (3, 3, 2, 2), conv_attrs(strides=(2, 2), padding="same")),
    ((1, 6, 7, 2), (2, 3, 2, 2), conv_attrs(strides=(2, 3), padding="same")),
    ((1, 7, 6, 2), (3, 2, 2, 2), conv_attrs(dilation=(2, 2))),
    ((1, 6, 5, 1), (2, 3, 1, 2), conv_attrs(padding="same", dilation=(2, 1))),
    ((2, 9, 8, 2), (3, 3, 2, 3), conv_attrs(strides=(2, 2), padding="same", dilation=(2, 2))),
    ((3, 4, 5, 3), (1, 1, 3, 4), conv_attrs()),
    ((1, 4, 5, 3), (1, 1, 3, 4), conv_attrs(padding="same")),
    ((2, 5, 5, 3), (1, 1, 3, 2), conv_attrs(strides=(2, 2), padding="same")),
    ((3, 9, 7, 4), (3, 3, 4, 5), conv_attrs(padding="same")),
    ((1, 2, 2, 1), (3, 3, 1, 2), conv_attrs(padding="same")),
    ((1, 1, 1, 2), (1, 1, 2, 1), conv_attrs()),
]

POOL_CASES = [
    ((2, 4, 4, 3), pool_attrs((2, 2), (2, 2), "valid")),
    ((1, 5, 7, 2), pool_attrs((2, 2), (2, 2), "same")),
    ((3, 5, 5, 2), pool_attrs((3, 3), (1, 1), "same")),
    ((1, 6, 5, 3), pool_attrs((3, 3), (2, 2), "valid")),
    ((2, 7, 7, 1), pool_attrs((3, 3), (2, 2), "same")),
    ((1, 5, 6, 2), pool_attrs((2, 2), (1, 1), "valid")),
    ((1, 4, 5, 2), pool_attrs((3, 2), (2, 3), "same")),
    ((1, 2, 2, 3), pool_attrs((3, 3), (1, 1), "same")),
    # channels in vectors of 16 lanes, plus a remainder
    ((2, 5, 4, 16), pool_attrs((2, 2), (2, 2), "valid")),
    ((1, 5, 5, 35), pool_attrs((3, 3), (2, 2), "same")),
]


@pytest.mark.parametrize("x_shape,k_shape,attrs", CONV_CASES)
def test_conv2d_forward_and_backward(x_shape, k_shape, attrs):
    check_compiled("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)


@pytest.mark.parametrize("x_shape,k_shape,attrs", CONV_CASES[::3])
def test_conv2d_gradient_ops(x_shape, k_shape, attrs):
    (y,) = run_op("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)
    check_op("conv2d_backward_input", [normal(*y.shape), normal(*k_shape)], dict(attrs, input_hw=x_shape[1:3]))
    check_op("conv2d_backward_kernel", [normal(*x_shape), normal(*y.shape)], dict(attrs, kernel_shape=k_shape))


def test_conv2d_backward_input_covers_pixels_no_window_reads():
    # stride 3 with a 2x2 kernel skips every third row and column: dx must be 0 there
    x_shape, k_shape, attrs = (2, 8, 8, 2), (2, 2, 2, 3), conv_attrs(strides=(3, 3))
    check_compiled("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("x_shape,attrs", POOL_CASES)
def test_pool_forward_and_backward(op, x_shape, attrs):
    check_compiled(op, [normal(*x_shape)], attrs)


@pytest.mark.parametrize("x_shape,attrs", POOL_CASES[1:4])
def test_pool_gradient_ops(x_shape, attrs):
    x = normal(*x_shape)
    (y,) = run_op("max_pool2d", [x], attrs)
    check_op("max_pool2d_grad", [x, normal(*y.shape)], attrs)
    check_op("avg_pool2d_grad", [normal(*y.shape)], dict(attrs, input_hw=x_shape[1:3]))


@pytest.mark.parametrize("attrs", [pool_attrs((2, 2), (1, 1), "valid"), pool_attrs((3, 3), (1, 1), "same")])
def test_max_pool_grad_ties_go_to_the_first_maximum(attrs):
    # few distinct values: most windows hold their maximum several times
    x = RNG.integers(0, 3, size=(2, 5, 6, 19)).astype(np.float32)
    (y,) = run_op("max_pool2d", [x], attrs)
    check_op("max_pool2d_grad", [x, normal(*y.shape)], attrs)


def test_max_pool_grad_nan_and_minus_inf_windows():
    # a NaN maximum routes nothing; an all -inf window with padding first routes into the padding
    x = normal(1, 5, 5, 18)
    x[0, 1, 1, 0] = np.nan
    x[0, 2, 3, 17] = np.nan
    x[0, 3:, 3:, 1] = -np.inf   # padding after the valid taps: the first valid -inf takes dy
    x[0, :2, :2, 1::15] = -np.inf   # the top-left window starts in the padding (channels 1 and 16)
    attrs = pool_attrs((3, 3), (1, 1), "same")
    (y,) = run_op("max_pool2d", [x], attrs)
    check_op("max_pool2d", [x], attrs)
    check_op("max_pool2d_grad", [x, normal(*y.shape)], attrs)


def test_parallel_and_chunked_paths(monkeypatch):
    """Force several parts (3 threads), forward blocks of one tile that cross image boundaries,
    input-gradient groups of one image, on small shapes."""
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")  # no unit remembered from other settings
    monkeypatch.setattr(threads, "default_nthreads", lambda: 3)
    monkeypatch.setattr(conv_kernels, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(conv_kernels, "BLOCK_TILES", 1)
    monkeypatch.setattr(conv_kernels, "DX_GROUP_FLOATS", 1)
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    check_compiled("conv2d", [normal(4, 6, 7, 3), normal(3, 3, 3, 4)], conv_attrs(padding="same"))
    check_compiled("conv2d", [normal(3, 7, 6, 2), normal(2, 3, 2, 3)], conv_attrs(strides=(2, 1), dilation=(1, 2)))
    check_compiled("max_pool2d", [normal(4, 5, 5, 17)], pool_attrs((3, 3), (2, 2), "same"))
    check_compiled("avg_pool2d", [normal(4, 5, 5, 17)], pool_attrs((3, 3), (2, 2), "same"))


# Shapes for the implicit-GEMM tiles (codegen/llvm/conv_tiles.py): output channels (and, for
# the input gradient, input channels) of whole register panels (16, 32), with an edge panel
# (35: 2 x 16 + 3 on AVX2 hosts, 32 + 3 with AVX-512), 1 and 7 input channels (KH*KW*Cin not a
# multiple of the tile's rows), windows into the padding (padded image copies, input-gradient
# taps skipped), strides and dilation.
TILE_CASES = [
    ((3, 6, 7, 1), (3, 3, 1, 35), conv_attrs()),
    ((2, 5, 6, 35), (2, 3, 35, 4), conv_attrs(strides=(2, 1), padding="same")),  # input-gradient panels
    ((2, 7, 6, 7), (3, 2, 7, 16), conv_attrs(padding="same")),
    ((3, 9, 8, 2), (3, 3, 2, 35), conv_attrs(strides=(2, 1), padding="same", dilation=(1, 2))),
    ((2, 5, 9, 3), (2, 3, 3, 32), conv_attrs(strides=(1, 3))),
]


@pytest.mark.parametrize("x_shape,k_shape,attrs", TILE_CASES)
def test_implicit_gemm_tiles(x_shape, k_shape, attrs):
    check_compiled("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)


@pytest.mark.parametrize("split_batch", [False, True])
@pytest.mark.parametrize("x_shape,k_shape,attrs", TILE_CASES[1:4])
def test_implicit_gemm_blocks_groups_and_parts(x_shape, k_shape, attrs, split_batch, monkeypatch):
    """Several parts (3 threads, splitting rows of the forward, and the tiles or the batch of the
    weight gradient), forward blocks of one tile, padded copies one image at a time,
    weight-gradient blocks of one output row."""
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")  # no unit remembered from other settings
    monkeypatch.setattr(threads, "default_nthreads", lambda: 3)
    monkeypatch.setattr(conv_kernels, "split_by_batch", lambda g, nparts: split_batch and g.batch >= nparts)
    x_shape = (3 * x_shape[0],) + x_shape[1:]  # at least one image per part
    monkeypatch.setattr(conv_kernels, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(conv_kernels, "BLOCK_TILES", 1)
    monkeypatch.setattr(conv_kernels, "GROUP_BUDGET_FLOATS", 1)
    monkeypatch.setattr(conv_kernels, "BLOCK_FLOATS", 1)
    monkeypatch.setattr(conv_kernels, "DX_GROUP_FLOATS", 1)
    check_compiled("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)


def test_implicit_gemm_with_the_avx512_register_tile(monkeypatch):
    """The 12 x 32 tile of <16 x float> that AVX-512 hosts use, on whatever host runs the test
    (LLVM splits the vectors where they are wider than the host's): rows of 12 (8 in the
    forward tile), panels of 32 and an edge panel of 3, in every op."""
    from kcompiler.codegen.llvm import conv_tiles
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")  # no unit remembered from the host's tile
    monkeypatch.setattr(conv_kernels, "host_tile", lambda: conv_tiles.Tile(16, 12, 32))
    for x_shape, k_shape, attrs in TILE_CASES[:3]:
        check_compiled("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)


def test_weight_gradient_blocks_of_whole_images(monkeypatch):
    """Small images: the weight gradient's blocks hold several images, the last one partial."""
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    monkeypatch.setattr(conv_kernels, "BLOCK_FLOATS", 3 * (4 * 4 * 3 + 2 * 2 * 17))
    assert conv_kernels.pixel_blocks(conv_kernels.conv_geometry(
        "conv2d", (7, 4, 4, 3), (3, 3, 3, 17), conv_attrs()), conv_kernels.Image(4, 3, 48)) == (3, 2)
    x, dy = normal(7, 4, 4, 3), normal(7, 2, 2, 17)
    check_op("conv2d_backward_kernel", [x, dy], dict(conv_attrs(), kernel_shape=(3, 3, 3, 17)))


@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["valid", "same"]))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    out = [output_size(s, k, st_, d, padding) for s, k, st_, d in zip((h, w), (kh, kw), strides, dilation)]
    if min(out) < 1:  # too small for a 'valid' window: pad it up
        h, w = max(h, (kh - 1) * dilation[0] + 1), max(w, (kw - 1) * dilation[1] + 1)
    x_shape = (draw(st.integers(1, 3)), h, w, draw(st.integers(1, 4)))
    return x_shape, (kh, kw, x_shape[3], draw(st.integers(1, 4))), conv_attrs(strides, padding, dilation)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_conv2d_random_shapes(config):
    x_shape, k_shape, attrs = config
    check_compiled("conv2d", [normal(*x_shape), normal(*k_shape)], attrs)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7), st.sampled_from([1, 3, 16, 21])),
       st.tuples(st.integers(1, 3), st.integers(1, 3)), st.tuples(st.integers(1, 3), st.integers(1, 3)),
       st.sampled_from(["valid", "same"]), st.sampled_from(["max_pool2d", "avg_pool2d"]))
def test_pool_random_shapes(x_shape, pool, strides, padding, op):
    if padding == "valid":
        x_shape = (x_shape[0], max(x_shape[1], pool[0]), max(x_shape[2], pool[1]), x_shape[3])
    check_compiled(op, [normal(*x_shape)], pool_attrs(pool, strides, padding))
