"""The workloads W1–W6 of DESIGN §6, defined once: the benchmarks time them and the tests
compile and check them. Each workload builds a fresh compiled model and synthetic data of
the right shapes and dtypes; ``batch_size`` may be lowered (tests) without changing the model.

    from benchmarks.workloads import WORKLOADS
    w = WORKLOADS["W2"]
    model = w.build()                   # compiled with the workload's optimizer and loss
    x, y = w.data(batch_size=64)        # one batch, reproducible

DEEP_WORKLOADS holds the residual CNN of issue 9 (R20: ResNet-20 for CIFAR) and issue 10's
Transformer classifier (TX) and MobileNet-style classifier (MN), the reference architectures of
examples/ at the issue's sizes, kept apart so that the tests that compile every workload of
WORKLOADS do not compile them too.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kcompiler import keras
from kcompiler.keras import layers


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    batch_size: int
    make_model: Callable          # () -> uncompiled model
    optimizer: Callable           # () -> optimizer instance
    loss: Callable                # () -> loss instance or name
    make_data: Callable           # (rng, batch_size) -> (x, y)

    def build(self):
        model = self.make_model()
        model.compile(optimizer=self.optimizer(), loss=self.loss())
        return model

    def data(self, batch_size=None, seed=0):
        return self.make_data(np.random.default_rng(seed), batch_size or self.batch_size)


def _conv_stack(input_shape):
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.Flatten(),
        layers.Dense(64, activation="relu"), layers.Dense(10),
    ])


def _images(shape):
    return lambda rng, n: (rng.random((n,) + shape, dtype=np.float32), rng.integers(0, 10, n).astype(np.int32))


def _token_ids(length):
    return lambda rng, n: (rng.integers(0, 10000, (n, length)).astype(np.int32),
                           rng.integers(0, 2, (n, 1)).astype(np.float32))


def _sparse_ce_logits():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


WORKLOADS = {w.name: w for w in [
    Workload("W1", "tiny MLP 4-5-3-1, batch 5, SGD 0.01, mse", 5,
             lambda: keras.Sequential([keras.Input((4,)), layers.Dense(5, activation="relu"),
                                       layers.Dense(3, activation="relu"), layers.Dense(1)]),
             lambda: keras.optimizers.SGD(0.01), lambda: "mse",
             lambda rng, n: (rng.standard_normal((n, 4)).astype(np.float32),
                             rng.standard_normal((n, 1)).astype(np.float32))),
    Workload("W2", "MNIST CNN 28x28x1, batch 64, Adam 1e-3, sparse CE from logits", 64,
             lambda: _conv_stack((28, 28, 1)), lambda: keras.optimizers.Adam(1e-3), _sparse_ce_logits,
             _images((28, 28, 1))),
    Workload("W3", "CIFAR CNN (W2's layers) 32x32x3, batch 64, Adam 1e-3, sparse CE from logits", 64,
             lambda: _conv_stack((32, 32, 3)), lambda: keras.optimizers.Adam(1e-3), _sparse_ce_logits,
             _images((32, 32, 3))),
    Workload("W4", "Embedding(10000, 16) + LSTM(64), length 200, batch 32, Adam, binary CE", 32,
             lambda: keras.Sequential([keras.Input((200,), dtype="int32"), layers.Embedding(10000, 16),
                                       layers.LSTM(64), layers.Dense(16, activation="relu"),
                                       layers.Dense(1, activation="sigmoid")]),
             lambda: keras.optimizers.Adam(), lambda: "binary_crossentropy", _token_ids(200)),
    Workload("W5", "wide MLP 784-1024-1024-10, batch 256, SGD 0.01 momentum 0.9, sparse CE from logits", 256,
             lambda: keras.Sequential([keras.Input((784,)), layers.Dense(1024, activation="relu"),
                                       layers.Dense(1024, activation="relu"), layers.Dense(10)]),
             lambda: keras.optimizers.SGD(0.01, momentum=0.9), _sparse_ce_logits,
             lambda rng, n: (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32))),
    Workload("W6", "Embedding(10000, 32) + Bidirectional(GRU(32)), length 100, batch 32, Adam, binary CE", 32,
             lambda: keras.Sequential([keras.Input((100,), dtype="int32"), layers.Embedding(10000, 32),
                                       layers.Bidirectional(layers.GRU(32)), layers.Dense(1, activation="sigmoid")]),
             lambda: keras.optimizers.Adam(), lambda: "binary_crossentropy", _token_ids(100)),
]}


def _resnet20():
    from examples import resnet20
    return resnet20.build_model(keras)


def _transformer():
    from examples import transformer_classifier as example
    return example.build_model(keras, **example.BENCHMARK)


def _mobilenet():
    from examples import mobilenet_classifier as example
    return example.build_model(keras, **example.BENCHMARK)


def _token_classes(length, classes):
    return lambda rng, n: (rng.integers(0, 10000, (n, length)).astype(np.int32),
                           rng.integers(0, classes, n).astype(np.int32))


DEEP_WORKLOADS = {w.name: w for w in [
    Workload("R20", "ResNet-20 (21 Conv2D + BatchNormalization, 9 residual adds) 32x32x3, batch 64, Adam 1e-3, "
             "sparse CE from logits", 64, _resnet20, lambda: keras.optimizers.Adam(1e-3), _sparse_ce_logits,
             _images((32, 32, 3))),
    Workload("TX", "Transformer classifier (examples/): Embedding(10000, 128) + positions, 2 blocks of "
             "MultiHeadAttention(2 heads of 64) + LayerNormalization + Dense(256)/Dense(128), length 128, batch 32, "
             "Adam 1e-3, sparse CE", 32, _transformer, lambda: keras.optimizers.Adam(1e-3),
             lambda: "sparse_categorical_crossentropy", _token_classes(128, 2)),
    Workload("MN", "MobileNet-style classifier (examples/): 96x96x3, stem Conv2D(32, stride 2), DepthwiseConv2D, "
             "1x1 Conv2D(64), SeparableConv2D(64, stride 2), BatchNormalization + ReLU6 after each, batch 32, "
             "Adam 1e-3, sparse CE", 32, _mobilenet, lambda: keras.optimizers.Adam(1e-3),
             lambda: "sparse_categorical_crossentropy", _images((96, 96, 3))),
]}
