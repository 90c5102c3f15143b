"""State updates computed in their variables' own buffers (passes/memory_plan.py): chosen only
where no later kernel reads the old value and no later kernel can fail; the training they do
is bit for bit that of copying the updates at the end of the step; a failed step still
changes nothing."""
import re

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.errors import IndexRangeError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend
from kcompiler.keras.variables import Variable
from kcompiler.passes import memory_plan
from kcompiler.passes.memory_plan import plan_memory


def update_graph(later=None):
    """v_new = v + x as a one-member fused kernel, the state update of variable v; ``later``
    (b, v, x) may add nodes after it."""
    b = GraphBuilder(name="update")
    v = b.variable(Variable(np.zeros(4, np.float32), name="v"))
    x = b.input("x", TensorType((4,)))
    new = b.add("fused", [v, x], {"body": [{"op": "add", "attrs": {}, "args": [["in", 0], ["in", 1]]}],
                                  "outputs": [0]})
    b.g.graph["updates"] = {v: new}
    b.g.graph["outputs"] = [later(b, v, x)] if later is not None else []
    return b.g, v, new


def test_an_update_is_computed_in_its_variables_buffer_when_nothing_reads_it_afterwards():
    g, v, new = update_graph()
    planned = plan_memory(g, in_place_updates=True)
    plan = planned.graph["plan"]
    assert plan["in_place"] == {v: (new, 0)}
    assert f"update of %{v} computed in its buffer by %{new} fused: saves a 16-byte copy and its arena bytes" \
        in planned.graph["notes"]
    assert plan["root"][(new, 0)] == (v, 0)
    assert plan_memory(g, in_place_updates=True).nodes[new]["attrs"]["in_place"] == {0: 0}
    assert "in_place" not in g.nodes[new]["attrs"]  # the planned stage's copy, not the input graph
    assert plan_memory(g).graph["plan"]["in_place"] == {}  # only where the backend declares it


def test_no_update_in_place_when_a_later_kernel_reads_the_old_value():
    g, v, new = update_graph(lambda b, v, x: b.op("exp", v))
    planned = plan_memory(g, in_place_updates=True)
    assert planned.graph["plan"]["in_place"] == {}
    assert f"update of %{v} by %{new} fused not computed in place: %{new + 1} exp reads the old value after it" \
        in planned.graph["notes"]


def test_no_update_in_place_when_a_later_kernel_can_fail():
    def label_check(b, v, x):
        labels = b.input("labels", TensorType((4,), "int32"))
        return b.op("check_index", labels, num_classes=3)
    g, v, new = update_graph(label_check)
    plan = plan_memory(g, in_place_updates=True).graph["plan"]
    assert plan["order"].index(new) < plan["order"].index(max(plan["order"]))  # the check runs later
    assert plan["in_place"] == {}
    assert any("check_index, which can fail, runs after it" in n for n in plan_memory(g, True).graph["notes"])


def mlp(seed=3):
    backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def train(model, steps=3):
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 12), dtype=np.float32), rng.integers(0, 3, 8).astype(np.int32)
    program = kcompiler.compile(model, training=True, batch_size=8)
    for _ in range(steps):
        program.train_step(x, y)
    return program, [w.copy() for w in model.get_weights()] + [v.numpy().copy() for v in model.optimizer.variables]


def test_training_with_updates_in_place_is_bit_for_bit_that_with_copies(monkeypatch):
    program, in_place = train(mlp())
    g = program.stages["planned"]
    plan = g.graph["plan"]
    # every weight's and every momentum's update is computed in place (the kernel of the updates, or
    # the epilogue of a weight gradient's product, which then has an output of its own), and the
    # optimizer's step counter too (an add, merged into the kernel of the updates: fused_updates)
    copied = [var for var, value in g.graph["updates"].items()
              if var not in plan["in_place"] and plan["root"][(var, 0)] != plan["root"][(value, 0)]]
    assert len(plan["in_place"]) == 13 and copied == []
    monkeypatch.setattr(memory_plan, "_in_place_updates", lambda g, order, root: ({}, []))
    program, copied = train(mlp())
    assert program.stages["planned"].graph["plan"]["in_place"] == {}
    for a, b in zip(in_place, copied):
        assert a.tobytes() == b.tobytes()


def test_a_failed_step_with_updates_in_place_changes_nothing():
    backend.clear_session()
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 4),
                              keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 10, (8, 3)).astype(np.int32), (rng.random((8, 1)) > 0.5).astype(np.float32)
    model.train_on_batch(x, y)
    program = kcompiler.compile(model, training=True, batch_size=8)
    assert program.stages["planned"].graph["plan"]["in_place"]  # the case this test is about
    before = [w.tobytes() for w in model.get_weights()] + [v.numpy().tobytes() for v in model.optimizer.variables]
    x[5, 1] = 12
    with pytest.raises(IndexRangeError, match=re.escape("id 12 is outside [0, 10)")):
        model.train_on_batch(x, y)
    after = [w.tobytes() for w in model.get_weights()] + [v.numpy().tobytes() for v in model.optimizer.variables]
    assert after == before
