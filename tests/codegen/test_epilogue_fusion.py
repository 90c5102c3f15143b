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


def in_two_parts(monkeypatch):
    """Kernels generated for the rest of the test split their work in two parts, however small
    (and are compiled afresh); returns the convolution lowering module, to adjust further."""
    from kcompiler.codegen.llvm import conv, threads
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    monkeypatch.setattr(threads, "default_nthreads", lambda: 2)
    monkeypatch.setattr(conv, "PARALLEL_MIN_MACS", 0)
    return conv


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


def pool_gradient_with_epilogue(op, shape, pool, strides, padding, epilogue):
    """dx of a pooling op followed by an element-wise op of it (and of y): the backward pass of a
    ReLU before a pooling layer, or an activation gradient with a bias-like operand."""
    b = GraphBuilder(name="pool_grad_epilogue")
    n, h, w, c = shape
    y = b.input("y", TensorType(shape))
    attrs = dict(pool=pool, strides=strides, padding=padding)
    pooled = b.type(b.op(op.replace("_grad", ""), y, **attrs)).shape
    dp = b.input("dp", TensorType(pooled))
    feeds = {"y": np.maximum(RNG.standard_normal(shape), 0).astype(np.float32),
             "dp": RNG.standard_normal(pooled).astype(np.float32)}
    if op == "max_pool2d_grad":
        dx = b.op(op, y, dp, **attrs)
    else:
        dx = b.op(op, dp, input_hw=(h, w), **attrs)
    if epilogue == "relu_grad":
        out = b.op("relu_grad", y, dx)
    else:  # a per-channel operand and a scalar: (dx + bias) * 0.5
        bias = b.input("bias", TensorType((c,)))
        feeds["bias"] = RNG.standard_normal(c).astype(np.float32)
        out = b.op("mul", b.op("bias_add", dx, bias), b.scalar(0.5))
    b.g.graph["outputs"] = [out]
    return b.g, feeds


@pytest.mark.parametrize("op,shape,pool,strides,padding,epilogue", [
    ("max_pool2d_grad", (3, 6, 6, 5), (2, 2), (2, 2), "valid", "relu_grad"),
    ("max_pool2d_grad", (2, 7, 5, 17), (2, 2), (2, 2), "same", "relu_grad"),    # uncovered: none; padding
    ("max_pool2d_grad", (2, 7, 7, 3), (2, 2), (3, 3), "valid", "bias"),         # elements no window covers
    ("avg_pool2d_grad", (2, 9, 6, 4), (3, 2), (3, 2), "same", "bias"),
], ids=str)
def test_pool_gradient_with_an_epilogue_at_its_stores(op, shape, pool, strides, padding, epilogue):
    g, feeds = pool_gradient_with_epilogue(op, shape, pool, strides, padding, epilogue)
    (got,), ops = run_fused(g, feeds)
    assert ops.count("fused_pool_grad") == 1 and op not in ops
    assert_close32(got, run_reference(g, feeds)[0][0])


def test_overlapping_pool_windows_take_no_epilogue():
    g, feeds = pool_gradient_with_epilogue("max_pool2d_grad", (2, 6, 6, 3), (3, 3), (2, 2), "valid", "relu_grad")
    (got,), ops = run_fused(g, feeds)
    assert "fused_pool_grad" not in ops and "max_pool2d_grad" in ops
    fused = lower_graph(g, fuse=True)[1]["fused"]
    assert any("windows overlap" in note for note in fused.graph["notes"])
    assert_close32(got, run_reference(g, feeds)[0][0])


def test_fusion_notes_score_each_fusion_in_bytes():
    g, _ = pool_gradient_with_epilogue("max_pool2d_grad", (3, 6, 6, 5), (2, 2), (2, 2), "valid", "relu_grad")
    fused = lower_graph(g, fuse=True)[1]["fused"]
    assert any(note.endswith("relu_grad: saves 4320 bytes (its result is neither written nor read back)")
               for note in fused.graph["notes"])  # 2 x 3*6*6*5 floats


