"""The pooling descriptions (kcompiler/schedule/pool.py) rendered through LLVM against the numpy
references: odd shapes (prime H and W, 1, 3, 17 and 33 channels, batch 1), valid and same
padding, strides other than the pool size (overlapping windows, and gaps no window covers),
windows large enough to loop over their taps, NaN and infinities; the kernels split over the
cores equal the serial ones; the description dumps."""
import numpy as np
import pytest

from kcompiler.codegen.llvm import render, threads
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.passes.memory_plan import plan_memory
from kcompiler.passes.schedule import schedule_kernels
from kcompiler.schedule import pool as pool_descriptions
from kcompiler.schedule.pool import Span, spans, uncovered
from op_check import assert_close32, build_op_graph, run_compiled, run_op, use_bounds_checks

RNG = np.random.default_rng(7)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def pool(p, s, padding):
    return dict(pool=p, strides=s, padding=padding)


def op_inputs(op, x, attrs):
    """(inputs, attrs) of ``op`` for input images ``x``: the gradients get a random dy."""
    if op in ("max_pool2d", "avg_pool2d"):
        return [x], attrs
    (y,) = run_op("max_pool2d", [x], attrs)
    dy = normal(*y.shape)
    if op == "max_pool2d_grad":
        return [x, dy], attrs
    return [dy], dict(attrs, input_hw=x.shape[1:3])


def compiled_and_reference(op, inputs, attrs):
    b, _, outs = build_op_graph(op, inputs, attrs)
    b.g.graph["outputs"] = outs
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    return run_compiled(b.g, feeds, fuse=False)[0], run_reference(b.g, feeds)[0][0]


def check(op, x, attrs):
    inputs, attrs = op_inputs(op, x, attrs)
    got, want = compiled_and_reference(op, inputs, attrs)
    assert_close32(got, want, f"{op} {x.shape} {attrs}")


OPS = ["max_pool2d", "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad"]
CASES = [
    ((2, 7, 5, 3), pool((2, 2), (2, 2), "valid")),
    ((1, 7, 5, 17), pool((2, 2), (2, 2), "same")),
    ((2, 5, 7, 1), pool((3, 3), (1, 1), "same")),      # overlapping windows, padding on all sides
    ((1, 11, 7, 33), pool((3, 3), (2, 2), "valid")),   # overlapping rows and columns
    ((1, 13, 11, 3), pool((2, 3), (3, 2), "valid")),   # rows with gaps no window covers
    ((2, 7, 11, 17), pool((2, 2), (3, 3), "same")),    # gaps, and a last window in the padding
    ((1, 5, 7, 33), pool((3, 2), (2, 3), "same")),
    ((1, 1, 1, 3), pool((1, 1), (1, 1), "valid")),
    ((1, 2, 3, 1), pool((3, 3), (2, 2), "same")),      # windows larger than the image
    ((2, 2, 3, 3), pool((5, 5), (1, 1), "same")),      # ... clipped on both sides, all from the same start
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("x_shape,attrs", CASES)
def test_matches_the_reference(op, x_shape, attrs):
    check(op, normal(*x_shape), attrs)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("x_shape,attrs", [((1, 13, 11, 3), pool((5, 4), (3, 5), "same")),
                                           ((2, 7, 5, 17), pool((5, 5), (1, 2), "valid"))])
def test_large_windows_loop_over_their_taps(op, x_shape, attrs):
    check(op, normal(*x_shape), attrs)


@pytest.mark.parametrize("op", OPS)
def test_every_window_in_tap_loops(op, monkeypatch):
    monkeypatch.setattr(pool_descriptions, "UNROLL_TAPS", 1)
    for x_shape, attrs in CASES[1:6]:
        check(op, normal(*x_shape), attrs)


@pytest.mark.parametrize("op", ["max_pool2d", "max_pool2d_grad"])
@pytest.mark.parametrize("unroll_taps", [1, 16])
@pytest.mark.parametrize("attrs", [pool((2, 2), (2, 2), "valid"), pool((3, 3), (1, 1), "same"),
                                   pool((2, 3), (3, 2), "same")])
def test_nan_and_infinities(op, unroll_taps, attrs, monkeypatch):
    monkeypatch.setattr(pool_descriptions, "UNROLL_TAPS", unroll_taps)
    x = RNG.integers(0, 3, size=(2, 7, 5, 17)).astype(np.float32)  # ties
    x[0, 1, 1, 0] = x[0, 1, 2, 0] = x[0, 3, 4, 2] = x[1, 6, 4, 5] = np.nan
    x[1, 0, 0, :] = np.inf
    x[0, :2, :2, 1] = -np.inf     # a window at the top left all -inf, with padding before it when 'same'
    x[1, 5:, 3:, 3] = -np.inf     # one at the bottom right, its padding after it
    check(op, x, attrs)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bounds_check", ["0", "1"])
def test_split_over_the_cores_equals_serial(op, bounds_check, monkeypatch):
    if bounds_check == "1":
        use_bounds_checks(monkeypatch)
    x = normal(5, 11, 7, 17)
    inputs, attrs = op_inputs(op, x, pool((3, 3), (2, 2), "same"))
    serial, _ = compiled_and_reference(op, inputs, attrs)
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    monkeypatch.setattr(threads, "default_nthreads", lambda: 3)
    parallel, want = compiled_and_reference(op, inputs, attrs)
    np.testing.assert_array_equal(parallel, serial)
    assert_close32(parallel, want, op)


def test_spans_cut_the_borders_off_the_interior():
    # 'same', 3x3 stride 1 over 5: the first window starts in the padding, the last ends in it
    assert spans(5, 3, 1, "same") == [Span(0, 1, 0, 2, True), Span(1, 3, 0, 3, False), Span(4, 1, 3, 2, False)]
    assert spans(7, 2, 2, "valid") == [Span(0, 3, 0, 2, False)]
    # 5x5 stride 1 over 2: both windows clipped on both sides, both starting at 0
    assert spans(2, 5, 1, "same") == [Span(0, 1, 0, 2, True), Span(1, 1, 0, 2, True)]
    assert uncovered(7, spans(7, 2, 2, "valid"), 2) == [(6, 7)]
    assert uncovered(13, spans(13, 2, 3, "valid"), 3) == [(2, 3), (5, 6), (8, 9), (11, 13)]
    assert uncovered(5, spans(5, 3, 1, "same"), 1) == []


def test_descriptions_dump():
    for op in OPS:
        inputs, attrs = op_inputs(op, normal(2, 5, 7, 3), pool((3, 3), (2, 2), "same"))
        b, _, outs = build_op_graph(op, inputs, attrs)
        b.g.graph["outputs"] = outs
        g = schedule_kernels(plan_memory(b.g))
        (kernel,) = [g.nodes[n]["kernel"] for n in g.nodes if "kernel" in g.nodes[n]]
        text = str(kernel)
        assert text.startswith("kernel k") and f"_{op}(out float32 out0[" in text
        assert "for n in 0..2 parallel:" in text and "for c in 0..3:" in text
