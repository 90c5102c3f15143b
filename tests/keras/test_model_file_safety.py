"""Crafted model files (kcompiler/keras/model_file_checks.py): refused before anything is parsed or
followed, always with ModelFileError naming the file.

Each test builds a good file, makes it hostile in one way (an HDF5 link or reference leading out
of the file, an oversized or deeply nested config, an attribute of the wrong type, a compressed
weight far larger than the model's) and loads it with keras.models.load_model or
model.load_weights. Where the danger is memory, tracemalloc shows the hostile data was never
allocated.
"""
import io
import struct
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest

from kcompiler import keras
from kcompiler.errors import ConfigError, ModelFileConfigError, ModelFileError
from kcompiler.keras import backend, model_file_checks

L = keras.layers


def small_model():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="dense")], name="model")
    model.compile(optimizer="adam", loss="mse")
    return model


def saved(tmp_path, name):
    """A good file: a weights file when ``name`` says "weights" (tf.keras 2's layout unless it ends in
    .weights.h5), otherwise a whole model."""
    path = tmp_path / name
    model = small_model()
    if "weights" in name:
        model.save_weights(path)
    else:
        model.save(path)
    return path


def load(path):
    if "weights" in path.name:
        small_model().load_weights(path)
    else:
        keras.models.load_model(path)


def refused(path, match):
    """Loading ``path`` raises ModelFileError naming the file and matching ``match``."""
    with pytest.raises(ModelFileError, match=match) as raised:
        load(path)
    assert path.name in str(raised.value)
    return raised.value


def rewrite_archive(path, **members):
    """Replace members of the .keras archive at ``path`` (name -> bytes; dots written as underscores)."""
    with zipfile.ZipFile(path) as zf:
        contents = {name: zf.read(name) for name in zf.namelist()}
    contents.update({name.replace("_", "."): data for name, data in members.items()})
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)


def edit_archive_weights(path, edit):
    """Apply ``edit(h5py.File)`` to the model.weights.h5 inside the .keras archive at ``path``."""
    with zipfile.ZipFile(path) as zf:
        weights = io.BytesIO(zf.read("model.weights.h5"))
    with h5py.File(weights, "a") as f:
        edit(f)
    rewrite_archive(path, model_weights_h5=weights.getvalue())


# ---- links and references out of the file ----------------------------------------------------

def add_external_link(f):
    f["elsewhere"] = h5py.ExternalLink("other.h5", "/data")


def add_dangling_soft_link(f):
    f["dangling"] = h5py.SoftLink("/nowhere/at/all")


def add_references(f):
    f.create_dataset("refs", data=[f["/"].ref], dtype=h5py.ref_dtype)


def add_reference_attribute(f):
    f.attrs["where"] = f["/"].ref


def add_external_storage(f):
    f.create_dataset("raw", shape=(4,), dtype="f4", external=[("raw.bin", 0, 16)])


def add_virtual_dataset(f):
    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource("other.h5", "x", shape=(4,))
    f.create_virtual_dataset("virtual", layout)


HOSTILE_EDITS = {
    add_external_link: "points to another file",
    add_dangling_soft_link: "soft link /dangling leads nowhere",
    add_references: "refs holds HDF5 references",
    add_reference_attribute: "'where' of / holds HDF5 references",
    add_external_storage: "keeps its data in other files",
    add_virtual_dataset: "keeps its data in other files",
}


@pytest.mark.parametrize("edit", HOSTILE_EDITS, ids=lambda edit: edit.__name__)
@pytest.mark.parametrize("name", ["model.h5", "model.weights.h5", "tf2_weights.h5"])
def test_hdf5_links_and_references_out_of_the_file_are_refused(tmp_path, name, edit):
    path = saved(tmp_path, name)
    with h5py.File(path, "a") as f:
        edit(f)
    refused(path, HOSTILE_EDITS[edit])


@pytest.mark.parametrize("edit", HOSTILE_EDITS, ids=lambda edit: edit.__name__)
def test_keras_archive_weights_reaching_out_are_refused(tmp_path, edit):
    path = saved(tmp_path, "model.keras")
    edit_archive_weights(path, edit)
    error = refused(path, HOSTILE_EDITS[edit])
    assert "model.weights.h5" in str(error)


def test_a_soft_link_inside_the_file_is_fine(tmp_path):
    path = saved(tmp_path, "model.h5")
    with h5py.File(path, "a") as f:
        f["alias"] = h5py.SoftLink("/model_weights")
    keras.models.load_model(path)


def test_a_filter_from_a_plugin_is_refused(tmp_path):
    path = saved(tmp_path, "model.weights.h5")
    with h5py.File(path, "a") as f:
        f.create_dataset("packed", shape=(16,), dtype="f4", chunks=(16,), compression=32004,
                         allow_unknown_filter=True)
    refused(path, r"needs HDF5 filter plugin\(s\) \[32004\]")


# ---- sizes ---------------------------------------------------------------------------------

def whitespace_archive(path, megabytes):
    """A .keras archive whose config.json is ``megabytes`` MiB of spaces, deflated to a small file."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", "{}")
        with zf.open("config.json", "w") as member:
            for _ in range(megabytes):
                member.write(b" " * 2**20)
        zf.writestr("model.weights.h5", b"")


def declare_size(path, member, size):
    """Change the uncompressed size the archive's central directory declares for ``member``."""
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    while data[entry + 46: entry + 46 + len(member)] != member.encode():
        entry = data.find(b"PK\x01\x02", entry + 4)
    struct.pack_into("<I", data, entry + 24, size)
    path.write_bytes(bytes(data))