def weight_and_bias_gradients(x_shape, k_shape, padding="valid", strides=(1, 1), axes=(0, 1, 2)):
    """The two gradients a Conv2D layer with a bias takes from its dy: dK and sum(dy, (0, 1, 2))."""
    b = GraphBuilder(name="bias_gradient")
    attrs = dict(strides=strides, padding=padding, dilation=(1, 1))
    x = b.input("x", TensorType(x_shape))
    y_shape = b.type(b.op("conv2d", x, b.input("k", TensorType(k_shape)), **attrs)).shape
    dy = b.input("dy", TensorType(y_shape))
    b.g.graph["outputs"] = [b.op("conv2d_backward_kernel", x, dy, kernel_shape=k_shape, **attrs),
                            b.op("sum", dy, axes=axes, keepdims=False)]
    feeds = {"x": RNG.standard_normal(x_shape).astype(np.float32), "dy": RNG.standard_normal(y_shape).astype(np.float32),
             "k": np.zeros(k_shape, np.float32)}
    return b.g, feeds


@pytest.mark.parametrize("split_batch", [False, True])
@pytest.mark.parametrize("x_shape,k_shape,padding", [
    ((6, 7, 6, 3), (3, 3, 3, 35), "valid"),    # an edge panel of output channels
    ((4, 6, 5, 2), (3, 2, 2, 16), "same"),     # padded image copies
    ((5, 4, 4, 3), (1, 1, 3, 7), "valid"),     # 1x1: one GEMM, then the sum
], ids=str)
def test_weight_gradient_with_its_bias_gradient(x_shape, k_shape, padding, split_batch, monkeypatch):
    from kcompiler.codegen.llvm import conv, threads
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")  # no unit remembered from other settings
    monkeypatch.setattr(threads, "default_nthreads", lambda: 3)
    monkeypatch.setattr(conv, "PARALLEL_MIN_MACS", 0)
    monkeypatch.setattr(conv, "BLOCK_FLOATS", 1)   # blocks of one output row
    monkeypatch.setattr(conv, "split_by_batch", lambda g, nparts: split_batch and g.batch >= nparts)
    g, feeds = weight_and_bias_gradients(x_shape, k_shape, padding)
    _, ops = run_fused(g, feeds)
    assert ops.count("fused_bias_grad") == 1 and "sum" not in ops and "conv2d_backward_kernel" not in ops
    compiled, stages = lower_graph(g, fuse=True)
    compiled.run(feeds)
    for out, expected in zip(compiled.run(feeds), run_reference(g, feeds)[0]):  # a second step: nothing left over
        assert_close32(out, expected)
    fused = stages["fused"]
    dy_bytes = 4 * int(np.prod(feeds["dy"].shape))
    assert any(f"fused_bias_grad: saves {dy_bytes} bytes (dy is read once for both)" in note
               for note in fused.graph["notes"])


def test_a_sum_over_other_axes_is_no_bias_gradient():
    g, feeds = weight_and_bias_gradients((2, 5, 5, 3), (3, 3, 3, 4), axes=(1, 2))
    got, ops = run_fused(g, feeds)
    assert "fused_bias_grad" not in ops and "sum" in ops
    for out, expected in zip(got, run_reference(g, feeds)[0]):
        assert_close32(out, expected)


def conv_relu_pool(batch, hw, cin, cout, pool, strides=None, padding="valid", pool_padding="valid",
                   keep_activation=True, kernel=3):
    """conv2d + bias + relu, then max pooling: the pooled result, and (as a training step keeps
    it for the gradients) the activation too."""
    b = GraphBuilder(name="conv_pool")
    x = b.input("x", TensorType((batch, hw, hw, cin)))
    k = b.input("k", TensorType((kernel, kernel, cin, cout)))
    bias = b.input("bias", TensorType((cout,)))
    y = b.op("relu", b.op("bias_add", b.op("conv2d", x, k, strides=(1, 1), padding=padding, dilation=(1, 1)), bias))
    pooled = b.op("max_pool2d", y, pool=pool, strides=strides or pool, padding=pool_padding)
    b.g.graph["outputs"] = [pooled, y] if keep_activation else [pooled]
    feeds = {"x": RNG.standard_normal((batch, hw, hw, cin)).astype(np.float32),
             "k": RNG.standard_normal((kernel, kernel, cin, cout)).astype(np.float32) * 0.3,
             "bias": RNG.standard_normal(cout).astype(np.float32)}
    return b.g, feeds


