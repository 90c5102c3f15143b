"""BatchNormalization in training mode on its own ops (kcompiler/ops/batch_norm.py): ResNet-20
(benchmarks/workloads.py, R20) trains as it did with the layer traced as a composition of
primitive ops (the reference path below, the layer's code before the ops existed), on far
fewer kernels."""
import collections

import numpy as np
import pytest

import kcompiler
from benchmarks.workloads import DEEP_WORKLOADS
from kcompiler.keras import backend, ops
from kcompiler.keras.layers import BatchNormalization

BATCH = 8


def composed_call(self, inputs, training=None, mask=None):
    """BatchNormalization.call written with primitive ops only (mean, sub, square, rsqrt, ...):
    autodiff differentiates it op by op. The reference the fused ops must reproduce."""
    rank = len(inputs.shape)
    axis = self.axis % rank
    reduce_axes = tuple(i for i in range(rank) if i != axis)
    bshape = tuple(inputs.shape[i] if i == axis else 1 for i in range(rank))

    def as_broadcast(v):
        return ops.reshape(v, bshape) if axis != rank - 1 else v

    if training and self.trainable:
        mean = ops.mean(inputs, axis=reduce_axes, keepdims=True)
        variance = ops.mean(ops.square(ops.subtract(inputs, mean)), axis=reduce_axes, keepdims=True)
        m = self.momentum
        backend.assign(self.moving_mean, ops.add(ops.multiply(self.moving_mean, m),
                                                 ops.multiply(ops.reshape(mean, (bshape[axis],)), 1.0 - m)))
        backend.assign(self.moving_variance, ops.add(ops.multiply(self.moving_variance, m),
                                                     ops.multiply(ops.reshape(variance, (bshape[axis],)), 1.0 - m)))
    else:
        mean, variance = as_broadcast(self.moving_mean), as_broadcast(self.moving_variance)
    inv = ops.rsqrt(ops.add(variance, self.epsilon))
    if self.scale:
        inv = ops.multiply(inv, as_broadcast(self.gamma))
    out = ops.multiply(ops.subtract(inputs, mean), inv)
    if self.center:
        out = ops.add(out, as_broadcast(self.beta))
    return out


def kernel_counts(model):
    g = kcompiler.compile(model, training=True, batch_size=BATCH).stages["scheduled"]
    return collections.Counter(g.nodes[n]["op"] for n in g.graph["plan"]["order"])


def test_resnet20_train_step_has_two_batch_norm_kernels_per_layer():
    counts = kernel_counts(DEEP_WORKLOADS["R20"].build())
    assert counts["batch_norm_stats"] == counts["batch_norm_grad"] == 21
    assert not {"rsqrt", "square", "neg"} & set(counts)
    # 776 kernels with the composition (2026-12-03); 314 with the ops
    assert sum(counts.values()) <= 360, counts


def build_with_sgd(w):
    """The workload's model with plain SGD, so that a weight moves by the learning rate times
    its gradient (Adam divides each gradient by its own running size: rounding noise in a
    near-zero gradient would move a weight by up to the learning rate)."""
    model = w.make_model()
    model.compile(optimizer=kcompiler.keras.optimizers.SGD(0.01), loss=w.loss())
    return model


def assert_same_weights(got, want, names):
    for name, a, b in zip(names, got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max(initial=0))),
                                   err_msg=name)


def test_resnet20_trains_as_with_the_composition(monkeypatch):
    """The first step's weights (its gradients) and three steps' losses equal the composition's.
    Weights after several steps are not compared: at batch 8 some channels after a ReLU are
    almost constant, their batch variance near 0, and BatchNormalization then amplifies
    rounding differences step after step (the composition against itself, run by the numpy
    reference interpreter, drifts by up to 1e-2 after three steps on some initialisations)."""
    w = DEEP_WORKLOADS["R20"]
    x, y = w.data(batch_size=BATCH)
    kcompiler.keras.utils.set_random_seed(1)
    fused = build_with_sgd(w)
    weights = fused.get_weights()
    names = [v.path if hasattr(v, "path") else v.name for v in fused.weights]
    with monkeypatch.context() as patch:
        patch.setattr(BatchNormalization, "call", composed_call)
        composed = build_with_sgd(w)
        composed.set_weights(weights)
        counts = kernel_counts(composed)
        assert "batch_norm_stats" not in counts and counts["rsqrt"] == 21  # the reference path is the composition
        want = [composed.train_on_batch(x, y)]
        want_weights = composed.get_weights()
        want += [composed.train_on_batch(x, y) for _ in range(2)]
    got = [fused.train_on_batch(x, y)]
    assert_same_weights(fused.get_weights(), want_weights, names)
    got += [fused.train_on_batch(x, y) for _ in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale,center", [(True, True), (False, False)])
def test_channels_first_batch_norm_trains_as_with_the_composition(monkeypatch, scale, center):
    from kcompiler import keras
    from kcompiler.keras import layers

    def build():
        model = keras.Sequential([keras.Input((3, 5, 4)), layers.BatchNormalization(axis=1, scale=scale, center=center),
                                  layers.Activation("relu"), layers.Flatten(), layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model
    rng = np.random.default_rng(1)
    x, y = (2.0 + rng.standard_normal((6, 3, 5, 4))).astype(np.float32), rng.standard_normal((6, 2)).astype(np.float32)
    fused = build()
    with monkeypatch.context() as patch:
        patch.setattr(BatchNormalization, "call", composed_call)
        composed = build()
        composed.set_weights(fused.get_weights())
        want = [composed.train_on_batch(x, y) for _ in range(3)]
    got = [fused.train_on_batch(x, y) for _ in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert_same_weights(fused.get_weights(), composed.get_weights(), [v.name for v in fused.weights])
