"""The comparison runner's own arithmetic (benchmarks/): FLOPs counted from the IR against
counts made by hand from the layer shapes, the timing windows' bookkeeping, the residual CNN's
definition, and the GPU loss check's tolerance (with the CPU standing in for the GPU)."""
import dataclasses
import os
import time

import pytest

import kcompiler
from benchmarks.common import timed_windows
from kcompiler.flops import graph_flops, kernel_bytes, kernel_flops
from benchmarks.workloads import DEEP_WORKLOADS, WORKLOADS


def _conv_stack_forward(batch, size, channels):
    """Multiply-adds x 2 of W2/W3's layers, plus one FLOP per bias and ReLU element."""
    flops, side, cin = 0, size, channels
    for cout, pool in ((32, True), (64, True), (64, False)):
        side -= 2
        out = batch * side * side * cout
        flops += 2 * out * 9 * cin + 2 * out  # conv, then bias_add and relu
        cin = cout
        if pool:
            flops += out  # max pooling reads every element once
            side //= 2
    dense_in = side * side * cin
    return flops + 2 * batch * dense_in * 64 + 2 * batch * 64 + 2 * batch * 64 * 10 + batch * 10


@pytest.mark.parametrize("name, size, channels", [("W2", 28, 1), ("W3", 32, 3)])
def test_conv_stack_inference_flops_match_the_layer_shapes(name, size, channels):
    w = WORKLOADS[name]
    program = kcompiler.compile(w.build(), batch_size=3)
    assert graph_flops(program.graph) == _conv_stack_forward(3, size, channels)
    assert sum(kernel_flops(program.graph, k) for k in program.kernels) == graph_flops(program.graph)
    assert all(kernel_bytes(program.graph, k) > 0 for k in program.kernels)


def test_training_counts_both_convolution_gradients_and_the_lstm_gradient():
    w = WORKLOADS["W4"]
    train = kcompiler.compile(w.build(), training=True, batch_size=2)
    ops = {train.graph.nodes[n]["op"]: n for n in train.graph.nodes}
    from kcompiler.flops import node_flops
    from kcompiler.options import default_options
    forward = 2 * 2 * 200 * (16 + 64) * 4 * 64  # batch 2, 200 steps, (features + units) x 4 gates x units
    assert node_flops(train.graph, ops["lstm"]) == forward
    assert node_flops(train.graph, ops["lstm_grad"]) == 2 * forward
    w2 = kcompiler.compile(WORKLOADS["W2"].build(), training=True, batch_size=2)
    def heads(op, attrs):  # fused or not, paired or not
        if op == "fused_conv2d_grads":
            return heads(**attrs["input_grad"]) + heads(**attrs["kernel_grad"])
        return [attrs.get("head", op)]  # a fused head's, else the op's own

    nodes = [w2.graph.nodes[n] for n in w2.graph.nodes]
    found = [head for node in nodes for head in heads(node["op"], node.get("attrs", {}))]
    assert found.count("conv2d_backward_kernel") == 3 and found.count("conv2d_backward_input") == 2
    assert graph_flops(w2.graph) > 2.5 * _conv_stack_forward(2, 28, 1)
    # a pair of gradients counts as the two kernels it replaces
    unpaired = kcompiler.compile(WORKLOADS["W2"].build(), training=True, batch_size=2,
                                 options=default_options().replace(winograd="off"))
    assert not any(unpaired.graph.nodes[n]["op"] == "fused_conv2d_grads" for n in unpaired.graph.nodes)
    assert any(node["op"] == "fused_conv2d_grads" for node in nodes)
    assert graph_flops(unpaired.graph) == graph_flops(w2.graph)


def test_timed_windows_reports_every_window_and_the_median():
    calls = []
    result = timed_windows(lambda: calls.append(1), windows=3, window_s=0.001, warmup=2, retries=0)
    assert len(result["windows"]) == 3
    assert all(w["calls"] >= 3 and w["other_load"] >= 0 and w["load_before"] is None for w in result["windows"])
    assert len(calls) == 2 + 2 + sum(w["calls"] for w in result["windows"])  # warm-up, estimate, windows
    medians = sorted(w["median"] for w in result["windows"])
    assert result["seconds"] == medians[1] and result["fastest"] == medians[0]


def test_each_window_follows_untimed_settling_calls():
    calls = []
    result = timed_windows(lambda: calls.append(1), windows=2, window_s=0.001, warmup=0, retries=0, settle_s=0.02)
    timed = sum(w["calls"] for w in result["windows"])
    assert len(calls) > 2 + timed + 2  # the estimate, the windows, and at least one settling call before each
    calls.clear()
    result = timed_windows(lambda: calls.append(1), windows=2, window_s=0.001, warmup=0, retries=0)
    assert len(calls) == 2 + sum(w["calls"] for w in result["windows"])


