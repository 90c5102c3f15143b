"""The recurrent ops (simple_rnn, lstm, gru) compiled to LLVM: forward and backprop through
time against the numpy references, fused and unfused (op_check.check_compiled), over masks,
go_backwards, GRU reset_after both ways, initial states, dropout masks (D = 1 and D = gates),
output order, zero_output_for_mask and other activations; the loops split over batch rows
on several threads; every memory access checked against its buffer; and the Keras layer
fixtures running through the compiled kernels, forward (eager calls) and backward."""
import numpy as np
import pytest

import kcompiler.codegen.llvm.rnn as rnn_codegen
from keras_fixtures import indexed, load, make_layer
from kcompiler.ir.graph import operands as graph_operands
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend
from kcompiler.keras.layers.base import flatten
from kcompiler.keras.tensor import SymbolicTensor
from kcompiler.ops.rnn import GATES, reserve_floats
from kcompiler.passes.autodiff import gradients
from kcompiler.pipeline import lower_graph
from op_check import assert_close32, check_compiled

VARIANTS = [("simple_rnn", True), ("lstm", True), ("gru", True), ("gru", False)]  # (op, reset_after)
# sample 0 has a gap, sample 1 is masked at its first step (its outputs start as zeros)
MASK = np.array([[True, False, True, True], [False, True, True, False]])


def operands(op, batch=2, time=4, features=3, units=2, reset_after=True, masked=False, dropout=0, seed=0):
    """Random operands in operand order (non-zero initial states); dropout = D (0: no masks)."""
    rng = np.random.default_rng(seed)
    g = GATES[op]
    bias_shape = (2, 3 * units) if op == "gru" and reset_after else (g * units,)
    xs = [rng.standard_normal((batch, time, features)), rng.standard_normal((features, g * units)),
          rng.standard_normal((units, g * units)), rng.standard_normal(bias_shape),
          rng.standard_normal((batch, units))]
    if op == "lstm":
        xs.append(rng.standard_normal((batch, units)))
    if masked:
        xs.append(MASK if batch == 2 and time == 4 else rng.random((batch, time)) > 0.3)
    if dropout:
        keep = lambda shape: (rng.random(shape) > 0.3) / 0.7  # noqa: E731
        xs += [keep((dropout, batch, features)), keep((dropout, batch, units))]
    return [a.astype(np.float32) if a.dtype.kind == "f" else a for a in xs]


def attrs_for(op, reset_after=True, masked=False, dropout=0, units=2, **extra):
    attrs = {"units": units, "masked": masked, **extra}
    if op == "gru":
        attrs["reset_after"] = reset_after
    if dropout:
        attrs.update(dropout_mask=True, recurrent_dropout_mask=True)
    return attrs


