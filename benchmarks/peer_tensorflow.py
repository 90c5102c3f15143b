"""TensorFlow-Keras's worker for benchmarks/compare_peers.py: W1–W6 and R20 of
benchmarks/workloads.py written in Keras 3 on TensorFlow (same layers, shapes, optimizers,
losses and batch sizes; one batch of synthetic data), run in the environment TensorFlow is
installed in (never kcompiler's).

Variants: ``default`` (``model.compile(jit_compile=False)``, what Keras does on a CPU-only
machine) and ``xla`` (``jit_compile=True``). steady: times ``train_on_batch``,
``predict_on_batch`` and ``tf.function(lambda x: model(x, training=False))`` (with
``jit_compile`` as the variant says; its output read back with ``.numpy()``); cold: one
``train_on_batch`` from a new process, then prints the wall-clock time at its end.

    python benchmarks/peer_tensorflow.py default W2 [--mode steady|cold] [--windows 5]
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import emit, window_timer, worker_arguments  # noqa: E402

BATCH = {"W1": 5, "W2": 64, "W3": 64, "W4": 32, "W5": 256, "W6": 32, "R20": 64, "TX": 32, "MN": 32}


def conv_stack(keras, shape):
    L = keras.layers
    return keras.Sequential([keras.Input(shape), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
                             L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
                             L.Conv2D(64, 3, activation="relu"), L.Flatten(),
                             L.Dense(64, activation="relu"), L.Dense(10)])


def model_and_training(keras, name):
    """(uncompiled model, optimizer, loss) of workload ``name``."""
    L = keras.layers
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "W1":
        return (keras.Sequential([keras.Input((4,)), L.Dense(5, activation="relu"), L.Dense(3, activation="relu"),
                                  L.Dense(1)]), keras.optimizers.SGD(0.01), "mse")
    if name in ("W2", "W3"):
        return conv_stack(keras, (28, 28, 1) if name == "W2" else (32, 32, 3)), keras.optimizers.Adam(1e-3), ce
    if name == "W4":
        return (keras.Sequential([keras.Input((200,), dtype="int32"), L.Embedding(10000, 16), L.LSTM(64),
                                  L.Dense(16, activation="relu"), L.Dense(1, activation="sigmoid")]),
                keras.optimizers.Adam(), "binary_crossentropy")
    if name == "W5":
        return (keras.Sequential([keras.Input((784,)), L.Dense(1024, activation="relu"),
                                  L.Dense(1024, activation="relu"), L.Dense(10)]),
                keras.optimizers.SGD(0.01, momentum=0.9), ce)
    if name == "W6":
        return (keras.Sequential([keras.Input((100,), dtype="int32"), L.Embedding(10000, 32),
                                  L.Bidirectional(L.GRU(32)), L.Dense(1, activation="sigmoid")]),
                keras.optimizers.Adam(), "binary_crossentropy")
    if name == "R20":
        from examples import resnet20
        return resnet20.build_model(keras), keras.optimizers.Adam(1e-3), ce
    if name in ("TX", "MN"):  # the reference architectures of examples/, built by the same functions
        from examples import mobilenet_classifier, transformer_classifier
        example = transformer_classifier if name == "TX" else mobilenet_classifier
        model = example.build_model(keras, **example.BENCHMARK)
        return model, keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy"
    raise SystemExit(f"unknown workload {name!r}")


def data(name, n):
    """One batch of synthetic data of the workload's shapes and dtypes (as benchmarks/workloads.py)."""
    import numpy as np
    rng = np.random.default_rng(0)
    if name == "W1":
        return rng.standard_normal((n, 4)).astype(np.float32), rng.standard_normal((n, 1)).astype(np.float32)
    if name in ("W2", "W3", "R20"):
        shape = (28, 28, 1) if name == "W2" else (32, 32, 3)
        return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)
    if name in ("W4", "W6"):
        length = 200 if name == "W4" else 100
        return rng.integers(0, 10000, (n, length)).astype(np.int32), rng.integers(0, 2, (n, 1)).astype(np.float32)
    if name == "W5":
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)
    if name == "TX":
        return rng.integers(0, 10000, (n, 128)).astype(np.int32), rng.integers(0, 2, n).astype(np.int32)
    if name == "MN":
        return rng.random((n, 96, 96, 3), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)
    raise SystemExit(f"unknown workload {name!r}")


def main():
    args = worker_arguments(__doc__.split("\n\n")[0], ["default", "xla"])
    import tensorflow as tf
    keras = tf.keras
    xla = args.variant == "xla"
    model, optimizer, loss = model_and_training(keras, args.workload)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=xla)
    x, y = data(args.workload, BATCH[args.workload])
    if args.mode == "cold":
        model.train_on_batch(x, y)
        emit({"end": time.time()})
        return
    if args.mode != "steady":
        raise SystemExit(f"{args.mode} is not a TensorFlow mode")
    xt = tf.constant(x)
    forward = tf.function(lambda v: model(v, training=False), jit_compile=xla)
    timed = window_timer(args)
    cells = {"predict_on_batch": timed(lambda: model.predict_on_batch(x)),
             "tf_function": timed(lambda: forward(xt).numpy()),
             "train_on_batch": timed(lambda: model.train_on_batch(x, y))}
    emit({"version": f"TensorFlow {tf.__version__}, Keras {keras.__version__}", "cells": cells})


if __name__ == "__main__":
    main()
