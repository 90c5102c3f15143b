"""A convolution's input and kernel gradients paired into one `fused_conv2d_grads` kernel that
reads and transforms dy once (passes/fusion.py pair_conv_gradients; codegen/llvm/winograd.py
lower_winograd_conv2d_gradients): the pass's decisions and notes, and the kernel against the numpy
references (bare gradients, the ReLU gradient as dx's epilogue and the bias gradient with dK;
both algorithms; blocks of tile rows and blocks of whole images; two parts; bounds-checked)."""
import numpy as np
import pytest

from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.passes.fusion import (fuse_bias_gradients, fuse_elementwise, fuse_epilogues, pair_conv_gradients)
from kcompiler.pipeline import lower_graph
from op_check import assert_close32, use_options

RNG = np.random.default_rng(11)
CONV = dict(strides=(1, 1), padding="same", dilation=(1, 1))


def layer_gradients(batch, hw, cin, cout, finished):
    """dx and dK of a 3x3 'same' convolution from one dy; ``finished``: dx times the ReLU mask of
    an activation (relu_grad) and the bias gradient (the sum of dy), as a CNN's layer has them."""
    b = GraphBuilder(name="layer_gradients")
    x = b.input("x", TensorType((batch, hw, hw, cin)))
    k = b.input("k", TensorType((3, 3, cin, cout)))
    dy = b.input("dy", TensorType((batch, hw, hw, cout)))
    dx = b.op("conv2d_backward_input", dy, k, input_hw=(hw, hw), **CONV)
    dk = b.op("conv2d_backward_kernel", x, dy, kernel_shape=(3, 3, cin, cout), **CONV)
    outputs = [dx, dk]
    feeds = {"x": RNG.standard_normal((batch, hw, hw, cin)).astype(np.float32),
             "k": RNG.standard_normal((3, 3, cin, cout)).astype(np.float32),
             "dy": RNG.standard_normal((batch, hw, hw, cout)).astype(np.float32)}
    if finished:
        h = b.input("h", TensorType((batch, hw, hw, cin)))
        outputs = [b.op("relu_grad", h, dx), dk, b.op("sum", dy, axes=(0, 1, 2), keepdims=False)]
        feeds["h"] = np.maximum(RNG.standard_normal((batch, hw, hw, cin)), 0).astype(np.float32)
    b.g.graph["outputs"] = outputs
    return b.g, feeds


def in_two_parts(monkeypatch, **options):
    """Kernels split their work in two parts however small, compiled afresh under ``options``."""
    from kcompiler.codegen.llvm import conv, threads
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    monkeypatch.setattr(threads, "default_nthreads", lambda: 2)
    monkeypatch.setattr(conv, "PARALLEL_MIN_MACS", 0)
    use_options(monkeypatch, **options)


def fused(g):
    return fuse_bias_gradients(fuse_epilogues(fuse_elementwise(g), heads=frozenset({"conv2d_backward_input"})),
                               heads=frozenset({"conv2d_backward_kernel"}))


def ops(g):
    return sorted(g.nodes[n]["op"] for n in g.nodes if g.nodes[n]["op"] not in ("input", "tuple_item"))


@pytest.mark.parametrize("finished", [False, True])
def test_the_pass_pairs_the_gradients_and_keeps_their_meaning(finished):
    g, feeds = layer_gradients(2, 6, 3, 4, finished)
    g = fused(g)
    paired = pair_conv_gradients(g, lambda geometry: True)
    assert ops(paired) == ["fused_conv2d_grads"]
    (note,) = [n for n in paired.graph["notes"] if "paired" in n]
    assert f"saves {2 * 6 * 6 * 4 * 4} bytes" in note
    for got, want in zip(run_reference(paired, feeds)[0], run_reference(g, feeds)[0]):
        np.testing.assert_array_equal(got, want)


def test_the_pass_says_why_it_leaves_a_pair_alone():
    g, _ = layer_gradients(2, 6, 3, 4, finished=True)
    g = fused(g)
    seen = []
    kept = pair_conv_gradients(g, lambda geometry: seen.append(geometry) or False)
    assert ops(kept) == ops(g) and seen and seen[0].cin == 3 and seen[0].cout == 4
    assert any("not paired" in n and "Winograd" in n for n in kept.graph["notes"])


def test_the_cpu_backend_pairs_only_what_runs_by_winograd(monkeypatch):
    use_options(monkeypatch, winograd="off")
    g, _ = layer_gradients(2, 6, 16, 16, finished=False)
    _, stages = lower_graph(g, fuse=True)
    assert "fused_conv2d_grads" not in ops(stages["fused"])
    use_options(monkeypatch, winograd="2x2")
    _, stages = lower_graph(g, fuse=True)
    assert ops(stages["fused"]) == ["fused_conv2d_grads"]


