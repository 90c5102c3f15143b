"""kcompiler.report without a browser: the data it collects, the drawings, the page's
self-containedness, the command line on both targets. The browser test (test_report_browser.py)
opens the MNIST CNN's page."""
import json
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import kcompiler
from examples.seed_models import tiny_mlp
from kcompiler import keras
from kcompiler.cli import main
from kcompiler.report.collect import _elide, collect, phases
from kcompiler.report.draw import draw_layered
from kcompiler.report.page import render

SVG = "{http://www.w3.org/2000/svg}"


def compiled_mlp():
    model = tiny_mlp()
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.fixture(scope="module")
def mlp_data():
    keras.utils.set_random_seed(0)
    model = compiled_mlp()
    before = [w.copy() for w in model.get_weights()]
    data = collect(model, batch_size=5, steps=2, peak_gflops=100.0)
    return model, before, data


def page_data(html):
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def test_training_step_data(mlp_data):
    model, before, data = mlp_data
    assert [s["name"] for s in data["stages"]] == ["traced", "shaped", "differentiated", "fused", "planned",
                                                    "scheduled"]
    assert data["settings"]["training"] and data["settings"]["batch_size"] == 5
    # the stages after fusion share one drawing; the earlier ones have their own
    svg_of = {s["name"]: s["svg"] for s in data["stages"]}
    assert svg_of["fused"] == svg_of["planned"] == svg_of["scheduled"] != svg_of["differentiated"]
    program = kcompiler.compile(model, training=True, batch_size=5)
    assert [k["name"] for k in data["kernels"]] == [k.name for k in program.kernels]
    for k in data["kernels"]:
        assert k["seconds"] > 0 and k["bytes"] >= 0 and k["language"] == "llvm" and "define" in k["source"]
        assert k["peak_fraction"] == pytest.approx(k["flops"] / k["seconds"] / 1e9 / 100.0)
    assert set(data["comparison"]) == {"fused", "unfused"}
    assert data["comparison"]["fused"]["kernels"] == len(program.kernels) < data["comparison"]["unfused"]["kernels"]
    # every kernel node of the last stage names its kernel and carries its description
    last = {n["id"]: n for n in data["stages"][-1]["nodes"]}
    for k in data["kernels"]:
        assert last[k["nodes"][0]]["kernel"] == k["name"]
    assert any("description" in n for n in last.values())
    assert "Total params" in data["model"]["summary"]


def test_report_leaves_the_model_as_it_was(mlp_data):
    model, before, _ = mlp_data
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_memory_plan_lifetimes_never_share_bytes(mlp_data):
    """Buffers alive at the same kernel occupy disjoint arena bytes."""
    _, _, data = mlp_data
    buffers = data["memory"]["buffers"]
    assert buffers
    for b in buffers:
        assert 0 <= b["first"] <= b["last"] <= data["memory"]["kernels"]
        assert b["offset"] + b["size"] <= data["memory"]["arena_bytes"]
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a["first"] <= b["last"] and b["first"] <= a["last"]:
                assert a["offset"] + a["size"] <= b["offset"] or b["offset"] + b["size"] <= a["offset"], (a, b)


def test_phases_split_forward_from_backward():
    model = compiled_mlp()
    program = kcompiler.compile(model, training=True, batch_size=5)
    g = program.stages["differentiated"]
    phase = phases(g)
    loss = g.graph["outputs"][0]
    assert phase[loss] == "forward"
    for var, value in g.graph["updates"].items():
        assert phase[var] == "param" and phase[value] == "backward"
    assert "backward" not in {phase[n] for n in program.stages["shaped"].nodes}
    assert {phases(program.stages["fused"])[n] for n in program.stages["fused"].nodes} <= {"param", "forward",
                                                                                           "backward"}


def test_layered_drawing_has_every_node_and_edge():
    model = compiled_mlp()
    g = kcompiler.compile(model, training=True, batch_size=5).stages["fused"]
    svg = ET.fromstring(draw_layered(g, phases(g)))
    ids = {e.get("id") for e in svg.iter(f"{SVG}g") if e.get("class") == "node"}
    assert ids == {f"node-{n}" for n in g.nodes}
    assert sum(1 for e in svg.iter(f"{SVG}path") if e.get("class") == "edge") == g.number_of_edges()
    fused = next(n for n in g.nodes if g.nodes[n].get("fused"))
    box = next(e for e in svg.iter(f"{SVG}g") if e.get("id") == f"node-{fused}")
    text = " ".join(t.text for t in box.iter(f"{SVG}text"))
    assert all(op in text for op in g.nodes[fused]["fused"])


