"""A CNN with ReLU and MaxPooling2D trained through passes/pool_argmax.py: the fused build's
pooling gradients read the forward pass's window positions, each ReLU gradient runs on the
pooled shape inside the convolution's input gradient, and the weights it trains are those of
the fused build without the pass, bit for bit, and of the unfused build to float32 tolerance."""
import dataclasses

import numpy as np

import kcompiler
from kcompiler import keras
from kcompiler.codegen.backend import get_backend
from kcompiler.keras import backend
from op_check import assert_close32


def cnn():
    """Conv2D relu, MaxPooling2D (10x10 -> 5x5), Conv2D relu 'same', MaxPooling2D 'same' over an
    odd size (5x5 -> 3x3: padding after), Dense."""
    backend.clear_session()
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((12, 12, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.MaxPooling2D(2),
                              keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(2, padding="same"), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def train(fuse, steps=4):
    model = cnn()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 12, 12, 2)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32)
    program = kcompiler.compile(model, training=True, batch_size=8, fuse=fuse)
    losses = [program.train_step(x, y)["loss"] for _ in range(steps)]
    return program, losses, model.get_weights()


def ops_of(g):
    return [g.nodes[n]["op"] for n in g.nodes]


def declare_pool_argmax(monkeypatch, declared):
    """The CPU backend has both ops but does not ask for the pass yet (codegen/llvm/backend.py)."""
    cpu = get_backend("cpu")
    capabilities = type(cpu).capabilities
    monkeypatch.setattr(cpu, "capabilities", lambda: dataclasses.replace(capabilities(cpu), pool_argmax=declared))


def test_fused_training_with_pool_argmax_equals_the_other_builds(monkeypatch):
    declare_pool_argmax(monkeypatch, True)
    program, losses, weights = train(fuse=True)
    fused = program.stages["fused"]
    ops = ops_of(fused)
    assert ops.count("max_pool2d_argmax") == 2 and ops.count("max_pool2d_grad_argmax") == 2
    assert "max_pool2d_grad" not in ops and "fused_pool_grad" not in ops
    # the second pool's ReLU gradient is the epilogue of the second convolution's input gradient
    assert any(fused.nodes[n]["op"] == "fused_contraction" and fused.nodes[n]["fused"] ==
               ["conv2d_backward_input", "relu_grad"] for n in fused.nodes)
    assert len(set(losses)) == len(losses)  # it trains

    _, unfused_losses, unfused = train(fuse=False)
    np.testing.assert_allclose(losses, unfused_losses, rtol=1e-5)
    for got, want in zip(weights, unfused):
        assert_close32(got, want)

    declare_pool_argmax(monkeypatch, False)
    program, without_losses, without = train(fuse=True)
    without_graph = program.stages["fused"]
    # max_pool2d_grad + relu_grad: the second pool's, and the first one's inside the first
    # convolution's weight gradient (its only reader)
    assert ops_of(without_graph).count("fused_pool_grad") == 1
    assert any(without_graph.nodes[n]["op"] == "fused_bias_grad" and without_graph.nodes[n]["fused"][:2] ==
               ["max_pool2d_grad", "relu_grad"] for n in without_graph.nodes)
    assert losses == without_losses
    for got, want in zip(weights, without):
        np.testing.assert_array_equal(got, want)
