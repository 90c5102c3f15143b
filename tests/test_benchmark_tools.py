"""The comparison runner's own arithmetic (benchmarks/): FLOPs counted from the IR against
counts made by hand from the layer shapes, the timing windows' bookkeeping, and the residual
CNN's definition."""
import pytest

import kcompiler
from benchmarks.common import timed_windows
from benchmarks.flops import graph_flops, kernel_bytes, kernel_flops
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
    from benchmarks.flops import node_flops
    forward = 2 * 2 * 200 * (16 + 64) * 4 * 64  # batch 2, 200 steps, (features + units) x 4 gates x units
    assert node_flops(train.graph, ops["lstm"]) == forward
    assert node_flops(train.graph, ops["lstm_grad"]) == 2 * forward
    w2 = kcompiler.compile(WORKLOADS["W2"].build(), training=True, batch_size=2)
    kinds = [w2.graph.nodes[n]["op"] for n in w2.graph.nodes]
    assert kinds.count("conv2d_backward_kernel") == 3 and kinds.count("conv2d_backward_input") == 2
    assert graph_flops(w2.graph) > 2.5 * _conv_stack_forward(2, 28, 1)


def test_timed_windows_reports_every_window_and_the_median():
    calls = []
    result = timed_windows(lambda: calls.append(1), windows=3, window_s=0.001, warmup=2)
    assert len(result["windows"]) == 3
    assert all(w["calls"] >= 3 and w["other_load"] >= 0 and w["load_before"] is None for w in result["windows"])
    assert len(calls) == 2 + 2 + sum(w["calls"] for w in result["windows"])  # warm-up, estimate, windows
    medians = sorted(w["median"] for w in result["windows"])
    assert result["seconds"] == medians[1] and result["fastest"] == medians[0]


def test_residual_cnn_has_20_convolutions_batch_norm_and_residual_adds():
    model = DEEP_WORKLOADS["R20"].make_model()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") >= 20
    assert kinds.count("BatchNormalization") == kinds.count("Conv2D")
    assert kinds.count("Add") == 9
    assert "R20" not in WORKLOADS  # the tests that compile every workload leave it out
