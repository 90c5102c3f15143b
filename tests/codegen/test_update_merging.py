"""The element-wise kernels that compute only state updates run as one `fused_updates` kernel
(passes/fusion.py's fuse_updates, schedule/elementwise.py): the variables end up as the
reference computes them, updates sharing a variable or broadcasting an operand keep their own
kernels, and a backend that does not declare the capability keeps every update's kernel."""
import dataclasses

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.codegen.llvm import backend as llvm_backend
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend
from kcompiler.keras.variables import Variable
from kcompiler.passes.fusion import fuse_elementwise, fuse_updates
from kcompiler.pipeline import lower_graph
from op_check import assert_close32, use_options

RNG = np.random.default_rng(5)


def momentum_step(b, w, v, g, lr):
    """SGD with momentum on variable ``w`` with slot ``v``: v' = 0.9 v - lr g, w' = w + v'."""
    v_new = b.op("sub", b.op("mul", v, b.scalar(0.9)), b.op("mul", g, lr))
    return b.op("add", w, v_new), v_new


def updates_graph(shapes, shared=False, broadcast=False):
    """One momentum step per shape in ``shapes`` (a scalar learning rate read by all), and
    a step counter's increment (int64). With ``shared``, a last update adds the first weight to
    a variable of its own; with ``broadcast``, updates add a (1, 4) row, a (3, 1) column and a (4,)
    vector to matrix variables."""
    b = GraphBuilder(name="updates")
    lr = b.input("lr", TensorType(()))
    feeds = {"lr": np.array(0.05, np.float32)}
    updates, variables = {}, []
    for k, shape in enumerate(shapes):
        w = b.variable(Variable(RNG.standard_normal(shape).astype(np.float32), name=f"w{k}"))
        v = b.variable(Variable(RNG.standard_normal(shape).astype(np.float32), name=f"v{k}"))
        g = b.input(f"g{k}", TensorType(shape))
        feeds[f"g{k}"] = RNG.standard_normal(shape).astype(np.float32)
        updates[w], updates[v] = momentum_step(b, w, v, g, lr)
        variables += [w, v]
    step = b.variable(Variable(np.array(7, np.int64), dtype="int64", name="step"))
    updates[step] = b.op("add", step, b.scalar(1, "int64"))
    if shared:
        other = b.variable(Variable(RNG.standard_normal(shapes[0]).astype(np.float32), name="other"))
        updates[other] = b.op("add", other, variables[0])
    if broadcast:
        matrix = b.variable(Variable(RNG.standard_normal((3, 4)).astype(np.float32), name="matrix"))
        row = b.input("row", TensorType((4, 1)))
        feeds["row"] = RNG.standard_normal((4, 1)).astype(np.float32)
        updates[matrix] = b.op("add", matrix, b.op("reshape", row, shape=(1, 4)))
        row_t = b.input("column", TensorType((3, 1)))
        feeds["column"] = RNG.standard_normal((3, 1)).astype(np.float32)
        column = b.variable(Variable(RNG.standard_normal((3, 4)).astype(np.float32), name="column_added"))
        updates[column] = b.op("add", column, row_t)
        bias = b.input("bias", TensorType((4,)))  # its last axis: the matrix's, each element read 3 times
        feeds["bias"] = RNG.standard_normal(4).astype(np.float32)
        biased = b.variable(Variable(RNG.standard_normal((3, 4)).astype(np.float32), name="bias_added"))
        updates[biased] = b.op("add", biased, bias)
    b.g.graph["updates"] = updates
    b.g.graph["outputs"] = []
    return b.g, feeds


def run_and_compare(g, feeds):
    """Compile ``g`` (fused), run it once; every variable must hold the reference's update.
    Returns the fused stage."""
    expected = run_reference(g, feeds)[1]
    compiled, stages = lower_graph(g, fuse=True)
    compiled.run(feeds)
    for var, value in expected.items():
        got = g.graph["variables"][var].numpy()
        if got.dtype.kind == "f":
            assert_close32(got, value, g.nodes[var]["attrs"]["name"])
        else:
            assert got.tobytes() == np.asarray(value).tobytes()
    return stages


def ops_of(g):
    return [g.nodes[n]["op"] for n in g.nodes]


# sizes: under one element a chunk (only the serial remainder), a whole number of chunks, chunks
# and a remainder, a scalar variable
SHAPES = [(5,), (4, 8), (37, 3), (), (1,)]