@pytest.mark.parametrize("op,reset_after", VARIANTS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_matches_reference(op, reset_after, masked, go_backwards):
    xs = operands(op, reset_after=reset_after, masked=masked)
    check_compiled(op, xs, attrs_for(op, reset_after, masked, go_backwards=go_backwards))


@pytest.mark.parametrize("op,reset_after", VARIANTS)
@pytest.mark.parametrize("per_gate", [False, True])
def test_dropout_masks_output_order_and_zero_output(op, reset_after, per_gate):
    """D = 1 (one mask shared by the gates: one GEMM) and D = gates (a GEMM per gate)."""
    d = GATES[op] if per_gate else 1
    xs = operands(op, reset_after=reset_after, masked=True, dropout=d, seed=1)
    extra = (dict(output_in_time_order=True, go_backwards=True) if per_gate
             else dict(zero_output_for_mask=True, go_backwards=True))
    check_compiled(op, xs, attrs_for(op, reset_after, True, d, **extra))


@pytest.mark.parametrize("op,reset_after", VARIANTS)
def test_gradient_that_recomputes_its_forward_sweep(monkeypatch, op, reset_after):
    """Without the reserve pass (a gradient whose forward node is not in the graph, or a
    backend without the capability) the gradient kernel runs the forward sweep itself."""
    import kcompiler.pipeline
    monkeypatch.setattr(kcompiler.pipeline, "keep_recurrent_reserves", lambda g, ops: g)
    d = GATES[op]
    xs = operands(op, reset_after=reset_after, masked=True, dropout=d, seed=3)
    check_compiled(op, xs, attrs_for(op, reset_after, True, d, go_backwards=True))


def test_training_graph_keeps_the_forward_sweep_in_a_reserve():
    """On the CPU the pass gives the forward node its reserve output and the gradient node
    reads it (check_compiled above then compares those gradients with the reference)."""
    from op_check import vjp_graph
    b = vjp_graph("lstm", operands("lstm"), attrs_for("lstm"), [0, 1, 2, 3])
    _, stages = lower_graph(b.g)
    g = stages["fused"]
    nodes = {d["op"]: (n, d) for n, d in g.nodes(data=True) if d["op"] in ("lstm", "lstm_grad")}
    (f, fwd), (grad_id, grad) = nodes["lstm"], nodes["lstm_grad"]
    assert fwd["attrs"]["reserve"] and grad["attrs"]["reserve"]
    size = reserve_floats("lstm", fwd["attrs"], [g.nodes[u]["type"] for u in graph_operands(g, f)])
    assert len(fwd["type"]) == 4 and fwd["type"][3] == TensorType((size,), "float32")
    reserve_item = graph_operands(g, grad_id)[-1]
    assert g.nodes[reserve_item]["op"] == "tuple_item" and g.nodes[reserve_item]["attrs"]["index"] == 3
    assert graph_operands(g, reserve_item) == [f]


@pytest.mark.parametrize("op", ["simple_rnn", "lstm", "gru"])
@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_other_activations(op, activation):
    extra = {} if op == "simple_rnn" else {"recurrent_activation": "hard_sigmoid"}
    check_compiled(op, operands(op, seed=2), attrs_for(op, activation=activation, **extra))


@pytest.mark.parametrize("op,reset_after", VARIANTS)
@pytest.mark.parametrize("parallel", [False, True])
def test_parts_over_batch_rows_stay_inside_their_buffers(monkeypatch, op, reset_after, parallel):
    """With bounds checks compiled in, any index or GEMM extent outside its buffer reports an
    error; 5 rows split unevenly over the threads when parallel."""
    monkeypatch.setattr(rnn_codegen, "CHECK_BOUNDS", True)
    if parallel:
        monkeypatch.setattr(rnn_codegen, "PARALLEL_MIN_WORK", 0)
    d = GATES[op] if parallel else 1
    xs = operands(op, batch=5, time=3, features=4, units=3, reset_after=reset_after, masked=True, dropout=d,
                  seed=3)
    check_compiled(op, xs, attrs_for(op, reset_after, True, d, units=3, go_backwards=parallel))


@pytest.mark.parametrize("width", [8, 16])
@pytest.mark.parametrize("op,reset_after", VARIANTS)
def test_whole_vectors_masked_tail_and_register_tiles(monkeypatch, op, reset_after, width):
    """units = 2 whole vectors + 3 units (the masked last vector) and 13 rows in 2 parts (register
    tiles of several sizes), bounds checked; with 8 lanes also a dropout mask per gate."""
    monkeypatch.setattr(rnn_codegen, "VECTOR_WIDTH", width)
    monkeypatch.setattr(rnn_codegen, "CHECK_BOUNDS", True)
    monkeypatch.setattr(rnn_codegen, "PARALLEL_MIN_WORK", 0)
    units, d = 2 * width + 3, (GATES[op] if width == 8 else 0)
    xs = operands(op, batch=13, time=3, features=5, units=units, reset_after=reset_after, masked=True, dropout=d,
                  seed=4)
    check_compiled(op, xs, attrs_for(op, reset_after, True, d, units=units, go_backwards=width == 16))


def test_gradient_keeps_f_x_only_where_the_derivative_is_a_function_of_it():
    """sigmoid, tanh and the identity: the backward sweep reads f(x) (no transcendental);
    relu, hard_sigmoid, softplus, elu, swish need x (their gradients are tested above)."""
    keeps_value = {name: rnn_codegen.Activation(name).of_value
                   for name in ("sigmoid", "tanh", "linear", "relu", "hard_sigmoid", "softplus", "elu", "swish")}
    assert keeps_value == {"sigmoid": True, "tanh": True, "linear": True, "relu": False, "hard_sigmoid": False,
                           "softplus": False, "elu": False, "swish": False}


# ---- Keras layer fixtures on the compiled kernels ---------------------------------------------------

FIXTURES = ["lstm_seq_mask", "lstm_backwards_last", "gru_reset_after_false_seq", "gru_seq_state",
            "simplernn_backwards", "bidirectional_lstm_concat_seq_mask", "bidirectional_gru_sum_last"]


def built_layer(case):
    backend.clear_session()
    layer = make_layer(case["spec"])
    layer.build(case["x"].shape)
    layer.built = True
    layer.set_weights(indexed(case, "w"))
    return layer


def call_kwargs(case, mask):
    kwargs = dict(case["spec"].get("call", {}))
    if "mask" in case:
        kwargs["mask"] = mask
    return kwargs


@pytest.mark.parametrize("name", FIXTURES)
def test_layer_fixture_runs_compiled(name):
    case = load("layers", name)
    layer = built_layer(case)
    got = flatten(layer(case["x"], **call_kwargs(case, case.get("mask"))))
    (g, _, _), = layer._eager_graphs.values()
    assert g.graph["_compiled"] != "reference", g.graph.get("notes")
    expected = indexed(case, "y") or [case["y"]]
    for y, want in zip(got, expected):
        assert_close32(y.numpy(), want, name)


@pytest.mark.parametrize("name", FIXTURES)
def test_layer_fixture_gradients_run_compiled(name):
    """d sum_i <y_i, r_i> / d(x, weights) from the autodiff graph compiled, against Keras."""
    case = load("layers", name)
    layer = built_layer(case)
    x = case["x"]
    b = backend.new_trace_builder(name="grad")
    xs = b.input("x", TensorType(x.shape))
    feeds = {"x": x}
    mask = None
    if "mask" in case:
        mask = SymbolicTensor(b, b.input("mask", TensorType(case["mask"].shape, "bool")))
        feeds["mask"] = case["mask"]
    ys = flatten(layer(SymbolicTensor(b, xs), **call_kwargs(case, mask)))
    total = None
    for k, (y, r) in enumerate(zip(ys, indexed(case, "r") or [case["r"]])):
        feeds[f"r{k}"] = r
        term = b.op("sum", b.op("mul", y.node, b.input(f"r{k}", TensorType(r.shape))), axes=None, keepdims=False)
        total = term if total is None else b.op("add", total, term)
    grads = gradients(b, total, [xs] + [b.variable(w) for w in layer.weights])
    b.g.graph["outputs"] = grads
    compiled, _ = lower_graph(b.g)
    got = compiled.run(feeds)
    for value, want in zip(got, [case["grad_x"]] + indexed(case, "grad_w")):
        assert_close32(value, want, name)