def test_a_pooled_1x1_convolution_in_inference(monkeypatch):
    """One GEMM, then the epilogue, then the pooling image by image (the activation is stored
    whole: its buffer exists although nothing reads it)."""
    use_options(monkeypatch, bounds_check=True)
    g, feeds = conv_relu_pool(3, 6, 4, 5, (2, 2), keep_activation=False, kernel=1)
    (got,), ops = run_fused(g, feeds)
    assert "max_pool2d" not in ops
    assert_close32(got, run_reference(g, feeds)[0][0])


@pytest.mark.parametrize("bounds_check", [False, True])
@pytest.mark.parametrize("batch,hw,cin,cout,pool,padding,keep", [
    (3, 9, 3, 5, (2, 2), "valid", True),      # 7x7 activation: its last row and column pooled by no window
    (2, 12, 2, 40, (2, 2), "same", True),     # padded image copies; an edge panel of channels
    (1, 7, 1, 3, (3, 2), "same", False),      # one image (one part); inference: only the pooled result
    (4, 15, 8, 33, (2, 2), "valid", True),    # rows of windows ending inside a block of tiles
    (2, 4, 3, 6, (2, 2), "valid", False),     # 2x2 activation: one window per image
    (3, 16, 3, 20, (2, 2), "same", False),    # inference, padded image copies
], ids=str)
def test_conv_epilogue_pools_its_activation(batch, hw, cin, cout, pool, padding, keep, bounds_check, monkeypatch):
    in_two_parts(monkeypatch)
    use_options(monkeypatch, bounds_check=bounds_check)
    g, feeds = conv_relu_pool(batch, hw, cin, cout, pool, padding=padding, keep_activation=keep)
    got, ops = run_fused(g, feeds)
    assert "max_pool2d" not in ops and ops.count("fused_contraction") == 1
    for out, expected in zip(got, run_reference(g, feeds)[0]):
        assert_close32(out, expected)
    fused = lower_graph(g, fuse=True)[1]["fused"]
    (node,) = [fused.nodes[n] for n in fused.nodes if fused.nodes[n]["op"] == "fused_contraction"]
    assert node["attrs"]["pool"]["store_input"] == keep  # inference: the activation stays in scratch
    side = hw - 2 if padding == "valid" else hw
    activation_bytes = 4 * batch * side * side * cout
    notes = [n for n in fused.graph["notes"] if "max_pool2d fused into" in n]
    assert len(notes) == 1 and f"saves {activation_bytes * (1 if keep else 2)} bytes" in notes[0]
    assert ("nor stored" in notes[0]) == (not keep)


@pytest.mark.parametrize("pool,strides,pool_padding,why", [
    ((3, 3), (2, 2), "valid", "windows overlap"),
    ((2, 2), (2, 2), "same", "reach into the padding"),   # a 7x7 activation: the last windows are padded
], ids=str)
def test_pooling_that_does_not_tile_its_input_keeps_its_kernel(pool, strides, pool_padding, why):
    g, feeds = conv_relu_pool(2, 9, 3, 4, pool, strides=strides, pool_padding=pool_padding)
    got, ops = run_fused(g, feeds)
    assert "max_pool2d" in ops
    assert any("max_pool2d not fused" in note and why in note
               for note in lower_graph(g, fuse=True)[1]["fused"].graph["notes"])
    for out, expected in zip(got, run_reference(g, feeds)[0]):
        assert_close32(out, expected)


def test_a_backend_without_pooled_epilogues_keeps_the_pooling_kernel():
    from kcompiler.passes.fusion import fuse_elementwise, fuse_epilogues, fuse_pooling
    g, _ = conv_relu_pool(2, 8, 3, 4, (2, 2))
    g = fuse_epilogues(fuse_elementwise(g), heads=frozenset({"conv2d"}))
    assert fuse_pooling(g, heads=frozenset()).number_of_nodes() == g.number_of_nodes()
    pooled = fuse_pooling(g, heads=frozenset({"conv2d"}))
    assert "max_pool2d" not in [pooled.nodes[n]["op"] for n in pooled.nodes]