@pytest.mark.parametrize("bounds_check", [False, True])
@pytest.mark.parametrize("algorithm", ["2x2", "4x4"])
@pytest.mark.parametrize("batch,hw,cin,cout,finished", [
    (3, 6, 5, 7, True),      # blocks of whole images, the last one short; odd channel counts
    (1, 30, 4, 20, True),    # one image in blocks of tile rows; a full and an edge panel of dx's channels
    (2, 5, 2, 3, False),     # bare gradients; tiles overhanging the output
], ids=str)
def test_the_paired_kernel_equals_the_reference(monkeypatch, batch, hw, cin, cout, finished, algorithm, bounds_check):
    in_two_parts(monkeypatch, winograd=algorithm, bounds_check=bounds_check)
    g, feeds = layer_gradients(batch, hw, cin, cout, finished)
    compiled, stages = lower_graph(g, fuse=True)
    assert ops(stages["fused"]) == ["fused_conv2d_grads"]
    names = ["dx", "dK", "db"]
    for name, got, want in zip(names, compiled.run(feeds), run_reference(g, feeds)[0]):
        assert_close32(got, want, name)


def pooled_layer_gradients(batch, hw, cin, cout, producer):
    """dx, dK and db of a 3x3 'same' convolution whose dy is the gradient of the 2x2 max pooling
    after it (hw odd: the last row and column take no window's gradient): ``producer``
    "argmax" from the window positions (max_pool2d_grad_argmax, as W2's second convolution has
    it), "relu" from the activation, with the ReLU gradient (a fused_pool_grad)."""
    b = GraphBuilder(name="pooled_layer_gradients")
    x = b.input("x", TensorType((batch, hw, hw, cin)))
    k = b.input("k", TensorType((3, 3, cin, cout)))
    side = hw // 2
    dp = b.input("dp", TensorType((batch, side, side, cout)))
    feeds = {"x": RNG.standard_normal((batch, hw, hw, cin)).astype(np.float32),
             "k": RNG.standard_normal((3, 3, cin, cout)).astype(np.float32),
             "dp": RNG.standard_normal((batch, side, side, cout)).astype(np.float32)}
    window = dict(pool=(2, 2), strides=(2, 2), padding="valid")
    if producer == "argmax":
        idx = b.input("idx", TensorType((batch, side, side, cout), "int32"))
        dy = b.op("max_pool2d_grad_argmax", idx, dp, input_hw=(hw, hw), **window)
        feeds["idx"] = RNG.integers(0, 4, (batch, side, side, cout)).astype(np.int32)
    else:
        h = b.input("h", TensorType((batch, hw, hw, cout)))
        dy = b.op("relu_grad", h, b.op("max_pool2d_grad", h, dp, **window))
        feeds["h"] = np.maximum(RNG.standard_normal((batch, hw, hw, cout)), 0).astype(np.float32)
    b.g.graph["outputs"] = [b.op("conv2d_backward_input", dy, k, input_hw=(hw, hw), **CONV),
                            b.op("conv2d_backward_kernel", x, dy, kernel_shape=(3, 3, cin, cout), **CONV),
                            b.op("sum", dy, axes=(0, 1, 2), keepdims=False)]
    return b.g, feeds


@pytest.mark.parametrize("bounds_check", [False, True])
@pytest.mark.parametrize("algorithm", ["2x2", "4x4"])
@pytest.mark.parametrize("batch,hw,cin,cout,producer", [
    (5, 7, 3, 6, "argmax"),   # blocks of whole images, the last one short
    (1, 27, 4, 5, "relu"),    # one image in blocks of tile rows, its dy computed once for all of them
    (2, 9, 2, 17, "relu"),
], ids=str)
def test_the_paired_kernel_computes_a_pooling_gradient_dy(monkeypatch, batch, hw, cin, cout, producer, algorithm,
                                                          bounds_check):
    """dy is a pooling gradient only the pair reads: the pair computes it an image block at a
    time into scratch memory (fused_dy_producers), and it is never written out."""
    in_two_parts(monkeypatch, winograd=algorithm, bounds_check=bounds_check)
    g, feeds = pooled_layer_gradients(batch, hw, cin, cout, producer)
    compiled, stages = lower_graph(g, fuse=True)
    (node,) = [stages["fused"].nodes[n] for n in stages["fused"].nodes
               if stages["fused"].nodes[n]["op"] not in ("input", "tuple_item")]
    assert node["op"] == "fused_conv2d_grads"
    assert node["attrs"]["dy"]["op"] == ("max_pool2d_grad_argmax" if producer == "argmax" else "fused_pool_grad")
    for name, got, want in zip(["dx", "dK", "db"], compiled.run(feeds), run_reference(g, feeds)[0]):
        assert_close32(got, want, name)
