"""keras.callbacks.TensorBoard: event files read back with TensorBoard's own reader
(tensorboard.backend.event_processing.event_accumulator), against what real Keras 3 writes
for the same run (tests/fixtures/keras/tensorboard/keras3_events.json, made by
tests/fixtures/make_tensorboard_fixtures.py): scalars, weight histograms and images, the
model config, the compiled training step as the graph, and per-kernel cycles."""
import io
import json
import os
import sys

import numpy as np
import pytest

from kcompiler import keras
from kcompiler.keras import backend
from kcompiler.keras.callbacks.tensorboard import weight_image
from kcompiler.keras.steps import model_steps

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.util import tensor_util  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "keras", "tensorboard", "keras3_events.json")


def cnn(seed=0, optimizer=None):
    """The fixture script's model (layer names as there)."""
    backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, (3, 3), activation="relu", name="conv"),
                              keras.layers.Flatten(name="flatten"), keras.layers.Dense(3, name="dense")])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((12, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, 12)


def fit(model, log_dir, **tensorboard):
    x, y = data()
    return model.fit(x, y, batch_size=4, epochs=2, validation_split=0.25, shuffle=False, verbose=0,
                     callbacks=[keras.callbacks.TensorBoard(str(log_dir), **tensorboard)])


def read(run_dir):
    accumulator = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return accumulator


def values(accumulator, tag):
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]


