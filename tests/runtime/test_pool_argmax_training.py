"""A CNN with ReLU and MaxPooling2D trained through passes/pool_argmax.py: each max pooling
whose windows tile its input is fused into the convolution before it, which writes y and the
window positions idx (and never stores the activation); the pooling gradients read idx, each
ReLU gradient runs on the pooled shape (inside the second convolution's input gradient), the
first convolution's weight gradient computes its dy from idx, and the weights it trains are
those of the fused build without the pass, bit for bit, and of the unfused build to float32
tolerance."""
import dataclasses

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.codegen.backend import get_backend
from kcompiler.keras import backend
from op_check import assert_close32


def cnn(second_padding):
    """Conv2D relu, MaxPooling2D (10x10 -> 5x5), Conv2D relu 'same', MaxPooling2D over 5x5
    (``second_padding`` 'same': 3x3, padding after, so its windows do not tile the input and
    the pass leaves it alone; 'valid': 2x2, the last row and column read by no window), Dense."""
    backend.clear_session()
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((12, 12, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.MaxPooling2D(2),
                              keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(2, padding=second_padding), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def train(fuse, second_padding, steps=4):
    model = cnn(second_padding)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 12, 12, 2)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32)
    program = kcompiler.compile(model, training=True, batch_size=8, fuse=fuse)
    losses = [program.train_step(x, y)["loss"] for _ in range(steps)]
    return program, losses, model.get_weights()


def ops_of(g):
    return [g.nodes[n]["op"] for n in g.nodes]


def declare_pool_argmax(monkeypatch, declared):
    cpu = get_backend("cpu")
    capabilities = type(cpu).capabilities
    monkeypatch.setattr(cpu, "capabilities", lambda: dataclasses.replace(capabilities(cpu), pool_argmax=declared))


def pooled_heads(g):
    """The pooling op of each fused_contraction that pools its result."""
    return sorted(g.nodes[n]["attrs"]["pool"]["op"] for n in g.nodes
                  if g.nodes[n]["op"] == "fused_contraction" and "pool" in g.nodes[n]["attrs"])


@pytest.mark.parametrize("second_padding", ["valid", "same"])
def test_fused_training_with_pool_argmax_equals_the_other_builds(monkeypatch, second_padding):
    assert get_backend("cpu").capabilities().pool_argmax
    program, losses, weights = train(True, second_padding)
    fused = program.stages["fused"]
    ops = ops_of(fused)
    # the first pool: y and idx from the first convolution; its gradient computed from idx
    # inside that convolution's weight gradient
    assert any(fused.nodes[n]["op"] == "fused_bias_grad" and fused.nodes[n]["fused"] ==
               ["max_pool2d_grad_argmax", "conv2d_backward_kernel", "sum"] for n in fused.nodes)
    assert "max_pool2d_argmax" not in ops and ops.count("max_pool2d") == (second_padding == "same")
    if second_padding == "valid":
        assert pooled_heads(fused) == ["max_pool2d_argmax", "max_pool2d_argmax"]
        assert ops.count("max_pool2d_grad_argmax") == 1 and "max_pool2d_grad" not in ops
        # the second pool's ReLU gradient is the epilogue of the second convolution's input gradient
        assert any(fused.nodes[n]["op"] == "fused_contraction" and fused.nodes[n]["fused"] ==
                   ["conv2d_backward_input", "relu_grad"] for n in fused.nodes)
    else:
        assert pooled_heads(fused) == ["max_pool2d_argmax"]
        assert any("keeps reading its input" in note and "do not tile" in note for note in fused.graph["notes"])
        assert ops.count("fused_pool_grad") == 1  # max_pool2d_grad + relu_grad, reading the activation
    assert len(set(losses)) == len(losses)  # it trains

    _, unfused_losses, unfused = train(False, second_padding)
    np.testing.assert_allclose(losses, unfused_losses, rtol=1e-5)
    for got, want in zip(weights, unfused):
        assert_close32(got, want)

    declare_pool_argmax(monkeypatch, False)
    program, without_losses, without = train(True, second_padding)
    without_graph = program.stages["fused"]
    # max_pool2d_grad + relu_grad: the first one's inside the first convolution's weight gradient
    assert pooled_heads(without_graph) == ["max_pool2d"] * (2 if second_padding == "valid" else 1)
    assert any(without_graph.nodes[n]["op"] == "fused_bias_grad" and without_graph.nodes[n]["fused"][:2] ==
               ["max_pool2d_grad", "relu_grad"] for n in without_graph.nodes)
    assert losses == without_losses
    for got, want in zip(weights, without):
        np.testing.assert_array_equal(got, want)
