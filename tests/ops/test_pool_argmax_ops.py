"""max_pool2d_argmax and max_pool2d_grad_argmax (ops/pool.py, made by passes/pool_argmax.py):
their references on hand-worked windows, their compiled kernels against the references (valid
and same padding, windows that overlap, leave gaps or loop over their taps; ties, NaN, ±inf),
and the pair giving max_pool2d_grad's bits, compiled and in the references; shape rules."""
import numpy as np
import pytest

from kcompiler.errors import ShapeError, UnsupportedError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.registry import get_op
from kcompiler.ir.types import TensorType
from kcompiler.ops.conv import same_padding
from kcompiler.codegen.llvm import render, threads
from kcompiler.passes.autodiff import gradients
from kcompiler.schedule import pool as pool_descriptions
from op_check import TARGET, assert_close32, build_op_graph, run_compiled, run_op

RNG = np.random.default_rng(5)


def pool(p, s, padding):
    return dict(pool=p, strides=s, padding=padding)


def compiled(op, inputs, attrs):
    b, _, outs = build_op_graph(op, inputs, attrs)
    b.g.graph["outputs"] = outs
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    return run_compiled(b.g, feeds, fuse=False), run_reference(b.g, feeds)[0]


def awkward(shape):
    """Small integers (ties in most windows) with NaN, +inf and -inf planted, and two all -inf
    corners per image: where 'same' pads before the first, its window's gradient goes into the
    padding."""
    x = RNG.integers(0, 3, size=shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[RNG.choice(flat.size, max(1, flat.size // 13), replace=False)] = np.nan
    flat[RNG.choice(flat.size, max(1, flat.size // 17), replace=False)] = np.inf
    flat[RNG.choice(flat.size, max(1, flat.size // 11), replace=False)] = -np.inf
    x[:, :3, :3, 0] = -np.inf
    x[:, -3:, -3:, -1] = -np.inf
    return x


def padding_before(x_shape, attrs):
    return any(same_padding(x_shape[1 + a], attrs["pool"][a], attrs["strides"][a], 1, attrs["padding"])[0]
               for a in (0, 1))


CASES = [
    ((2, 6, 6, 3), pool((2, 2), (2, 2), "valid")),
    ((1, 7, 5, 17), pool((2, 2), (2, 2), "same")),      # the odd row and column padded after
    ((2, 5, 7, 2), pool((3, 3), (1, 1), "same")),       # overlapping, padding before and after
    ((1, 11, 7, 5), pool((3, 3), (2, 2), "valid")),     # overlapping rows and columns
    ((1, 9, 9, 4), pool((3, 3), (2, 2), "same")),
    ((2, 7, 11, 3), pool((2, 2), (3, 3), "same")),      # gaps no window covers
    ((1, 13, 11, 3), pool((5, 4), (3, 5), "same")),     # 20 taps: loops over them
    ((2, 2, 3, 3), pool((5, 5), (1, 1), "same")),       # windows larger than the image
]


def test_reference_positions_on_hand_worked_windows():
    # the windows of TensorFlow's tie example (ops/test_conv_pool_ops.py): the first maximum
    x = np.array([[1.0, 3, 3], [3, 2, 1], [0, 3, 0]], np.float32).reshape(1, 3, 3, 1)
    y, idx = run_op("max_pool2d_argmax", [x], pool((2, 2), (1, 1), "valid"))
    assert y[0, :, :, 0].tolist() == [[3, 3], [3, 3]] and idx[0, :, :, 0].tolist() == [[1, 0], [0, 2]]
    assert idx.dtype == np.int32
    # all -inf under 'same' 3x3 windows (one row and column of padding before, one after): a
    # window with padding before its first valid tap routes its gradient into the padding (-1),
    # the last one to its first tap
    y, idx = run_op("max_pool2d_argmax", [np.full((1, 2, 2, 1), -np.inf, np.float32)], pool((3, 3), (1, 1), "same"))
    assert idx[0, :, :, 0].tolist() == [[-1, -1], [-1, 0]]
    y, idx = run_op("max_pool2d_argmax", [np.full((1, 3, 3, 1), -np.inf, np.float32)], pool((2, 2), (2, 2), "same"))
    assert idx[0, :, :, 0].tolist() == [[0, 0], [0, 0]]  # 'same' pads after only here
    # NaN is the maximum, at its first NaN
    x = np.array([[1.0, np.nan], [np.nan, 5]], np.float32).reshape(1, 2, 2, 1)
    y, idx = run_op("max_pool2d_argmax", [x], pool((2, 2), (2, 2), "valid"))
    assert np.isnan(y).all() and idx.ravel().tolist() == [1]


@pytest.mark.parametrize("x_shape,attrs", CASES)
def test_references_give_max_pool2d_grad_exactly(x_shape, attrs):
    x = awkward(x_shape)
    y, idx = run_op("max_pool2d_argmax", [x], attrs)
    (y_max,) = run_op("max_pool2d", [x], attrs)
    np.testing.assert_array_equal(y, y_max)
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    (dx,) = run_op("max_pool2d_grad_argmax", [idx, dy], dict(attrs, input_hw=x_shape[1:3]))
    (want,) = run_op("max_pool2d_grad", [x, dy], attrs)
    assert dx.tobytes() == want.tobytes()


@pytest.mark.parametrize("unroll_taps", [1, 16])
@pytest.mark.parametrize("x_shape,attrs", CASES)
def test_compiled_pair_matches_the_references_and_max_pool2d_grad(x_shape, attrs, unroll_taps, monkeypatch):
    monkeypatch.setattr(pool_descriptions, "UNROLL_TAPS", unroll_taps)
    x = awkward(x_shape)
    (y, idx), (want_y, want_idx) = compiled("max_pool2d_argmax", [x], attrs)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)
    assert idx.dtype == np.int32 and (idx == -1).any() == padding_before(x_shape, attrs)
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    (dx,), (want_dx,) = compiled("max_pool2d_grad_argmax", [want_idx, dy], dict(attrs, input_hw=x_shape[1:3]))
    assert_close32(dx, want_dx, f"max_pool2d_grad_argmax {x_shape} {attrs}")
    (dx_max,), _ = compiled("max_pool2d_grad", [x, dy], attrs)
    assert dx.tobytes() == dx_max.tobytes()  # the same adds in the same order


@pytest.mark.parametrize("attrs", [pool((2, 2), (2, 2), "valid"), pool((3, 3), (2, 2), "same")])
def test_split_over_the_cores_equals_serial(attrs, monkeypatch):
    if TARGET[0] != "cpu":
        pytest.skip("the LLVM renderer's split of a parallel loop")
    x = awkward((5, 11, 7, 17))
    (y, idx), _ = compiled("max_pool2d_argmax", [x], attrs)
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    (dx,), _ = compiled("max_pool2d_grad_argmax", [idx, dy], dict(attrs, input_hw=(11, 7)))
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    monkeypatch.setattr(threads, "default_nthreads", lambda: 3)
    (y3, idx3), _ = compiled("max_pool2d_argmax", [x], attrs)
    (dx3,), _ = compiled("max_pool2d_grad_argmax", [idx, dy], dict(attrs, input_hw=(11, 7)))
    assert y3.tobytes() == y.tobytes() and idx3.tobytes() == idx.tobytes() and dx3.tobytes() == dx.tobytes()


def test_shape_rules():
    b = GraphBuilder()
    x = b.input("x", TensorType((None, 7, 5, 3)))
    attrs = pool((2, 2), (2, 2), "same")
    forward = b.op("max_pool2d_argmax", x, **attrs)
    assert b.type(forward) == (TensorType((None, 4, 3, 3)), TensorType((None, 4, 3, 3), "int32"))
    idx, dy = b.tuple_item(forward, 1), b.input("dy", TensorType((None, 4, 3, 3)))
    assert b.type(b.op("max_pool2d_grad_argmax", idx, dy, input_hw=(7, 5), **attrs)) == TensorType((None, 7, 5, 3))
    with pytest.raises(ShapeError, match="idx must be int32"):
        b.op("max_pool2d_grad_argmax", dy, dy, input_hw=(7, 5), **attrs)
    with pytest.raises(ShapeError, match=r"output gradient has shape \(None, 4, 3, 3\), expected \(None, 3, 2, 3\)"):
        b.op("max_pool2d_grad_argmax", idx, dy, input_hw=(6, 5), **pool((2, 2), (2, 2), "valid"))
    with pytest.raises(ShapeError, match=r"idx has shape \(None, 4, 3, 3\), dy \(None, 4, 3, 2\)"):
        b.op("max_pool2d_grad_argmax", idx, b.input("dy2", TensorType((None, 4, 3, 2))), input_hw=(7, 5), **attrs)
    assert get_op("max_pool2d_argmax").kind == get_op("max_pool2d_grad_argmax").kind == "reduction"


def test_the_forward_op_has_no_gradient_and_says_so():
    b = GraphBuilder()
    x = b.input("x", TensorType((1, 4, 4, 1)))
    y = b.tuple_item(b.op("max_pool2d_argmax", x, **pool((2, 2), (2, 2), "valid")), 0)
    total = b.op("sum", y, axes=None, keepdims=False)
    with pytest.raises(UnsupportedError, match="made after autodiff .* differentiate max_pool2d instead"):
        gradients(b, total, [x])