def test_after_a_far_reading_the_placement_must_read_near_twice(monkeypatch):
    from benchmarks import common
    from benchmarks.common import PlacementProbe
    monkeypatch.setattr(common.time, "sleep", lambda s: None)
    answers = [420, 120, 400, 130, 125, 999]
    probe = PlacementProbe(lambda: answers.pop(0), 250.0, 30.0, 120.0)
    assert probe.wait_near() == 125 and answers == [999]  # 120 followed a far reading, 130 too; 125 followed 130
    answers[:] = [110, 999]
    assert probe.wait_near() == 110  # near at once: no second reading


class _Placement:
    """A PlacementProbe that answers the given round trips in turn (ns; 250 is the limit)."""

    def __init__(self, answers):
        self.answers, self.waits = list(answers), 0

    def measure(self):
        return self.answers.pop(0)

    def far(self, ns):
        return ns is not None and ns > 250

    def wait_near(self):
        self.waits += 1
        return self.measure()


def test_a_window_after_which_the_cpus_were_far_apart_is_redone_then_flagged():
    # window 1: near before and after; window 2: far after (redone, near); window 3: far after both tries
    probe = _Placement([120, 130, 125, 420, 110, 118, 130, 400, 120, 390])
    result = timed_windows(lambda: None, windows=3, window_s=0.001, warmup=0, retries=1, placement=probe,
                           max_other_load=float("inf"))  # (the other tests' load must not redo a window here)
    assert [w["round_trip_ns"] for w in result["windows"]] == [[120, 130], [110, 118], [120, 390]]
    assert [w["flagged"] for w in result["windows"]] == [False, False, True]
    assert probe.waits == 5 and not probe.answers


def test_the_placement_probe_answers_over_its_socket_and_turns_off_without_one(tmp_path):
    from benchmarks.common import PlacementProbe
    from benchmarks.placement import Server
    server = Server(str(tmp_path / "probe.sock"))
    try:
        probe = PlacementProbe.over_socket(server.path, 1e9)
        ns = probe.measure()
        assert ns is None if len(os.sched_getaffinity(0)) < 2 else 0 < ns < 1e6
        start = time.monotonic()
        assert (probe.wait_near() is None) == (ns is None)
        assert time.monotonic() - start < 1.0  # near by this limit: no waiting
    finally:
        server.close()
    assert PlacementProbe.over_socket(str(tmp_path / "missing.sock")).measure() is None


def test_residual_cnn_has_20_convolutions_batch_norm_and_residual_adds():
    model = DEEP_WORKLOADS["R20"].make_model()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") >= 20
    assert kinds.count("BatchNormalization") == kinds.count("Conv2D")
    assert kinds.count("Add") == 9
    assert "R20" not in WORKLOADS  # the tests that compile every workload leave it out


def test_transformer_and_mobilenet_workloads_and_their_flops():
    from kcompiler.flops import node_flops
    from kcompiler.options import default_options
    from kcompiler.pipeline import front_stages
    from kcompiler import keras
    # the fused attention op (sequences from length 512; TX's 128 take the batched GEMMs)
    inputs = keras.Input((512, 8))
    y = keras.layers.MultiHeadAttention(2, 4)(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(y)))
    model.compile(optimizer="sgd", loss="mse")
    g = front_stages(model, training=True, batch_size=2)["differentiated"]
    counted = {g.nodes[n]["op"]: node_flops(g, n) for n in g.nodes if g.nodes[n]["op"] in ("attention", "attention_grad")}
    forward = 2 * 2 * 2 * 512 * 512 * (4 + 4)   # 2·B·H·T·S·(D + Dv)
    assert counted == {"attention": forward, "attention_grad": 2 * forward}
    tx = front_stages(DEEP_WORKLOADS["TX"].build(), training=True, batch_size=2)["differentiated"]
    assert sum(node_flops(tx, n) for n in tx.nodes) > 0
    kinds = [type(layer).__name__ for layer in DEEP_WORKLOADS["MN"].make_model().layers]
    assert "DepthwiseConv2D" in kinds and "SeparableConv2D" in kinds and "TX" not in WORKLOADS and "MN" not in WORKLOADS


def _cell(seconds, load=0.0):
    return {"seconds": seconds, "fastest": seconds,
            "windows": [{"median": seconds, "calls": 3, "other_load": load, "load_before": None, "flagged": load > 0.3}]}


