"""Crash-safe saving (kcompiler/keras/atomic_file.py): a save replaces the file whole or not at all.

A good file is saved first; then a subprocess (save_kill_worker.py) saves a model with other
weights over it and is killed with SIGKILL at deterministic points inside the save (the
test-only hook KCOMPILER_TEST_SAVE_KILL_POINT): after N bytes for N across the file, after
the write, after the fsync, after the rename. After every kill the file at the path must load
and hold the old weights, or the new ones once the rename happened. The same run against
the in-place write kcompiler used before must lose the file, which shows that the test can
fail. A full disk (ENOSPC) and other failures in Python leave the previous file and no
temporary file.
"""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kcompiler import keras
from kcompiler.keras import atomic_file, backend

from .save_kill_worker import build_model, save

WORKER = Path(__file__).with_name("save_kill_worker.py")
FILE_NAMES = ["model.keras", "model.h5", "model.weights.h5"]
OLD, NEW = 1.0, 2.0


def weights_in(path):
    """The value every weight in the file has (OLD or NEW), or why the file is lost."""
    if path is None:
        return "missing"
    try:
        if str(path).endswith(".weights.h5"):
            model = build_model(0.0)
            model.load_weights(path)
        else:
            model = keras.models.load_model(path, compile=False)
    except Exception as e:   # noqa: BLE001 (any failure to load means the file was lost)
        return f"unloadable: {type(e).__name__}"
    values = {float(v) for w in model.get_weights() for v in np.ravel(w)}
    return values.pop() if len(values) == 1 else f"mixed weights {sorted(values)}"


def kill_points(size, in_place):
    byte_counts = sorted({0, 1, 8, 512, size // 8, size // 4, size // 2, 3 * size // 4, size - 8, size - 1})
    points = [f"bytes:{n}" for n in byte_counts]
    # An in-place write has no fsync or rename to be killed after.
    return points if in_place else points + ["after_write", "after_fsync", "after_replace"]


def kill_during_saves(tmp_path, name, in_place):
    """[(kill point, what the file at the path held afterwards)] for saves killed at every point."""
    path = tmp_path / name
    save(build_model(OLD), path)
    (tmp_path / "probe").mkdir()
    save(build_model(NEW), tmp_path / "probe" / name)   # the new file's size, to spread the byte counts
    points = kill_points(os.path.getsize(tmp_path / "probe" / name), in_place)
    (tmp_path / "snapshots").mkdir()
    job = {"path": str(path), "points": points, "snapshots": str(tmp_path / "snapshots"), "in_place": in_place}
    env = {k: v for k, v in os.environ.items() if k != atomic_file.TEST_KILL_POINT_ENV}
    done = subprocess.run([sys.executable, str(WORKER), json.dumps(job)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert [r["point"] for r in results] == points
    assert all(r["killed"] for r in results), results
    return [(r["point"], weights_in(r["snapshot"])) for r in results]


@pytest.mark.parametrize("name", FILE_NAMES)
def test_killed_save_leaves_the_previous_file(tmp_path, name):
    outcomes = kill_during_saves(tmp_path, name, in_place=False)
    assert len(outcomes) >= 13
    expected = [(point, NEW if point == "after_replace" else OLD) for point, _ in outcomes]
    assert outcomes == expected


@pytest.mark.parametrize("name", FILE_NAMES)
def test_killed_in_place_save_loses_the_file(tmp_path, name):
    """The same kills against a save that writes over the file in place: the test above would fail."""
    outcomes = kill_during_saves(tmp_path, name, in_place=True)
    lost = [(point, state) for point, state in outcomes if state not in (OLD, NEW)]
    assert lost, outcomes


def temp_files(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("name", FILE_NAMES)
@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_disk_full_leaves_the_previous_file(tmp_path, monkeypatch, name, failing):
    path = tmp_path / name
    save(build_model(OLD), path)
    previous = path.read_bytes()
    new = build_model(NEW)
    with monkeypatch.context() as patch:
        patch.setattr(atomic_file.os, failing, disk_full)
        with pytest.raises(OSError) as raised:
            save(new, path)
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == previous
    assert weights_in(path) == OLD
    assert temp_files(tmp_path) == []
    save(new, path)   # once there is room again
    assert weights_in(path) == NEW
    assert temp_files(tmp_path) == []


def test_interrupted_save_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    save(build_model(OLD), path)

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic_file.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(build_model(NEW), path)
    assert weights_in(path) == OLD
    assert temp_files(tmp_path) == []


def test_model_checkpoint_on_a_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(str(path), monitor="loss")
    checkpoint.set_model(build_model(OLD))
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    checkpoint.set_model(build_model(NEW))
    monkeypatch.setattr(atomic_file.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.on_epoch_end(1, {"loss": 0.5})
    assert weights_in(path) == OLD
    assert temp_files(tmp_path) == []


def test_saving_keeps_permissions_and_symbolic_links(tmp_path):
    path = tmp_path / "model.keras"
    save(build_model(OLD), path)
    os.chmod(path, 0o640)
    save(build_model(NEW), path)
    assert path.stat().st_mode & 0o777 == 0o640
    link = tmp_path / "latest.keras"
    link.symlink_to(path.name)
    save(build_model(OLD), link)
    assert link.is_symlink()
    assert weights_in(path) == OLD


def test_a_new_file_gets_the_default_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        build_model(OLD).save_weights(tmp_path / "new.weights.h5")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.weights.h5").stat().st_mode & 0o777 == 0o644


@pytest.fixture(autouse=True)
def _fresh_names():
    backend.clear_session()
    yield