@pytest.mark.parametrize("bounds_check", [False, True])
def test_update_kernels_run_as_one_and_update_every_variable(bounds_check, monkeypatch):
    use_options(monkeypatch, bounds_check=bounds_check)
    g, feeds = updates_graph(SHAPES)
    stages = run_and_compare(g, feeds)
    fused = stages["fused"]
    assert ops_of(fused).count("fused_updates") == 1 and "fused" not in ops_of(fused)
    node = next(fused.nodes[n] for n in fused.nodes if fused.nodes[n]["op"] == "fused_updates")
    assert len(node["attrs"]["members"]) == len(SHAPES) + 1  # one per momentum step, the counter
    assert any(n.startswith(f"{len(SHAPES) + 1} update kernels merged into") and f"saves {len(SHAPES)} kernel calls" in n
               for n in fused.graph["notes"])
    if not bounds_check:  # every update computed in its variable's buffer
        assert len(stages["planned"].graph["plan"]["in_place"]) == len(g.graph["updates"])


def test_a_large_update_splits_over_the_cores_with_the_small_ones(monkeypatch):
    from kcompiler.codegen.llvm import render, threads
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    monkeypatch.setattr(threads, "default_nthreads", lambda: 2)
    monkeypatch.setattr(render, "PARALLEL_MIN_ACCESSES", 0)
    g, feeds = updates_graph([(3,), (70, 33), (17,)])
    run_and_compare(g, feeds)


def test_updates_sharing_a_variable_or_broadcasting_keep_their_kernels():
    g, feeds = updates_graph([(5,), (6,)], shared=True, broadcast=True)
    stages = run_and_compare(g, feeds)
    fused, notes = stages["fused"], stages["fused"].graph["notes"]
    node = next(fused.nodes[n] for n in fused.nodes if fused.nodes[n]["op"] == "fused_updates")
    # w1's step, the counter, and one of those sharing w0 (the first in the kernel order): the
    # other keeps its kernel
    assert len(node["attrs"]["members"]) == 3
    shared = [n for n in notes if "not merged with the other updates: it shares a variable" in n]
    assert len(shared) == 1 and ("(updates v0, w0)" in shared[0] or "(updates other)" in shared[0])
    assert any("(updates column_added) not merged with the other updates: operand" in n
               and "of shape (3, 1) broadcasts to (3, 4)" in n for n in notes)
    # a (1, 4) row, a (4,) vector: fewer elements than the matrix, each read for every row
    assert any("(updates matrix) not merged" in n and "of shape (1, 4) broadcasts" in n for n in notes)
    assert any("(updates bias_added) not merged" in n and "of shape (4,) broadcasts" in n for n in notes)


def test_an_update_read_elsewhere_is_no_member():
    g, feeds = updates_graph([(5,), (6,), (7,)])
    w0 = next(n for n in g.nodes if g.nodes[n]["op"] == "variable" and g.nodes[n]["attrs"]["name"] == "w0")
    g.graph["outputs"] = [g.graph["updates"][w0]]  # the new w0 is also a result of the step
    merged = fuse_updates(fuse_elementwise(g))
    node = next(merged.nodes[n] for n in merged.nodes if merged.nodes[n]["op"] == "fused_updates")
    assert len(node["attrs"]["members"]) == 3  # w1's, w2's steps and the counter; w0's keeps its kernel
    assert ops_of(merged).count("fused") == 1


def test_a_backend_without_the_capability_keeps_every_update_kernel(monkeypatch):
    from kcompiler.codegen.cuda.backend import BACKEND as cuda
    assert not cuda.capabilities().merges_updates
    capabilities = llvm_backend.BACKEND.capabilities()
    monkeypatch.setattr(llvm_backend.BACKEND, "capabilities",
                        lambda: dataclasses.replace(capabilities, merges_updates=False))
    g, feeds = updates_graph(SHAPES)
    stages = run_and_compare(g, feeds)
    assert "fused_updates" not in ops_of(stages["fused"])
    assert ops_of(stages["fused"]).count("fused") == len(SHAPES)


def adam_mlp():
    backend.clear_session()
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((9,)), keras.layers.Dense(13, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_training_with_merged_updates_is_bit_for_bit_that_with_a_kernel_each(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.random((6, 9), dtype=np.float32), rng.integers(0, 3, 6).astype(np.int32)

    def train():
        model = adam_mlp()
        program = kcompiler.compile(model, training=True, batch_size=6)
        for _ in range(3):
            program.train_step(x, y)
        return program, [w.tobytes() for w in model.get_weights()] + [
            v.numpy().tobytes() for v in model.optimizer.variables]

    merged_program, merged = train()
    assert "fused_updates" in ops_of(merged_program.stages["fused"])
    capabilities = llvm_backend.BACKEND.capabilities()
    monkeypatch.setattr(llvm_backend.BACKEND, "capabilities",
                        lambda: dataclasses.replace(capabilities, merges_updates=False))
    separate_program, separate = train()
    assert "fused_updates" not in ops_of(separate_program.stages["fused"])
    assert merged == separate
