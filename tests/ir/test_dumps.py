"""IR dumps: every seed model lists every op with its shape; json and dot forms; the CLI."""
import json
import shutil
import subprocess

import networkx as nx
import pytest

import kcompiler
from examples import seed_models
from kcompiler.cli import main as cli_main
from kcompiler.keras import backend


@pytest.mark.parametrize("make", seed_models.ALL, ids=lambda f: f.__name__)
def test_text_dump_lists_every_op_with_its_shape(make):
    backend.clear_session()
    program = kcompiler.compile(make())
    assert list(program.stages) == ["traced", "shaped"]
    text = program.dump(stage="traced")
    g = program.stages["traced"]
    op_lines = [l for l in text.splitlines() if l.startswith("  %")]
    assert len(op_lines) == g.number_of_nodes()
    for nid in g.nodes:
        line = next(l for l in op_lines if l.startswith(f"  %{nid} = "))
        assert str(g.nodes[nid]["type"]) in line if not isinstance(g.nodes[nid]["type"], tuple) else True
    assert "None" in text  # the symbolic batch dimension


def test_batch_size_specialises_the_shaped_stage():
    backend.clear_session()
    program = kcompiler.compile(seed_models.tiny_mlp(), batch_size=8)
    assert "float32[None, 4]" in program.dump(stage="traced")
    assert "float32[8, 4]" in program.dump() and "None" not in program.dump()


def test_json_dump_is_node_link_data():
    backend.clear_session()
    data = json.loads(kcompiler.dump_ir(seed_models.tiny_mlp(), fmt="json"))
    g = nx.node_link_graph(data, edges="edges")
    ops = [g.nodes[n]["op"] for n in g.nodes]
    assert ops.count("matmul") == 3 and ops.count("relu") == 2
    assert all("shape" in g.nodes[n] and "dtype" in g.nodes[n] for n in g.nodes)


def test_dot_dump_renders_with_graphviz_when_present(tmp_path):
    backend.clear_session()
    dot = kcompiler.dump_ir(seed_models.tiny_mlp(), fmt="dot")
    assert dot.startswith('digraph "sequential"') and "matmul" in dot
    if shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed")
    out = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
    assert "<svg" in out.stdout


def test_mul_of_a_tensor_with_itself_keeps_both_operands():
    from kcompiler import keras

    class Square(keras.layers.Layer):
        def call(self, x):
            return x * x

    backend.clear_session()
    g = kcompiler.compile(keras.Sequential([keras.Input((3,)), Square()])).graph
    mul = next(n for n in g.nodes if g.nodes[n]["op"] == "mul")
    assert g.in_degree(mul) == 2


def test_cli_prints_the_ir(capsys):
    backend.clear_session()
    assert cli_main(["ir", "examples.seed_models:tiny_mlp", "--stage", "traced"]) == 0
    assert "matmul" in capsys.readouterr().out


def test_benchmark_compares_fused_and_unfused(capsys):
    import numpy as np
    backend.clear_session()
    model = seed_models.tiny_mlp()
    results = kcompiler.benchmark(model, np.ones((8, 4), np.float32), steps=2)
    assert set(results) == {"unfused", "fused"}
    assert results["fused"]["kernels"] <= results["unfused"]["kernels"]
    assert results["fused"]["bytes_moved"] <= results["unfused"]["bytes_moved"]
    assert cli_main(["bench", "examples.seed_models:tiny_mlp", "--steps", "2", "--batch-size", "4"]) == 0
    assert "unfused" in capsys.readouterr().out
