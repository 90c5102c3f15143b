"""PyTorch's worker for benchmarks/compare_peers.py: W1–W6, TX and MN of benchmarks/workloads.py
written in PyTorch (same layers, shapes, optimizers, losses and batch sizes; images NCHW, as PyTorch
users feed them; one batch of synthetic data), run in the environment PyTorch is installed in
(never kcompiler's), with ``torch.set_num_threads(2)``.

Variants: ``eager`` and ``compile``. A training step is ``opt.zero_grad()``, forward, loss,
``loss.backward()``, ``opt.step()``; with ``compile``, ``torch.compile`` wraps the forward
with the loss and, separately, ``opt.step``. Inference is ``model(x)`` under
``torch.inference_mode()``; with ``compile``, of ``torch.compile(model)``. The residual CNN
(R20) is not defined here: the runner compares it with TensorFlow-Keras only.

    python benchmarks/peer_torch.py eager W2 [--windows 5]
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import emit, window_timer, worker_arguments  # noqa: E402

BATCH = {"W1": 5, "W2": 64, "W3": 64, "W4": 32, "W5": 256, "W6": 32, "TX": 32, "MN": 32}


def model_and_training(torch, name):
    """(model, optimizer, loss function, x, y) of workload ``name``."""
    nn = torch.nn
    rng = __import__("numpy").random.default_rng(0)
    n = BATCH[name]

    def floats(*shape):
        return torch.from_numpy(rng.random(shape, dtype="float32"))

    def classes(count):
        return torch.from_numpy(rng.integers(0, count, n)).long()

    if name == "W1":
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 1))
        return (model, torch.optim.SGD(model.parameters(), lr=0.01), nn.MSELoss(),
                torch.from_numpy(rng.standard_normal((n, 4)).astype("float32")),
                torch.from_numpy(rng.standard_normal((n, 1)).astype("float32")))
    if name in ("W2", "W3"):
        channels, size = (1, 28) if name == "W2" else (3, 32)
        side = ((size - 2) // 2 - 2) // 2 - 2
        model = nn.Sequential(nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(64 * side * side, 64), nn.ReLU(), nn.Linear(64, 10))
        return (model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(),
                floats(n, channels, size, size), classes(10))
    if name in ("W4", "W6"):
        length, width = (200, 16) if name == "W4" else (100, 32)
        model = Recurrent(torch, name, width)
        ids = torch.from_numpy(rng.integers(0, 10000, (n, length))).long()
        labels = torch.from_numpy(rng.integers(0, 2, (n, 1)).astype("float32"))
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.BCELoss(), ids, labels
    if name == "W5":
        model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        return (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss(),
                floats(n, 784), classes(10))
    if name == "TX":
        model = Transformer(torch)
        ids = torch.from_numpy(rng.integers(0, 10000, (n, 128))).long()
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), ids, classes(2)
    if name == "MN":
        model = mobilenet(torch)
        return (model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), floats(n, 3, 96, 96),
                classes(10))
    raise SystemExit(f"workload {name!r} is not defined for PyTorch")


def Recurrent(torch, name, width):
    """W4: Embedding(10000, 16) -> LSTM(64) -> Dense(16, relu) -> Dense(1, sigmoid);
    W6: Embedding(10000, 32) -> Bidirectional(GRU(32)) -> Dense(1, sigmoid); the last states."""
    nn = torch.nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10000, width)
            if name == "W4":
                self.rnn = nn.LSTM(width, 64, batch_first=True)
                self.head = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
            else:
                self.rnn = nn.GRU(width, 32, batch_first=True, bidirectional=True)
                self.head = nn.Sequential(nn.Linear(64, 1), nn.Sigmoid())

        def forward(self, ids):
            _, state = self.rnn(self.embedding(ids))
            h = state[0] if name == "W4" else state
            return self.head(torch.cat(list(h), dim=1))

    return Model()


def Transformer(torch, length=128, width=128, heads=2, hidden=256):
    """TX (examples/transformer_classifier.py at its BENCHMARK sizes): embeddings + positions, 2 blocks
    of MultiheadAttention (2 heads of 64) + LayerNorm + feed-forward, mean over the steps, Linear
    (logits: CrossEntropyLoss takes the softmax Keras's model ends with)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
            self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
            self.feed = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))

        def forward(self, x):
            x = self.norm1(x + self.attention(x, x, x, need_weights=False)[0])
            return self.norm2(x + self.feed(x))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10000, width)
            self.positions = nn.Parameter(torch.zeros(length, width))
            self.blocks = nn.Sequential(Block(), Block())
            self.head = nn.Linear(width, 2)

        def forward(self, ids):
            return self.head(self.blocks(self.embedding(ids) + self.positions).mean(dim=1))

    return Model()


def mobilenet(torch, width=32):
    """MN (examples/mobilenet_classifier.py at its BENCHMARK sizes), NCHW."""
    nn = torch.nn

    def bn_relu6(channels):
        return [nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01), nn.ReLU6()]

    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), *bn_relu6(width),
        nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), *bn_relu6(width),
        nn.Conv2d(width, 2 * width, 1, bias=False), *bn_relu6(2 * width),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, groups=2 * width, bias=False),
        nn.Conv2d(2 * width, 2 * width, 1, bias=False), *bn_relu6(2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


def main():
    args = worker_arguments(__doc__.split("\n\n")[0], ["eager", "compile"])
    if args.mode != "steady":
        raise SystemExit(f"{args.mode} is not a PyTorch mode")
    import torch
    torch.set_num_threads(2)
    model, opt, loss_fn, x, y = model_and_training(torch, args.workload)
    compiled = args.variant == "compile"

    def forward_loss(a, b):
        return loss_fn(model(a), b)

    forward_loss_fn = torch.compile(forward_loss) if compiled else forward_loss
    opt_step = torch.compile(opt.step) if compiled else opt.step
    infer_model = torch.compile(model) if compiled else model

    def train():
        opt.zero_grad()
        forward_loss_fn(x, y).backward()
        opt_step()

    def infer():
        with torch.inference_mode():
            infer_model(x)

    timed = window_timer(args)
    cells = {"inference": timed(infer), "train": timed(train)}
    emit({"version": f"PyTorch {torch.__version__}", "cells": cells})


if __name__ == "__main__":
    main()
