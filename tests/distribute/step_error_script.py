"""A data-parallel step that fails on one rank only: tests/distribute/test_data_parallel.py
launches it on 2 ranks. A global batch of 8 whose sample 6 (rank 1's half) holds an
Embedding id out of range: each rank prints the error it raised and whether its weights are
unchanged, then both train on a good batch (the job goes on) and print a digest of their
weights. The ranks start from different seeds: rank 0's initial weights are broadcast."""
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from kcompiler import keras  # noqa: E402
from kcompiler.keras import layers  # noqa: E402


def main():
    strategy = keras.distribution.DataParallel()
    keras.distribution.set_distribution(strategy)
    keras.utils.set_random_seed(3 + strategy.rank)  # different initial weights: rank 0's are broadcast
    model = keras.Sequential([layers.Embedding(10, 4, input_shape=(3,)), layers.Flatten(), layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (8, 3)).astype(np.int32)
    y = rng.standard_normal((8, 1)).astype(np.float32)
    model.train_on_batch(x, y)
    before = [np.array(w.numpy()) for w in model.weights]
    bad = x.copy()
    bad[6, 1] = 12
    try:
        model.train_on_batch(bad, y)
        print(f"rank {strategy.rank}: no error", flush=True)
    except Exception as e:  # noqa: BLE001 (printed for the test to read)
        print(f"rank {strategy.rank} raised {type(e).__name__}: {e}", flush=True)
    unchanged = all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))
    print(f"rank {strategy.rank} weights unchanged: {unchanged}", flush=True)
    loss = model.train_on_batch(x, y)
    print(f"rank {strategy.rank} next step loss: {loss:.6f}", flush=True)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(w.numpy()).tobytes() for w in model.weights)).hexdigest()
    print(f"rank {strategy.rank} weights digest: {digest}", flush=True)


if __name__ == "__main__":
    main()
