"""Cold start: a new process, to the end of the first MNIST-CNN train step (batch 64, Adam).

kcompiler with an empty kernel cache and with a warm one; TensorFlow-Keras (train_on_batch)
when installed. Each is timed as a whole subprocess, best of 3."""
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KC = """
import numpy as np, kcompiler
from kcompiler import keras
from examples.seed_models import mnist_cnn
m = mnist_cnn()
m.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
p = kcompiler.compile(m, training=True, batch_size=64)
p.train_step(np.random.rand(64, 28, 28, 1).astype("float32"), np.random.randint(0, 10, 64).astype("int32"))
"""

TF = """
import numpy as np, tensorflow as tf
L = tf.keras.layers
m = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
    L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(64, 3, activation="relu"), L.Flatten(),
    L.Dense(64, activation="relu"), L.Dense(10)])
m.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
m.train_on_batch(np.random.rand(64, 28, 28, 1).astype("float32"), np.random.randint(0, 10, 64))
"""


def run(code, env):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    env = dict(os.environ, KCOMPILER_OPT_LEVEL="3", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run: Python caches compiled bytecode
    cold = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(KC, dict(env, KCOMPILER_CACHE_DIR=cache)))
    with tempfile.TemporaryDirectory() as cache:
        run(KC, dict(env, KCOMPILER_CACHE_DIR=cache))
        warm = [run(KC, dict(env, KCOMPILER_CACHE_DIR=cache)) for _ in range(3)]
    line = f"cold start to the first MNIST train step: kcompiler empty cache {min(cold):.2f} s, warm cache {min(warm):.2f} s"
    try:
        import tensorflow  # noqa: F401
        tf = [run(TF, env) for _ in range(3)]
        line += f", TensorFlow-Keras {min(tf):.2f} s"
    except ImportError:
        pass
    print(line)


if __name__ == "__main__":
    main()
