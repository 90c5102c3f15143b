"""Pass tests: a graph before, the graph expected after, compared structurally."""
import numpy as np

from kcompiler.ir.graph import GraphBuilder, operands
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.passes.fusion import fuse_elementwise
from kcompiler.passes.memory_plan import plan_memory
from kcompiler.passes.simplify import simplify


def ops_of(g):
    return sorted(g.nodes[n]["op"] for n in g.nodes)


def chain_graph():
    """x @ w -> bias_add -> relu -> mul 2 -> output; plus a dead branch exp(x)."""
    b = GraphBuilder(name="chain")
    x = b.input("x", TensorType((4, 3)))
    w = b.input("w", TensorType((3, 5)))
    bias = b.input("bias", TensorType((5,)))
    y = b.op("mul", b.op("relu", b.op("bias_add", b.op("matmul", x, w), bias)), b.scalar(2.0))
    b.op("exp", x)  # dead
    b.g.graph["outputs"] = [y]
    return b.g


def test_simplify_removes_dead_nodes_but_keeps_inputs():
    g = simplify(chain_graph())
    assert "exp" not in ops_of(g)
    assert ops_of(g).count("input") == 3


def test_simplify_drops_transposes_that_undo_each_other():
    """NCHW -> NHWC, relu, back to NCHW, to NHWC again (the pair between two channels_first
    layers), exp, then two transposes that do not undo each other and an identity one (kept)."""
    b = GraphBuilder(name="layouts")
    x = b.input("x", TensorType((2, 3, 4, 5)))
    nhwc = b.op("relu", b.op("transpose", x, perm=(0, 2, 3, 1)))
    again = b.op("transpose", b.op("transpose", nhwc, perm=(0, 3, 1, 2)), perm=(0, 2, 3, 1))
    y = b.op("transpose", b.op("exp", again), perm=(0, 1, 2, 3))
    z = b.op("transpose", b.op("transpose", y, perm=(0, 3, 1, 2)), perm=(0, 1, 3, 2))
    b.g.graph["outputs"] = [z]
    before = b.g
    after = simplify(before)
    perms = sorted(after.nodes[n]["attrs"]["perm"] for n in after.nodes if after.nodes[n]["op"] == "transpose")
    assert perms == sorted([(0, 2, 3, 1), (0, 1, 2, 3), (0, 3, 1, 2), (0, 1, 3, 2)])  # all but the pair
    exp = next(n for n in after.nodes if after.nodes[n]["op"] == "exp")
    assert after.nodes[operands(after, exp)[0]]["op"] == "relu"
    feeds = {"x": np.random.rand(2, 3, 4, 5).astype(np.float32)}
    np.testing.assert_array_equal(run_reference(after, feeds)[0][0], run_reference(before, feeds)[0][0])


def test_elementwise_chain_becomes_one_fused_node_after_the_matmul():
    before = simplify(chain_graph())
    after = fuse_elementwise(before)
    assert ops_of(after) == ["fused", "input", "input", "input", "matmul"]
    fused = next(n for n in after.nodes if after.nodes[n]["op"] == "fused")
    assert after.nodes[fused]["fused"] == ["bias_add", "relu", "mul"]
    assert [after.nodes[u]["op"] for u in operands(after, fused)] == ["matmul", "input"]
    assert after.graph["outputs"] == [fused]
    feeds = {"x": np.random.rand(4, 3).astype(np.float32), "w": np.random.rand(3, 5).astype(np.float32),
             "bias": np.random.rand(5).astype(np.float32)}
    np.testing.assert_allclose(run_reference(after, feeds)[0][0], run_reference(before, feeds)[0][0], rtol=1e-6)


def test_a_value_used_outside_its_group_is_an_extra_output_and_shape_changes_stop_fusion():
    b = GraphBuilder(name="fanout")
    x = b.input("x", TensorType((4, 3)))
    t = b.op("tanh", x)
    s = b.op("sum", t, axes=(1,), keepdims=False)   # a reduction consumes t: t must be materialised
    y = b.op("mul", t, t)
    b.g.graph["outputs"] = [y, s]
    g = fuse_elementwise(b.g)
    fused = [n for n in g.nodes if g.nodes[n]["op"] == "fused"]
    assert len(fused) == 1 and g.nodes[fused[0]]["fused"] == ["tanh", "mul"]
    assert isinstance(g.nodes[fused[0]]["type"], tuple)  # tanh and mul both leave the node


def test_memory_plan_reuses_bytes_of_dead_tensors_and_never_overlaps_live_ones():
    b = GraphBuilder(name="plan")
    x = b.input("x", TensorType((256,)))
    values = [x]
    for _ in range(6):  # a chain: each value dies once the next exists
        values.append(b.op("sum", b.op("broadcast_to", values[-1], shape=(2, 256)), axes=(0,), keepdims=False))
    b.g.graph["outputs"] = [values[-1]]
    g = plan_memory(b.g)
    plan = g.graph["plan"]
    arena = [v for v in plan["buffers"].values() if v[0] == "arena"]
    assert sum(v[2] for v in arena) > plan["arena_bytes"]  # bytes are shared
    for n in plan["order"]:  # a kernel's output never overlaps one of its live operands
        out = plan["buffers"][(n, 0)]
        for u in operands(g, n):
            src = plan["buffers"][plan["root"][(u, 0)]]
            if src[0] == "arena":
                assert out[1] + out[2] <= src[1] or src[1] + src[2] <= out[1], (n, u)


def test_fusion_refuses_a_producer_whose_other_consumer_feeds_the_group():
    b = GraphBuilder(name="cycle")
    x = b.input("x", TensorType((4, 3)))
    t = b.op("tanh", x)
    s = b.op("sum", t, axes=(1,), keepdims=True)
    y = b.op("exp", b.op("mul", t, s))
    b.g.graph["outputs"] = [y]
    g = fuse_elementwise(b.g)
    assert any("form a cycle" in note for note in g.graph["notes"])
    import networkx as nx
    assert nx.is_directed_acyclic_graph(g)
    feeds = {"x": np.random.rand(4, 3).astype(np.float32)}
    np.testing.assert_allclose(run_reference(g, feeds)[0][0], run_reference(b.g, feeds)[0][0], rtol=1e-6)
