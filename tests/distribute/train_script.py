"""A training run that tests/distribute/test_data_parallel.py launches as one process or as
the ranks of an MPI job (``--distributed``), with the same seed and data either way.

    python train_script.py MODEL OUT_DIR [--distributed] [--fail-rank R --fail-step S [--fail-how raise]]

MODEL is a function of examples/seed_models.py (tiny_mlp, mnist_cnn). Trains 20 steps of global
batch 64 (2 epochs of 10 batches, the last of each epoch partial: 33 samples) with validation
data and a ModelCheckpoint (OUT_DIR/last.weights.h5, written by rank 0), then writes
OUT_DIR/result-<rank>.npz (per-batch logs, History, final weights) and rank 0 prints the History. ``--fail-rank R --fail-step S``: rank R kills itself (SIGKILL) at step S, or with
``--fail-how raise`` raises an exception out of fit there.
``--sequence SAMPLES``: the first SAMPLES samples come from a keras.utils.Sequence instead of
arrays (no shuffling, no validation): on N ranks, batches of 64 / N samples of which rank r
takes r, r + N, ...; in one process, batches of 64 made of the same N consecutive small ones.
"""
import argparse
import json
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from examples import seed_models  # noqa: E402
from kcompiler import keras  # noqa: E402

SAMPLES = 64 * 9 + 33


class BatchLogs(keras.callbacks.Callback):
    def __init__(self, fail_rank=None, fail_step=None, fail_how="kill", rank=0):
        super().__init__()
        self.batches, self.fail_rank, self.fail_step, self.rank, self.steps = [], fail_rank, fail_step, rank, 0
        self.fail_how = fail_how

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append([logs[k] for k in sorted(logs)])
        self.steps += 1
        if self.rank == self.fail_rank and self.steps == self.fail_step:
            sys.stdout.flush()
            if self.fail_how == "raise":
                raise RuntimeError(f"a user callback failed on rank {self.rank}")
            os.kill(os.getpid(), signal.SIGKILL)


def data(model_name):
    rng = np.random.default_rng(1)
    if model_name == "mnist_cnn":
        x = rng.random((SAMPLES, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, SAMPLES).astype(np.int32)
    else:
        x = rng.standard_normal((SAMPLES, 4), dtype=np.float32)
        y = rng.integers(0, 2, SAMPLES).astype(np.float32)
    return x, y


class Batches(keras.utils.Sequence):
    """Consecutive batches of ``size`` samples of (x, y)."""

    def __init__(self, x, y, size):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        return self.x[i * self.size:(i + 1) * self.size], self.y[i * self.size:(i + 1) * self.size]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--fail-step", type=int)
    parser.add_argument("--fail-how", choices=["kill", "raise"], default="kill")
    parser.add_argument("--sequence", type=int, default=None)
    args = parser.parse_args()
    rank = 0
    if args.distributed:
        strategy = keras.distribution.DataParallel()
        keras.distribution.set_distribution(strategy)
        rank = strategy.rank
    keras.utils.set_random_seed(7)
    model = getattr(seed_models, args.model)()
    if args.model == "mnist_cnn":  # a gentle step: with random labels, a large rate and momentum (or Adam) the
        # ~1e-6 rounding differences of the ranks' sums grow step after step (docs/distributed.md, Numerics)
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    else:
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse",
                      metrics=["mae", keras.metrics.Precision(name="precision")])  # a mean and a stateful metric
    x, y = data(args.model)
    val = (x[:100], y[:100])
    logs = BatchLogs(args.fail_rank, args.fail_step, args.fail_how, rank)
    checkpoint = keras.callbacks.ModelCheckpoint(os.path.join(args.out, "last.weights.h5"), save_weights_only=True)
    if args.sequence:
        ranks = strategy.world_size if args.distributed else 1
        source = Batches(x[:args.sequence], y[:args.sequence], 64 // (2 if args.distributed else 1))
        assert ranks in (1, 2)
        history = model.fit(source, epochs=2, shuffle=False, callbacks=[logs, checkpoint], verbose=2)
    else:
        history = model.fit(x, y, batch_size=64, epochs=2, validation_data=val, callbacks=[logs, checkpoint],
                            verbose=2)
    np.savez(os.path.join(args.out, f"result-{rank}.npz"), batches=np.array(logs.batches, dtype=np.float64),
             history=json.dumps(history.history), *[w.numpy() for w in model.weights])
    if rank == 0:
        print("history", json.dumps(history.history, sort_keys=True))


if __name__ == "__main__":
    main()