def peak_memory_of(action):
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_an_oversized_config_json_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "whitespace.keras"
    whitespace_archive(path, megabytes=model_file_checks.MAX_CONFIG_BYTES // 2**20 + 1)
    assert path.stat().st_size < 2**20
    peak = peak_memory_of(lambda: refused(path, r"config\.json is 68157440 bytes, over the 67108864-byte limit"))
    assert peak < 4 * 2**20
    declare_size(path, "config.json", 2**30)   # the 1 GiB of whitespace in a small file
    peak = peak_memory_of(lambda: refused(path, r"config\.json is 1073741824 bytes.*refused without reading it"))
    assert peak < 4 * 2**20


def test_a_config_json_larger_than_declared_is_not_inflated(tmp_path):
    """A zip bomb: the directory declares 100 bytes, the data inflates to 65 MiB."""
    path = tmp_path / "bomb.keras"
    whitespace_archive(path, megabytes=65)
    declare_size(path, "config.json", 100)
    peak = peak_memory_of(lambda: refused(path, "cannot read the model archive.*CRC"))
    assert peak < 4 * 2**20


def test_an_attribute_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = saved(tmp_path, "model.h5")
    with h5py.File(path, "a") as f:   # fixed-length text, as tf.keras 2.x once wrote it
        f.attrs["model_config"] = np.bytes_(f.attrs["model_config"].encode() + b" " * 5000)
    monkeypatch.setattr(model_file_checks, "MAX_ATTRIBUTE_BYTES", 4096)
    refused(path, r"attribute 'model_config' of / is \d+ bytes, over the 4096-byte limit; refused without")


def test_a_compressed_weight_larger_than_the_model_is_not_read(tmp_path):
    """A 400 MB weight in a small file (compressed, never written): refused from its shape."""
    for name in ("model.weights.h5", "model.h5"):
        path = saved(tmp_path, name)
        with h5py.File(path, "a") as f:
            kernel = "layers/dense/vars/0" if name.endswith(".weights.h5") else "model_weights/dense/dense/kernel:0"
            del f[kernel]
            f.create_dataset(kernel, shape=(10000, 10000), dtype="f4", chunks=(1000, 1000), compression="gzip")
        assert path.stat().st_size < 2**20
        peak = peak_memory_of(lambda: refused(path, r"has shape \(10000, 10000\).*has shape \(4, 3\)"))
        assert peak < 4 * 2**20


# ---- configs that break the decoder --------------------------------------------------------

def test_deeply_nested_json_is_refused(tmp_path):
    path = saved(tmp_path, "nested.keras")
    rewrite_archive(path, config_json=b"[" * 100000)
    refused(path, "config.json is nested too deeply")
    path = saved(tmp_path, "nested.h5")
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = "[" * 100000
    refused(path, "model_config attribute is nested too deeply")


@pytest.mark.parametrize("attribute, value, match", [
    ("model_config", np.arange(3), "model_config attribute is not JSON text"),
    ("model_config", "not json", "model_config attribute is not valid JSON"),
    ("model_config", '{"class_name": "Sequential", "config": {"layers": 5}}', "cannot load the model"),
    ("model_config", '["a list"]', "cannot load the model"),
    ("training_config", "[1, 2]", "training_config attribute is not a dict"),
    ("training_config", '{"loss": {"x": 1}}', "cannot compile the model"),
    ("model_weights/layer_names", 7, "the weights do not fit the model: TypeError"),
    ("model_weights/dense/weight_names", np.arange(2), "the weights do not fit the model"),
])
def test_attributes_of_the_wrong_type(tmp_path, attribute, value, match):
    path = saved(tmp_path, "model.h5")
    group, _, name = attribute.rpartition("/")
    with h5py.File(path, "a") as f:
        f[group or "/"].attrs[name] = value
    refused(path, match)


@pytest.mark.parametrize("config, match", [
    (b'{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": "abc"}}]}}',
     "cannot load the model"),
    (b'{"class_name": "Sequential", "config": {"name": "m", "layers": []}, "compile_config": [1]}',
     "compile arguments are not a dict"),
    (b'"just a string"', "does not hold a model config"),
    (b"\xff\xfe not UTF-8", "not valid JSON"),
])
def test_configs_of_the_wrong_type(tmp_path, config, match):
    path = saved(tmp_path, "model.keras")
    rewrite_archive(path, config_json=config)
    refused(path, match)


def test_an_unknown_class_is_both_errors(tmp_path):
    path = saved(tmp_path, "model.keras")
    with zipfile.ZipFile(path) as zf:
        config = zf.read("config.json")
    rewrite_archive(path, config_json=config.replace(b'"Dense"', b'"FancyDense"'))
    error = refused(path, "FancyDense")
    assert isinstance(error, ModelFileConfigError) and isinstance(error, ConfigError)


def test_damaged_files_are_model_file_errors(tmp_path):
    path = saved(tmp_path, "model.weights.h5")
    path.write_bytes(path.read_bytes()[:1000])
    refused(path, "cannot read the HDF5 file")
    path = saved(tmp_path, "model.keras")
    with zipfile.ZipFile(path) as zf:   # a member in a compression method zipfile does not know
        offset = zf.getinfo("config.json").header_offset
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, offset + 8, 77)
    entry = data.find(b"PK\x01\x02")
    while data[entry + 46: entry + 57] != b"config.json":
        entry = data.find(b"PK\x01\x02", entry + 4)
    struct.pack_into("<H", data, entry + 10, 77)
    path.write_bytes(bytes(data))
    refused(path, "cannot read the model archive.*NotImplementedError")


@pytest.fixture(autouse=True)
def _fresh_names():
    backend.clear_session()
    yield
