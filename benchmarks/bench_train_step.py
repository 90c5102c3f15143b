"""Issue-3 workloads, each against a baseline measured in the same run:

1. compiled GEMM: Dense(1024, use_bias=False) forward on a 1024x1024 batch vs numpy's matmul;
2. the seed's tiny model (Dense 5 relu - 3 relu - 1, SGD, mse): one train_step vs PyTorch eager
   (and TensorFlow-Keras's train_on_batch when installed);
3. the seed MNIST CNN, batch 64, Adam, sparse crossentropy from logits: one train step vs
   TensorFlow-Keras and PyTorch eager.

Run: python benchmarks/bench_train_step.py (TensorFlow/PyTorch are optional: install them in the
same environment to get their columns). Results go to docs/benchmarks.md by hand."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KCOMPILER_OPT_LEVEL", "3")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import kcompiler  # noqa: E402
from benchmarks.common import machine, optional, timeit  # noqa: E402
from kcompiler import keras  # noqa: E402

RNG = np.random.default_rng(0)


def gemm():
    x = RNG.standard_normal((1024, 1024)).astype(np.float32)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, use_bias=False)])
    program = kcompiler.compile(model, batch_size=1024)
    compiled = program._compiled
    feeds = {name: x for name, _ in model.input_types()}
    w = model.layers[0].kernel.numpy()
    t_kc = timeit(lambda: compiled.run(feeds))
    t_np = timeit(lambda: x @ w)
    flops = 2 * 1024 ** 3
    print(f"GEMM 1024^3 Dense forward: kcompiler {t_kc * 1e3:.2f} ms ({flops / t_kc / 1e9:.0f} GFLOP/s), "
          f"numpy {t_np * 1e3:.2f} ms ({flops / t_np / 1e9:.0f} GFLOP/s), ratio {t_np / t_kc:.2f}x")


def tiny():
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    y = RNG.standard_normal((5, 1)).astype(np.float32)
    model = keras.Sequential([keras.layers.Dense(5, activation="relu", input_shape=(4,)),
                              keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    program = kcompiler.compile(model, training=True, batch_size=5)
    t_kc = timeit(lambda: program.train_step(x, y))
    line = f"tiny model train_step (batch 5): kcompiler {t_kc * 1e6:.1f} us"
    torch = optional("torch")
    if torch is not None:
        torch.set_num_threads(2)
        net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3), torch.nn.ReLU(),
                                  torch.nn.Linear(3, 1))
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(tx), ty)
            loss.backward()
            opt.step()
        t_torch = timeit(torch_step)
        line += f", PyTorch eager {t_torch * 1e6:.1f} us ({t_torch / t_kc:.1f}x)"
    tf = optional("tensorflow")
    if tf is not None:
        km = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(5, activation="relu"),
                                  tf.keras.layers.Dense(3, activation="relu"), tf.keras.layers.Dense(1)])
        km.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="mse")
        t_tf = timeit(lambda: km.train_on_batch(x, y))
        line += f", TF-Keras train_on_batch {t_tf * 1e6:.1f} us ({t_tf / t_kc:.1f}x)"
    print(line)


def mnist():
    from examples.seed_models import mnist_cnn
    x = RNG.random((64, 28, 28, 1)).astype(np.float32)
    y = RNG.integers(0, 10, 64).astype(np.int32)
    model = mnist_cnn()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    program = kcompiler.compile(model, training=True, batch_size=64)
    t_kc = timeit(lambda: program.train_step(x, y), repeat=5)
    line = f"MNIST CNN train step (batch 64, Adam): kcompiler {t_kc * 1e3:.2f} ms"
    tf = optional("tensorflow")
    if tf is not None:
        L = tf.keras.layers
        km = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
                                  L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(),
                                  L.Conv2D(64, 3, activation="relu"), L.Flatten(), L.Dense(64, activation="relu"),
                                  L.Dense(10)])
        km.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        t_tf = timeit(lambda: km.train_on_batch(x, y), repeat=5)
        line += f", TF-Keras {t_tf * 1e3:.2f} ms ({t_tf / t_kc:.2f}x)"
    torch = optional("torch")
    if torch is not None:
        nn = torch.nn
        net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                            nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 64),
                            nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(net.parameters())
        tx, ty = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()

        def torch_step():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(tx), ty)
            loss.backward()
            opt.step()
        t_torch = timeit(torch_step, repeat=5)
        line += f", PyTorch eager {t_torch * 1e3:.2f} ms ({t_torch / t_kc:.2f}x)"
    print(line)


if __name__ == "__main__":
    print(f"machine: {machine()}")
    which = sys.argv[1:] or ["gemm", "tiny", "mnist"]
    for name in which:
        globals()[name]()
