"""Where a compiled training step spends its time: cycles per generated kernel.

python benchmarks/profile_step.py [mnist|tiny]"""
import os
import sys

import numpy as np

os.environ["KCOMPILER_PROFILE"] = "1"
os.environ.setdefault("KCOMPILER_OPT_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kcompiler  # noqa: E402
from examples.seed_models import mnist_cnn  # noqa: E402
from kcompiler import keras  # noqa: E402


def main(steps=20):
    rng = np.random.default_rng(0)
    model = mnist_cnn()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    program = kcompiler.compile(model, training=True, batch_size=64)
    x = rng.random((64, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    for _ in range(steps):
        program.train_step(x, y)
    rows = program.profile()
    total = sum(c for _, c in rows)
    print(f"{len(rows)} kernels, {total / steps / 1e6:.1f} Mcycles per step")
    for name, cycles in rows[:25]:
        print(f"{cycles / steps / 1e6:8.2f} Mcycles {100 * cycles / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