def _results():
    from benchmarks.compare_peers import summarise
    kc = {"cells": {"predict": _cell(1e-5), "train_step": _cell(1e-5), "predict_on_batch": _cell(2e-5),
                    "train_on_batch": _cell(4e-5)}, "flops": {"train": 1255, "predict": 465}}
    slower_kc = {"cells": {k: _cell(2 * v["seconds"], load=1.0) for k, v in kc["cells"].items()}, "flops": kc["flops"]}
    tf = {"cells": {"predict_on_batch": _cell(5e-4), "tf_function": _cell(4e-4), "train_on_batch": _cell(1e-3)}}
    samples = {"W1": {"kc_fused": [slower_kc, kc], "tf": [tf]}}
    machine = {"cpu_model": "test CPU", "llvm_cpu": "generic", "nproc": 2, "fma_peak_1": {"gflops": 50, "lanes": 8},
               "fma_peak_all": {"gflops": 100, "lanes": 8}, "sgemm": {"kcompiler_gflops": 80, "numpy_gflops": 90},
               "copy_gbs": 10.0, "cycle_hz": 2e9, "llvmlite": "0", "numpy": "0"}
    return {"date": "2026-12-03", "machine": machine, "versions": {"Python (kcompiler)": "3", "tensorflow": "TF 0"},
            "kcompiler_version": "0", "samples": samples, "errors": [], "table": summarise(samples), "cold": {},
            "profiles": {}, "settings": {"quick": False, "rounds": 2, "windows": 1, "window_s": 0.5, "warmup": 3,
                                         "quiet_wait": 120, "quiet_budget": 600, "retries": 1, "profile_steps": 20}}


def test_comparison_keeps_the_fastest_process_and_divides_by_the_fastest_peer():
    from benchmarks.compare_peers import markdown
    text = markdown(_results(), "chart.png")
    # kcompiler's faster process (10 µs) against TF's train_on_batch (1 ms) and tf.function (0.4 ms)
    assert "| W1 tiny MLP, batch 5 | 0.0100 (0.0100) | — | 1.00 (0.400) | — | — | — | 100x (40x) |" in text
    assert "W1 train vs fastest peer (through train_on_batch / predict_on_batch): 25.00x (target >= 20x: met)" in text
    assert "4 window(s) stayed flagged after the retries" in text  # the slower process's four cells


def test_compile_depth_table_and_its_target_line():
    from benchmarks.bench_compile_time import per_convolution_growth
    from benchmarks.compare_peers import depth_lines, target_lines
    rows = [{"depth": d, "kernels": 2 * d, "units": 25, "cold_s": s, "support_s": 0.9, "warm_s": 0.2}
            for d, s in ((5, 1.1), (10, 1.2), (20, 1.9), (40, 6.0))]
    assert per_convolution_growth(rows) == (6.0 / 40) / (1.2 / 10)  # 1.25
    assert per_convolution_growth(rows[:2]) is None
    table = depth_lines(rows)
    assert "| 40 | 80 | 25 | 6.00 | 0.150 | 0.90 | 0.200 |" in table and depth_lines([]) == []

    def target(rows):
        results = {"table": {}, "cold": {}, "compile_depths": rows,
                   "machine": {"fma_peak_all": {"gflops": 200.0}, "sgemm": {"kcompiler_gflops": 180.0}}}
        return [line for line in target_lines(results) if "per convolution" in line]

    slower = [dict(r, cold_s=8.0) if r["depth"] == 40 else r for r in rows]  # 0.2 s against 0.12: 1.67x
    faster = [dict(r, cold_s=4.0) if r["depth"] == 40 else r for r in rows]  # 0.1 s against 0.12: 0.83x
    assert target(slower) == ["- Compile time per convolution at 40 layers: 1.67x that at 10 (target <= 1.25x: "
                              "not met)"]
    assert target(faster) == ["- Compile time per convolution at 40 layers: 0.83x that at 10 (target <= 1.25x: met)"]
    assert target([]) == []


def test_docs_section_replaces_the_marked_one_and_keeps_the_rest(tmp_path):
    from benchmarks.compare_peers import write_docs
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nintro\n\n## Older results\n\nkept\n")
    write_docs(str(path), "<!-- compare_peers: begin -->\nfirst\n<!-- compare_peers: end -->\n")
    write_docs(str(path), "<!-- compare_peers: begin -->\nsecond\n<!-- compare_peers: end -->\n")
    text = path.read_text()
    assert "first" not in text and text.count("second") == 1
    assert text.index("intro") < text.index("second") < text.index("## Older results") < text.index("kept")


def test_gpu_loss_check_passes_rounding_and_catches_a_wrong_update(monkeypatch):
    """bench_cuda's W2 loss check (run on a GPU by scripts/gpu-check), with the CPU backend
    standing in for the device: the CPU against itself passes, and a 'device' whose Adam steps
    are 1 % too long fails."""
    from benchmarks import bench_cuda
    monkeypatch.setattr(bench_cuda, "LOSS_STEPS", 6)
    assert bench_cuda.w2_losses("cpu")["passed"]

    losses = bench_cuda._losses

    def with_a_wrong_update(workload, weights, target, nudge_seed=None):
        if target == "wrong":
            workload = dataclasses.replace(workload, optimizer=lambda: kcompiler.keras.optimizers.Adam(1.01e-3))
            target = "cpu"
        return losses(workload, weights, target, nudge_seed)

    monkeypatch.setattr(bench_cuda, "_losses", with_a_wrong_update)
    result = bench_cuda.w2_losses("wrong")
    assert not result["passed"], result["detail"]