def weight_gradient_of_a_pooled_activation(batch, hw, cin, cout, op, pool, padding, kernel=3, dy_read_twice=False):
    """The first convolution's gradients in a CNN: dy = relu_grad(y, pooling gradient of dp), then
    dK and the bias gradient of dy (and, with ``dy_read_twice``, dy itself as a result too)."""
    b = GraphBuilder(name="pooled_weight_gradient")
    attrs = dict(strides=(1, 1), padding="valid", dilation=(1, 1))
    x = b.input("x", TensorType((batch, hw, hw, cin)))
    side = hw - kernel + 1
    y = b.input("y", TensorType((batch, side, side, cout)))
    pool_attrs = dict(pool=pool, strides=pool, padding=padding)
    pooled = b.type(b.op(op.replace("_grad", ""), y, **pool_attrs)).shape
    dp = b.input("dp", TensorType(pooled))
    dx = b.op(op, y, dp, **pool_attrs) if op == "max_pool2d_grad" else b.op(op, dp, input_hw=(side, side), **pool_attrs)
    dy = b.op("relu_grad", y, dx)
    b.g.graph["outputs"] = [b.op("conv2d_backward_kernel", x, dy, kernel_shape=(kernel, kernel, cin, cout), **attrs),
                            b.op("sum", dy, axes=(0, 1, 2), keepdims=False)] + ([dy] if dy_read_twice else [])
    feeds = {"x": RNG.standard_normal((batch, hw, hw, cin)).astype(np.float32),
             "y": np.maximum(RNG.standard_normal((batch, side, side, cout)), 0).astype(np.float32),
             "dp": RNG.standard_normal(pooled).astype(np.float32)}
    return b.g, feeds


@pytest.mark.parametrize("bounds_check", [False, True])
@pytest.mark.parametrize("split_batch", [False, True])
@pytest.mark.parametrize("batch,hw,cin,cout,op,pool,padding,block_floats", [
    (3, 9, 3, 5, "max_pool2d_grad", (2, 2), "valid", None),      # 7x7 dy: its last row and column get none
    (4, 12, 2, 35, "max_pool2d_grad", (2, 2), "valid", 1),       # blocks of one dy row; an edge panel
    (2, 11, 2, 17, "avg_pool2d_grad", (3, 3), "same", None),     # padded windows
    (5, 6, 3, 4, "max_pool2d_grad", (2, 2), "same", 344),        # blocks of two images, the last partial
], ids=str)
def test_weight_gradient_computes_the_pooling_gradient_it_reads(batch, hw, cin, cout, op, pool, padding, block_floats,
                                                                split_batch, bounds_check, monkeypatch):
    conv = in_two_parts(monkeypatch)
    monkeypatch.setattr(conv, "split_by_batch", lambda g, nparts: split_batch and g.batch >= nparts)
    if block_floats is not None:
        monkeypatch.setattr(conv, "BLOCK_FLOATS", block_floats)
    use_options(monkeypatch, bounds_check=bounds_check)
    g, feeds = weight_gradient_of_a_pooled_activation(batch, hw, cin, cout, op, pool, padding)
    compiled, stages = lower_graph(g, fuse=True)
    fused = stages["fused"]
    assert [fused.nodes[n]["op"] for n in fused.nodes if fused.nodes[n]["op"].startswith("fused")] == ["fused_bias_grad"]
    for out, expected in zip(run_reference(fused, feeds)[0], run_reference(g, feeds)[0]):
        assert_close32(out, expected)
    compiled.run(feeds)
    for out, expected in zip(compiled.run(feeds), run_reference(g, feeds)[0]):  # a second step: nothing left over
        assert_close32(out, expected)
    dy_bytes = 4 * int(np.prod(feeds["y"].shape))
    assert any(f"saves {2 * dy_bytes} bytes (dy is computed where the weight gradient reads it" in note
               for note in fused.graph["notes"])


@pytest.mark.parametrize("kernel,dy_read_twice,why", [(3, True, "also used elsewhere"), (1, False, "1x1 convolution")])
def test_a_pooling_gradient_read_elsewhere_or_by_a_1x1_kernel_keeps_its_kernel(kernel, dy_read_twice, why):
    g, feeds = weight_gradient_of_a_pooled_activation(2, 8, 3, 4, "max_pool2d_grad", (2, 2), "valid", kernel=kernel,
                                                      dy_read_twice=dy_read_twice)
    compiled, stages = lower_graph(g, fuse=True)
    fused = stages["fused"]
    assert "fused_pool_grad" in [fused.nodes[n]["op"] for n in fused.nodes]
    assert any("fused_pool_grad not fused into" in note and why in note for note in fused.graph["notes"])
    for out, expected in zip(compiled.run(feeds), run_reference(g, feeds)[0]):
        assert_close32(out, expected)