def describe(accumulator):
    """The fixture's description of a run: {tag: {plugin, steps, shape}} (images: count, width, height)."""
    tags = {}
    for tag in accumulator.Tags()["tensors"]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
        steps_values = values(accumulator, tag)
        last = steps_values[-1][1]
        shape = [len(last) - 2, int(last[0]), int(last[1])] if plugin == "images" else list(last.shape)
        tags[tag] = {"plugin": plugin, "steps": [step for step, _ in steps_values], "shape": shape}
    return tags


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One run with everything asked for: (model, history, train accumulator, validation accumulator)."""
    log_dir = tmp_path_factory.mktemp("logs")
    model = cnn()
    history = fit(model, log_dir, histogram_freq=1, write_images=True, update_freq="batch")
    return model, history, read(log_dir / "train"), read(log_dir / "validation")


def test_tags_steps_and_kinds_are_keras3s(logged_run):
    _, _, train, validation = logged_run
    with open(FIXTURE) as f:
        keras3 = json.load(f)["runs"]
    assert describe(train) == keras3["train"]["tags"]
    assert describe(validation) == keras3["validation"]["tags"]


def test_scalars_are_the_history(logged_run):
    _, history, train, validation = logged_run
    for tag, key in (("epoch_loss", "loss"), ("epoch_accuracy", "accuracy")):
        steps, got = zip(*values(train, tag))
        assert steps == (0, 1)
        np.testing.assert_allclose(got, history.history[key], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in values(train, "epoch_learning_rate")], [0.1, 0.1], rtol=1e-6)
    # the batch values are the running means of the epoch: its third batch's is the epoch's mean
    np.testing.assert_allclose(values(train, "batch_loss")[2][1], history.history["loss"][0], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in values(validation, "epoch_loss")], history.history["val_loss"],
                               rtol=1e-6)
    np.testing.assert_allclose([v for _, v in values(validation, "evaluation_loss_vs_iterations")],
                               history.history["val_loss"], rtol=1e-6)


def test_histograms_and_images_are_the_weights(logged_run):
    model, _, train, _ = logged_run
    from PIL import Image
    for layer, name in ((model.layers[0], "conv"), (model.layers[2], "dense")):
        for weight, kind in zip(layer.weights, ("kernel", "bias")):
            w = weight.numpy()  # the weights after the last epoch, whose histogram is the last one
            step, buckets = values(train, f"sequential/{name}/{kind}/histogram")[-1]
            assert step == 1 and buckets.shape == (30, 3)
            assert buckets[0, 0] == pytest.approx(w.min()) and buckets[-1, 1] == pytest.approx(w.max())
            assert buckets[:, 2].sum() == w.size
            inside = ((w.ravel()[:, None] >= buckets[:, 0]) & (w.ravel()[:, None] <= buckets[:, 1])).any(axis=1)
            assert inside.all()
            step, content = values(train, f"sequential/{name}/{kind}/image")[-1]
            expected = np.clip(weight_image(w) * 255.5, 0, 255).astype(np.uint8)[:3]
            assert (int(content[0]), int(content[1])) == (expected.shape[2], expected.shape[1])
            images = [np.asarray(Image.open(io.BytesIO(png))) for png in content[2:]]
            np.testing.assert_array_equal(np.stack(images), expected[..., 0])


def test_the_model_config_is_written_for_the_conceptual_graph(logged_run):
    model, _, train, _ = logged_run
    [(step, config)] = values(train, "keras")
    assert step == 0 and json.loads(config.item()) == json.loads(model.to_json())


def test_the_graph_is_the_compiled_training_step(logged_run):
    model, _, train, _ = logged_run
    graph = train.Graph()
    program = model_steps(model).train_program
    g = program.graph
    nodes = {n.name: n for n in graph.node}
    for n in graph.node:  # every input is a node of the graph (or one of its outputs)
        for name in n.input:
            assert name.split(":")[0] in nodes, (n.name, name)
    kernels = {k.name for k in program.kernels}
    assert kernels == {n.attr["kernel"].s.decode() for n in graph.node if "kernel" in n.attr}
    groups = [nid for nid in g.nodes if g.nodes[nid]["op"] in ("fused", "fused_contraction")]
    assert groups
    for nid in groups:
        node = g.nodes[nid]
        members = [n for n in graph.node if f"_{nid}/" in n.name and n.name.split("/")[-2].endswith(f"_{nid}")]
        expected_ops = list(node["fused"])
        if node["op"] == "fused":
            expected_ops = [m["op"] for m in node["attrs"]["body"] if m["op"] != "constant"]
        assert [n.op for n in members if n.op != "constant"] == expected_ops, nid
    # the first convolution as compiled: conv2d + bias + relu in one group under the layer's scope
    [conv] = [n for n in graph.node if n.op == "conv2d" and n.name.startswith("conv/fused_contraction_")]
    scope = conv.name.rsplit("/", 1)[0]
    assert [n.op for n in graph.node if n.name.startswith(scope + "/")] == ["conv2d", "bias_add", "relu"]
    assert nodes[conv.input[0]].op == "input" and conv.input[1] == "conv/kernel"
    shape = [d.size for d in conv.attr["_output_shapes"].list.shape[0].dim]
    assert shape == [4, 4, 4, 2]  # batch 4 of 4x4 maps with 2 channels
    # every unfused node carries its IR type
    for nid in g.nodes:
        node = g.nodes[nid]
        if node["op"] in ("variable",):
            graph_node = nodes[node["attrs"]["name"]]
            assert [d.size for d in graph_node.attr["_output_shapes"].list.shape[0].dim] == list(node["type"].shape)
    assert nodes["updates/conv/kernel"].op == "assign" and nodes["updates/conv/kernel"].input[0] == "conv/kernel"


def test_profile_batch_writes_each_kernels_cycles_and_keeps_training_exact(tmp_path):
    plain = cnn(optimizer=keras.optimizers.Adam(0.01))
    fit(plain, tmp_path / "plain")
    profiled = cnn(optimizer=keras.optimizers.Adam(0.01))
    fit(profiled, tmp_path / "profiled", profile_batch=(2, 3))
    for a, b in zip(plain.weights, profiled.weights):  # the profiling build trains the same weights
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    train = read(tmp_path / "profiled" / "train")
    tags = [t for t in train.Tags()["tensors"] if t.startswith("kernel_cycles/")]
    program = model_steps(profiled).train_program
    assert not program.options.profile  # back on the plain program after the profiled batches
    assert {t.split("/", 1)[1] for t in tags} == {k.name for k in program.kernels}
    for tag in tags:
        assert [step for step, _ in values(train, tag)] == [2, 3]
    assert sum(float(v) for tag in tags for _, v in values(train, tag)) > 0


def test_profile_batch_needs_generated_cpu_kernels(tmp_path):
    model = cnn()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    with pytest.raises(ValueError, match="profile_batch=2 .*run_eagerly=True"):
        fit(model, tmp_path, profile_batch=2)


@pytest.mark.parametrize("profile_batch", [-1, (3, 2), (0, 2), "a,b", (1, 2, 3), 1.5])
def test_bad_profile_batch(profile_batch):
    with pytest.raises(ValueError, match="profile_batch"):
        keras.callbacks.TensorBoard("logs", profile_batch=profile_batch)


def test_bad_frequencies():
    with pytest.raises(ValueError, match="update_freq"):
        keras.callbacks.TensorBoard("logs", update_freq="sometimes")
    with pytest.raises(ValueError, match="histogram_freq"):
        keras.callbacks.TensorBoard("logs", histogram_freq=-1)


def test_without_tensorboard_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    with pytest.raises(ImportError, match=r"kcompiler\[tensorboard\]"):
        keras.callbacks.TensorBoard("logs")
