"""passes/pool_argmax.py: max pooling's gradient reads the forward pass's window positions, and
the ReLU's gradient moves before it, onto the pooled shape. The graphs before and after,
compared structurally and on the reference interpreter (the same values); what it leaves alone,
with the notes saying why; the pipeline runs it only in fused builds of a backend declaring it."""
import dataclasses

import numpy as np

from kcompiler import keras
from kcompiler.codegen.backend import get_backend
from kcompiler.ir.graph import GraphBuilder, operands
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.passes.pool_argmax import keep_pool_argmax
from kcompiler.passes.simplify import simplify
from kcompiler.pipeline import front_stages, lower_graph

RNG = np.random.default_rng(3)
POOL = dict(pool=(2, 2), strides=(2, 2), padding="valid")


def ops_of(g):
    return sorted(g.nodes[n]["op"] for n in g.nodes)


def only(g, op):
    (nid,) = [n for n in g.nodes if g.nodes[n]["op"] == op]
    return nid


def relu_pool_graph(grad_used_elsewhere=False, forward_attrs=POOL):
    """a = relu(x); outputs: max_pool2d(a) and relu_grad(a, max_pool2d_grad(a, dy)) (the
    backward pass of ReLU then MaxPooling2D), and with ``grad_used_elsewhere`` exp of the
    pooling gradient too."""
    b = GraphBuilder(name="relu_pool")
    x = b.input("x", TensorType((2, 6, 6, 3)))
    dy = b.input("dy", TensorType((2, 3, 3, 3)))
    a = b.op("relu", x)
    y = b.op("max_pool2d", a, **forward_attrs)
    dx = b.op("max_pool2d_grad", a, dy, **POOL)
    b.g.graph["outputs"] = [y, b.op("relu_grad", a, dx)] + ([b.op("exp", dx)] if grad_used_elsewhere else [])
    feeds = {"x": RNG.integers(-2, 3, (2, 6, 6, 3)).astype(np.float32),  # ties, zeros and negative windows
             "dy": RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)}
    return b.g, feeds


def same_values(before, after, feeds):
    """Equal outputs, exactly (the references may differ in the sign of a zero: a relu_grad of
    -0.0 added into the pooling gradient's zeros is +0.0)."""
    for got, want in zip(run_reference(after, feeds)[0], run_reference(before, feeds)[0]):
        np.testing.assert_array_equal(got, want)


def test_the_pooling_gradient_reads_idx_and_the_relu_gradient_moves_onto_the_pooled_shape():
    before, feeds = relu_pool_graph()
    after = keep_pool_argmax(before)
    assert ops_of(after) == sorted(["input", "input", "relu", "max_pool2d_argmax", "tuple_item", "tuple_item",
                                    "relu_grad", "max_pool2d_grad_argmax"])
    pool, grad, relu_grad = only(after, "max_pool2d_argmax"), only(after, "max_pool2d_grad_argmax"), \
        only(after, "relu_grad")
    y, idx = sorted(after.successors(pool))
    assert after.graph["outputs"] == [y, grad]
    assert operands(after, grad) == [idx, relu_grad]
    assert operands(after, relu_grad) == [y, operands(before, only(before, "max_pool2d_grad"))[1]]  # (y, dy)
    assert after.nodes[grad]["attrs"] == dict(POOL, input_hw=(6, 6))
    assert list(after.successors(only(after, "relu"))) == [pool]  # the activation: no backward reader left
    assert "max_pool2d_grad" in ops_of(before)  # the pass changed a copy
    notes = after.graph["notes"]
    assert any("max_pool2d_grad_argmax: reads idx (216 bytes, written by the forward pool) instead of" in n and
               "(864 bytes)" in n for n in notes)
    assert any("relu_grad moved before the pooling gradient" in n and "is now read by the forward pool only" in n
               for n in notes)
    same_values(before, after, feeds)


def test_a_pooling_gradient_used_elsewhere_keeps_the_relu_gradient_after_it():
    before, feeds = relu_pool_graph(grad_used_elsewhere=True)
    after = keep_pool_argmax(before)
    grad, relu_grad = only(after, "max_pool2d_grad_argmax"), only(after, "relu_grad")
    assert operands(after, relu_grad) == [only(after, "relu"), grad]
    assert any("relu_grad stays after" in n and "also used elsewhere" in n for n in after.graph["notes"])
    same_values(before, after, feeds)


def test_a_gradient_without_its_forward_pool_is_left_alone():
    for forward_attrs in (dict(POOL, padding="same"), None):
        before, _ = relu_pool_graph(forward_attrs=forward_attrs or POOL)
        if forward_attrs is None:  # no forward pool at all: its output dropped, simplify removes it
            before.graph["outputs"] = before.graph["outputs"][1:]
            before = simplify(before)
        after = keep_pool_argmax(before)
        assert ops_of(after) == ops_of(before) and "max_pool2d_argmax" not in ops_of(after)
        assert any("max_pool2d_grad keeps reading its input" in n and "no max_pool2d node of it with the same attrs"
                   in n for n in after.graph["notes"])


def conv_relu_pool_training_graph():
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    g = simplify(front_stages(model, training=True, batch_size=2)["differentiated"])
    feeds = {"input_1": RNG.standard_normal((2, 6, 6, 2)).astype(np.float32),
             "y": np.array([0, 1], np.int32), "sample_weight": np.ones(2, np.float32)}
    return g, feeds


