"""Contraction + element-wise epilogue (conv2d/matmul + bias + activation, and the backward
matmul + activation gradient) fused into one kernel: same numbers as the reference."""
import numpy as np
import pytest

from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.pipeline import lower_graph
from op_check import assert_close32, use_options

RNG = np.random.default_rng(11)


def conv_bias_relu(batch, hw, cin, cout, padding="same", strides=(1, 1)):
    b = GraphBuilder(name="conv_epilogue")
    x = b.input("x", TensorType((batch, hw, hw, cin)))
    k = b.input("k", TensorType((3, 3, cin, cout)))
    bias = b.input("bias", TensorType((cout,)))
    z = b.op("conv2d", x, k, strides=strides, padding=padding, dilation=(1, 1))
    y = b.op("relu", b.op("bias_add", z, bias))
    b.g.graph["outputs"] = [y]
    feeds = {"x": RNG.standard_normal((batch, hw, hw, cin)).astype(np.float32),
             "k": RNG.standard_normal((3, 3, cin, cout)).astype(np.float32) * 0.3,
             "bias": RNG.standard_normal(cout).astype(np.float32)}
    return b.g, feeds


def dense_tanh_with_scalar():
    b = GraphBuilder(name="dense_epilogue")
    x = b.input("x", TensorType((5, 7)))
    w = b.input("w", TensorType((7, 3)))
    bias = b.input("bias", TensorType((3,)))
    y = b.op("mul", b.op("tanh", b.op("bias_add", b.op("matmul", x, w), bias)), b.scalar(2.0))
    b.g.graph["outputs"] = [y]
    feeds = {"x": RNG.standard_normal((5, 7)).astype(np.float32), "w": RNG.standard_normal((7, 3)).astype(np.float32),
             "bias": RNG.standard_normal(3).astype(np.float32)}
    return b.g, feeds


def run_fused(g, feeds):
    compiled, stages = lower_graph(g, fuse=True)
    fused = stages["fused"]
    # the fused graph means the same on the reference interpreter too
    for got, expected in zip(run_reference(fused, feeds)[0], run_reference(g, feeds)[0]):
        assert_close32(got, expected)
    return compiled.run(feeds), [fused.nodes[n]["op"] for n in fused.nodes]


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (1, 5, 1, 2), (16, 28, 1, 32)], ids=str)
def test_conv_bias_relu_epilogue(shape, monkeypatch):
    g, feeds = conv_bias_relu(*shape)
    (got,), ops = run_fused(g, feeds)
    assert "fused_contraction" in ops and "conv2d" not in ops and "relu" not in ops
    assert_close32(got, run_reference(g, feeds)[0][0])


def test_conv_epilogue_under_the_bounds_checked_build(monkeypatch):
    use_options(monkeypatch, bounds_check=True)
    g, feeds = conv_bias_relu(16, 28, 1, 32, padding="valid", strides=(2, 2))
    (got,), _ = run_fused(g, feeds)
    assert_close32(got, run_reference(g, feeds)[0][0])


def test_matmul_epilogue_with_an_inline_scalar():
    g, feeds = dense_tanh_with_scalar()
    (got,), ops = run_fused(g, feeds)
    assert ops.count("fused_contraction") == 1 and "matmul" not in ops
    assert_close32(got, run_reference(g, feeds)[0][0])


def test_a_contraction_used_twice_keeps_its_own_kernel():
    b = GraphBuilder(name="shared")
    x = b.input("x", TensorType((4, 3)))
    w = b.input("w", TensorType((3, 2)))
    z = b.op("matmul", x, w)
    b.g.graph["outputs"] = [b.op("relu", z), z]
    compiled, stages = lower_graph(b.g, fuse=True)
    g = stages["fused"]
    assert "matmul" in [g.nodes[n]["op"] for n in g.nodes]
    assert any("also used elsewhere" in note for note in g.graph["notes"])


@pytest.mark.parametrize("batch,hw,cin,cout", [(1, 10, 4, 6), (5, 10, 4, 6), (16, 15, 32, 64)])
def test_conv_input_gradient_with_a_relu_gradient_epilogue(batch, hw, cin, cout, monkeypatch):
    use_options(monkeypatch, bounds_check=True)
    b = GraphBuilder(name="backward_epilogue")
    out = hw - 2
    dy = b.input("dy", TensorType((batch, out, out, cout)))
    k = b.input("k", TensorType((3, 3, cin, cout)))
    y = b.input("y", TensorType((batch, hw, hw, cin)))
    dx = b.op("conv2d_backward_input", dy, k, strides=(1, 1), padding="valid", dilation=(1, 1), input_hw=(hw, hw))
    b.g.graph["outputs"] = [b.op("relu_grad", y, dx)]
    feeds = {"dy": RNG.standard_normal((batch, out, out, cout)).astype(np.float32),
             "k": RNG.standard_normal((3, 3, cin, cout)).astype(np.float32) * 0.2,
             "y": np.maximum(RNG.standard_normal((batch, hw, hw, cin)), 0).astype(np.float32)}
    (got,), ops = run_fused(b.g, feeds)
    assert ops.count("fused_contraction") == 1
    assert_close32(got, run_reference(b.g, feeds)[0][0])