def test_a_backend_without_the_capability_keeps_the_pooling_gradient_kernel():
    from kcompiler.passes.fusion import fuse_bias_gradients, fuse_dy_producers, fuse_elementwise, fuse_epilogues
    g, _ = weight_gradient_of_a_pooled_activation(2, 8, 3, 4, "max_pool2d_grad", (2, 2), "valid")
    g = fuse_bias_gradients(fuse_epilogues(fuse_elementwise(g), heads=frozenset({"max_pool2d_grad"})),
                            heads=frozenset({"conv2d_backward_kernel"}))
    assert fuse_dy_producers(g, heads=frozenset()).number_of_nodes() == g.number_of_nodes()
    assert fuse_dy_producers(g, heads=frozenset({"max_pool2d_grad"})).number_of_nodes() < g.number_of_nodes()


def conv_relu_argmax_pool(batch, hw, cin, cout, pool, keep_activation, nan=False):
    """conv2d + bias + relu, then max_pool2d_argmax -> (y, idx) (what passes/pool_argmax.py makes
    of a training graph), on small integers: every sum is exact, so the activation is the
    reference's bit for bit, and windows hold many equal values (ties: idx is the first)."""
    b = GraphBuilder(name="conv_argmax_pool")
    x = b.input("x", TensorType((batch, hw, hw, cin)))
    k = b.input("k", TensorType((3, 3, cin, cout)))
    bias = b.input("bias", TensorType((cout,)))
    y = b.op("relu", b.op("bias_add", b.op("conv2d", x, k, strides=(1, 1), padding="valid", dilation=(1, 1)), bias))
    pooled = b.op("max_pool2d_argmax", y, pool=pool, strides=pool, padding="valid")
    b.g.graph["outputs"] = [b.tuple_item(pooled, 0), b.tuple_item(pooled, 1)] + ([y] if keep_activation else [])
    feeds = {"x": RNG.integers(-2, 3, (batch, hw, hw, cin)).astype(np.float32),
             "k": RNG.integers(-1, 2, (3, 3, cin, cout)).astype(np.float32),
             "bias": RNG.integers(-2, 2, cout).astype(np.float32)}
    if nan:
        feeds["x"][0, 1, 2, 0] = np.nan
    return b.g, feeds


@pytest.mark.parametrize("bounds_check", [False, True])
@pytest.mark.parametrize("batch,hw,cin,cout,pool,keep,nan", [
    (3, 9, 1, 5, (2, 2), True, False),      # the activation stored too; its last row and column pooled by no window
    (2, 12, 2, 40, (2, 2), False, True),    # in scratch; an edge panel of channels; a NaN in the image
    (4, 8, 3, 6, (3, 2), False, False),     # 6x6 -> 2x3 windows of 3x2
], ids=str)
def test_conv_epilogue_pools_with_window_positions(batch, hw, cin, cout, pool, keep, nan, bounds_check, monkeypatch):
    in_two_parts(monkeypatch)
    use_options(monkeypatch, bounds_check=bounds_check)
    g, feeds = conv_relu_argmax_pool(batch, hw, cin, cout, pool, keep, nan)
    compiled, stages = lower_graph(g, fuse=True)
    fused = stages["fused"]
    assert [fused.nodes[n]["op"] for n in fused.nodes if fused.nodes[n]["op"] != "tuple_item"
            and fused.nodes[n]["op"] != "input"] == ["fused_contraction"]
    (node,) = [fused.nodes[n] for n in fused.nodes if fused.nodes[n]["op"] == "fused_contraction"]
    assert node["attrs"]["pool"]["op"] == "max_pool2d_argmax" and node["attrs"]["pool"]["store_input"] == keep
    got, want = compiled.run(feeds), run_reference(g, feeds)[0]
    assert np.count_nonzero(want[1] > 0) > 0  # the ties are not all at position 0
    for out, expected in zip(got, want):
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("split_batch", [False, True])
def test_weight_gradient_computes_a_bare_pooling_gradient_from_window_positions(split_batch, monkeypatch):
    """dy = max_pool2d_grad_argmax(idx, dp) (no activation gradient after it: passes/pool_argmax.py
    moved it onto the pooled shape), computed inside the first convolution's weight gradient."""
    conv = in_two_parts(monkeypatch)
    monkeypatch.setattr(conv, "split_by_batch", lambda g, nparts: split_batch and g.batch >= nparts)
    use_options(monkeypatch, bounds_check=True)
    batch, hw, cin, cout, side = 3, 9, 2, 5, 7
    b = GraphBuilder(name="argmax_weight_gradient")
    x = b.input("x", TensorType((batch, hw, hw, cin)))
    idx = b.input("idx", TensorType((batch, 3, 3, cout), "int32"))
    dp = b.input("dp", TensorType((batch, 3, 3, cout)))
    dy = b.op("max_pool2d_grad_argmax", idx, dp, input_hw=(side, side), pool=(2, 2), strides=(2, 2), padding="valid")
    b.g.graph["outputs"] = [b.op("conv2d_backward_kernel", x, dy, kernel_shape=(3, 3, cin, cout), strides=(1, 1),
                                 padding="valid", dilation=(1, 1)),
                            b.op("sum", dy, axes=(0, 1, 2), keepdims=False)]
    feeds = {"x": RNG.standard_normal((batch, hw, hw, cin)).astype(np.float32),
             "idx": RNG.integers(0, 4, (batch, 3, 3, cout)).astype(np.int32),
             "dp": RNG.standard_normal((batch, 3, 3, cout)).astype(np.float32)}
    compiled, stages = lower_graph(b.g, fuse=True)
    fused = stages["fused"]
    (node,) = [fused.nodes[n] for n in fused.nodes if fused.nodes[n]["op"] == "fused_bias_grad"]
    assert node["attrs"]["dy"]["op"] == "max_pool2d_grad_argmax" and "max_pool2d_grad_argmax" not in [
        fused.nodes[n]["op"] for n in fused.nodes]
    for _ in range(2):  # a second step: nothing left over in the scratch dy
        for out, expected in zip(compiled.run(feeds), run_reference(b.g, feeds)[0]):
            assert_close32(out, expected)