@pytest.mark.skipif(not shutil.which("dot"), reason="Graphviz's dot is not installed (the layered drawing is used)")
def test_graphviz_drawing_has_every_node():
    pytest.importorskip("graphviz")
    from kcompiler.report.draw import draw
    g = kcompiler.compile(compiled_mlp(), training=True, batch_size=5).stages["fused"]
    svg = ET.fromstring(draw(g, phases(g)))
    ids = {e.get("id") for e in svg.iter(f"{SVG}g") if e.get("class") == "node"}
    assert ids == {f"node-{n}" for n in g.nodes}


def test_page_is_self_contained(mlp_data):
    html = render(mlp_data[2])
    assert page_data(html) == json.loads(json.dumps(mlp_data[2]))
    assert not re.search(r"<(link|img|iframe)\b|<script[^>]*\bsrc=|url\(\s*['\"]?(https?:)?//", html)
    # the only addresses in the page are XML namespace names (never fetched)
    assert set(re.findall(r"https?://[^\s\"'<>)\\]+", html)) <= {"http://www.w3.org/2000/svg",
                                                                "http://www.w3.org/1999/xlink"}


def test_script_end_tags_in_sources_cannot_end_the_data():
    data = {"model": {"name": "m</script><b>", "summary": ""}, "text": "</script>"}
    html = render(data)
    assert page_data(html) == data
    assert "m&lt;/script&gt;&lt;b&gt;" in html


def test_long_sources_are_elided_in_the_middle():
    source = "".join(f"line {i}\n" for i in range(10_000))
    short = _elide(source, limit=1000)
    assert len(short) < 1200 and short.startswith("line 0\n") and short.endswith("line 9999\n")
    assert "lines elided" in short
    assert _elide("small\n", limit=1000) == "small\n"


def test_command_line_writes_the_report(tmp_path, capsys):
    out = tmp_path / "mlp.html"
    assert main(["report", "examples.seed_models:tiny_mlp", "-o", str(out), "--batch-size", "4", "--steps", "1",
                 "--no-compare"]) == 0
    data = page_data(out.read_text())
    assert not data["settings"]["training"] and data["comparison"] is None
    assert [s["name"] for s in data["stages"]] == ["traced", "shaped", "fused", "planned", "scheduled"]
    assert str(out) in capsys.readouterr().out


def test_command_line_training_step_of_a_model_file(tmp_path):
    """--training restores the file's optimizer and loss and reports the whole step."""
    compiled_mlp().save(str(tmp_path / "mlp.keras"))
    out = tmp_path / "train.html"
    main(["report", str(tmp_path / "mlp.keras"), "--training", "-o", str(out), "--batch-size", "4", "--steps", "1",
          "--no-compare"])
    data = page_data(out.read_text())
    assert data["settings"]["training"] and "differentiated" in [s["name"] for s in data["stages"]]


def test_command_line_training_needs_a_compiled_model(tmp_path):
    with pytest.raises(SystemExit, match="--training needs a model compiled with an optimizer and a loss"):
        main(["report", "examples.seed_models:tiny_mlp", "-o", str(tmp_path / "r.html"), "--training"])


@pytest.mark.skipif(not shutil.which("g++"), reason="the CUDA emulation needs g++")
def test_cuda_target_shows_the_cuda_source(tmp_path):
    out = tmp_path / "cuda.html"
    main(["report", "examples.seed_models:tiny_mlp", "-o", str(out), "--batch-size", "4", "--target", "cuda"])
    data = page_data(out.read_text())
    assert data["settings"]["target"] == "cuda" and data["kernels"]
    for k in data["kernels"]:
        assert k["language"] == "cuda" and "__global__" in k["source"] and "seconds" not in k


def test_given_inputs_are_profiled_with_synthetic_labels():
    model = compiled_mlp()
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    data = collect(model, x, steps=1, compare=False, peak_gflops=1.0)
    assert data["settings"]["training"] and data["settings"]["batch_size"] == 3
    assert all(k["seconds"] > 0 for k in data["kernels"])


def test_profile_needs_the_profile_option():
    program = kcompiler.compile(compiled_mlp(), batch_size=2)
    program.predict(np.zeros((2, 4), np.float32))
    with pytest.raises(kcompiler.errors.KCompilerError, match="KCOMPILER_PROFILE=1"):
        program.profile()
