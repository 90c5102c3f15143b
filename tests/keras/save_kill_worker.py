"""Run by test_atomic_save.py (not a test itself): save a model over an existing file and be killed.

Argument: a JSON object with ``path`` (the file to save over), ``points`` (values of the
test-only hook KCOMPILER_TEST_SAVE_KILL_POINT, see kcompiler/keras/atomic_file.py),
``snapshots`` (a folder) and ``in_place`` (save the way kcompiler did before atomic_file:
truncate the file and write over it, to show that the test catches that).

The model (weights all 2.0) is built once; each point is one forked child that sets the hook
and saves, so the import is paid once. After each child dies, what it left at ``path`` is
copied into ``snapshots`` for the test to load, and the previous file is put back for the
next point. Prints one JSON list: per point, whether the child died by SIGKILL and the
snapshot (null when the crash left no file at the path).
"""
import glob
import json
import os
import shutil
import signal
import sys

import numpy as np

from kcompiler import keras
from kcompiler.keras import atomic_file, model_files
from kcompiler.keras.callbacks import model_checkpoint


def build_model(value):
    """A tiny model whose weights all equal ``value``; fixed names, so that every file it makes has one size."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")], name="model")
    model.set_weights([np.full(w.shape, value, w.dtype) for w in model.get_weights()])
    return model


def save(model, path):
    if str(path).endswith(".weights.h5"):
        model.save_weights(path)
    else:
        model.save(path)


def write_in_place(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        atomic_file.write_all(fd, data)
    finally:
        os.close(fd)


def main():
    job = json.loads(sys.argv[1])
    path = job["path"]
    with open(path, "rb") as f:
        previous = f.read()
    if job["in_place"]:
        model_files.write_file_atomically = model_checkpoint.write_file_atomically = write_in_place
    model = build_model(2.0)
    results = []
    for i, point in enumerate(job["points"]):
        child = os.fork()
        if child == 0:
            os.environ[atomic_file.TEST_KILL_POINT_ENV] = point
            save(model, path)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        snapshot = os.path.join(job["snapshots"], f"{i}-{os.path.basename(path)}")
        if os.path.exists(path):
            shutil.copyfile(path, snapshot)
        else:
            snapshot = None
        results.append({"point": point, "killed": killed, "snapshot": snapshot})
        with open(path, "wb") as f:
            f.write(previous)
        for temp in glob.glob(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.*.tmp")):
            os.unlink(temp)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