@pytest.mark.parametrize("taps", [2, 3, 4, 6])
def test_a_windows_peak_and_first_position_match_the_reference_for_every_mix(taps):
    """PooledOutput.first_peak (the pooling a convolution fuses) against max_pool2d_argmax's
    reference, one window per image, over every window of ``taps`` values drawn from ties, both
    zeros, both infinities and NaN: the peak as np.max gives it (NaN if any tap is) and the
    position of the first tap equal to it or NaN."""
    import ctypes
    import itertools

    import llvmlite.ir as ir

    from kcompiler.codegen.llvm.epilogue import PooledOutput
    from kcompiler.codegen.llvm.irutil import c64, for_range, load, store
    from kcompiler.codegen.llvm.jit import compile_ir
    from kcompiler.ops.pool_reference import max_pool2d_argmax

    f32p, i32p = ir.FloatType().as_pointer(), ir.IntType(32).as_pointer()
    module = ir.Module(name="first_peak")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [f32p, f32p, i32p, ir.IntType(64)]), name="first_peak")
    windows, peaks, positions, count = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with for_range(b, count, name="w") as w:
        base = b.mul(w, c64(taps))
        peak, position = PooledOutput.first_peak(b, [load(b, windows, b.add(base, c64(t)), "float32")
                                                     for t in range(taps)])
        store(b, peak, peaks, w, "float32")
        store(b, position, positions, w, "int32")
    b.ret_void()
    run = compile_ir(str(module), opt_level=1, name="first_peak").function(
        "first_peak", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    values = [-1.0, 0.0, -0.0, 2.0, np.inf, -np.inf, np.nan] if taps <= 4 else [-1.0, 0.0, 2.0, np.inf, np.nan]
    x = np.array(list(itertools.product(values, repeat=taps)), np.float32)
    got_peak, got_position = np.empty(len(x), np.float32), np.empty(len(x), np.int32)
    run(x.ctypes.data, got_peak.ctypes.data, got_position.ctypes.data, len(x))
    shape = (2, taps // 2) if taps % 2 == 0 else (1, taps)
    want_peak, want_position = max_pool2d_argmax(x.reshape((len(x),) + shape + (1,)), pool=shape, strides=shape)
    np.testing.assert_array_equal(got_peak, want_peak.ravel())
    np.testing.assert_array_equal(got_position, want_position.ravel())
    assert len(set(got_position.tolist())) == taps  # every position is some window's answer