def test_a_conv_relu_pool_training_graph():
    before, feeds = conv_relu_pool_training_graph()
    assert {"max_pool2d", "max_pool2d_grad"} <= set(ops_of(before))
    after = keep_pool_argmax(before)
    ops = ops_of(after)
    assert "max_pool2d" not in ops and "max_pool2d_grad" not in ops
    assert ops.count("max_pool2d_argmax") == 1 and ops.count("max_pool2d_grad_argmax") == 1
    relu_grad = only(after, "relu_grad")
    assert after.nodes[relu_grad]["type"].shape == (2, 2, 2, 3)  # the pooled shape
    (relu_out,) = operands(after, only(after, "max_pool2d_argmax"))
    assert [after.nodes[v]["op"] for v in after.successors(relu_out)] == ["max_pool2d_argmax"]
    outs, updates = run_reference(after, feeds)
    want_outs, want_updates = run_reference(before, feeds)
    for got, want in zip(outs + list(updates.values()), want_outs + list(want_updates.values())):
        np.testing.assert_array_equal(got, want)


def declare_pool_argmax(monkeypatch, declared=True):
    """Make the CPU backend declare (or not) Capabilities.pool_argmax for the rest of the test."""
    cpu = get_backend("cpu")
    capabilities = type(cpu).capabilities
    monkeypatch.setattr(cpu, "capabilities",
                        lambda: dataclasses.replace(capabilities(cpu), pool_argmax=declared))


def conv_pool_graph(activation):
    """a = activation(conv2d(x, k)); outputs: max_pool2d(a) and the activation's gradient of
    max_pool2d_grad(a, dy) (the backward pass of a Conv2D layer and MaxPooling2D)."""
    b = GraphBuilder(name=f"conv_{activation}_pool")
    x = b.input("x", TensorType((2, 8, 8, 3)))
    k = b.input("k", TensorType((3, 3, 3, 4)))
    dy = b.input("dy", TensorType((2, 3, 3, 4)))
    a = b.op(activation, b.op("conv2d", x, k, strides=(1, 1), padding="valid", dilation=(1, 1)))
    b.g.graph["outputs"] = [b.op("max_pool2d", a, **POOL),
                            b.op(f"{activation}_grad", a, b.op("max_pool2d_grad", a, dy, **POOL))]
    feeds = {"x": RNG.standard_normal((2, 8, 8, 3)).astype(np.float32),
             "k": RNG.standard_normal((3, 3, 3, 4)).astype(np.float32),
             "dy": RNG.standard_normal((2, 3, 3, 4)).astype(np.float32)}
    return b.g, feeds


def pools(g):
    """The pooling op of each fused_contraction that pools its result."""
    return [g.nodes[n]["attrs"]["pool"]["op"] for n in g.nodes
            if g.nodes[n]["op"] == "fused_contraction" and "pool" in g.nodes[n]["attrs"]]


def test_the_pipeline_runs_it_in_fused_builds_for_the_pools_fused_into_a_convolution():
    assert get_backend("cpu").capabilities().pool_argmax and not get_backend("cuda").capabilities().pool_argmax
    g, feeds = conv_pool_graph("relu")
    compiled, stages = lower_graph(g, fuse=True)
    fused = stages["fused"]
    # the convolution writes y and idx; the relu_grad moved onto the pooled shape takes the
    # pooling gradient's place: nothing left to fuse with here
    assert pools(fused) == ["max_pool2d_argmax"]
    assert "max_pool2d_grad_argmax" in ops_of(fused) and "max_pool2d_grad" not in ops_of(fused)
    assert "fused_pool_grad" not in ops_of(fused)
    for got, want in zip(compiled.run(feeds), run_reference(g, feeds)[0]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    _, stages = lower_graph(g, fuse=False)
    assert "max_pool2d_argmax" not in ops_of(stages["fused"]) and "max_pool2d_grad" in ops_of(stages["fused"])


def test_the_pipeline_leaves_alone_a_pool_no_convolution_computes(monkeypatch):
    g, _ = relu_pool_graph()
    fused = lower_graph(g, fuse=True)[1]["fused"]
    assert "max_pool2d_argmax" not in ops_of(fused) and "fused_pool_grad" in ops_of(fused)
    assert any("keeps reading its input" in n and "no conv2d computes it" in n for n in fused.graph["notes"])
    declare_pool_argmax(monkeypatch, False)
    fused = lower_graph(conv_pool_graph("relu")[0], fuse=True)[1]["fused"]
    assert pools(fused) == ["max_pool2d"] and "max_pool2d_argmax" not in ops_of(fused)


def test_a_pooling_gradient_that_keeps_an_activation_gradient_takes_it_as_an_epilogue():
    # tanh before the pool: its gradient reads the pool's input, so it stays after the pooling
    # gradient, and fuses into it as it did into max_pool2d_grad; the convolution then stores
    # its activation as well as y and idx
    g, feeds = conv_pool_graph("tanh")
    compiled, stages = lower_graph(g, fuse=True)
    fused = stages["fused"]
    pool_grad = only(fused, "fused_pool_grad")
    assert fused.nodes[pool_grad]["attrs"]["head"] == "max_pool2d_grad_argmax"
    (conv,) = [n for n in fused.nodes if fused.nodes[n]["op"] == "fused_contraction"]
    assert fused.nodes[conv]["attrs"]["pool"] == dict(fused.nodes[conv]["attrs"]["pool"], op="max_pool2d_argmax",
                                                      store_input=True)
    for got, want in zip(compiled.run(feeds), run_reference(g, feeds)[0]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
