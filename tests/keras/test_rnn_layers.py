"""SimpleRNN, LSTM, GRU and Bidirectional against real Keras: forward on the fixtures'
weights and inputs (masks included), the fixtures' gradients through the autodiff pass
(backprop through time in the gradient ops), the seed's summaries, configs, dropout,
initial states and error messages."""
import json
from pathlib import Path

import numpy as np
import pytest

from keras_fixtures import cases, indexed, load, make_layer, make_sequential
from kcompiler import keras
from kcompiler.errors import ShapeError, UnsupportedError
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend
from kcompiler.keras.layers.base import flatten
from kcompiler.keras.tensor import SymbolicTensor
from kcompiler.passes.autodiff import gradients

RECURRENT = {"SimpleRNN", "LSTM", "GRU", "Bidirectional"}
TEXT = Path(__file__).parent.parent / "fixtures" / "keras" / "text"


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def expected_outputs(case):
    return indexed(case, "y") or [case["y"]]


def built_layer(case):
    layer = make_layer(case["spec"])
    layer.build(case["x"].shape)
    layer.built = True
    layer.set_weights(indexed(case, "w"))
    return layer


def model_cases():
    """Model fixtures whose layers include a recurrent layer."""
    return [n for n in cases("models")
            if any(l["class_name"] in RECURRENT for l in load("models", n)["spec"].get("layers", []))]


def traced_gradients(layer_or_model, case):
    """d sum_i sum(y_i * r_i) / d(x [if float], *weights), by the autodiff pass and the references."""
    x = case["x"]
    b = backend.new_trace_builder(name="grad")
    feeds = {"x": x}
    xs = b.input("x", TensorType(x.shape, str(x.dtype)))
    sym = SymbolicTensor(b, xs)
    kwargs = dict(case["spec"].get("call", {}))
    if "mask" in case:
        kwargs["mask"] = SymbolicTensor(b, b.input("mask", TensorType(case["mask"].shape, "bool")))
        feeds["mask"] = case["mask"]
    ys = flatten(layer_or_model(sym, **kwargs))
    rs = indexed(case, "r") or [case["r"]]
    total = None
    for k, (y, r) in enumerate(zip(ys, rs)):
        feeds[f"r{k}"] = r
        term = b.op("sum", b.op("mul", y.node, b.input(f"r{k}", TensorType(r.shape))), axes=None, keepdims=False)
        total = term if total is None else b.op("add", total, term)
    wrt = ([xs] if x.dtype.kind == "f" else []) + [b.variable(w) for w in layer_or_model.weights]
    grads = gradients(b, total, wrt)
    b.g.graph["outputs"] = [g if g is not None else total for g in grads]
    values, _ = run_reference(b.g, feeds)
    return [v if g is not None else None for v, g in zip(values, grads)]


def test_every_class_has_fixtures():
    found = {load("layers", n)["spec"]["class_name"] for n in cases("layers", RECURRENT)}
    assert found == RECURRENT
    assert len(model_cases()) >= 7


@pytest.mark.parametrize("name", cases("layers", RECURRENT))
def test_layer_forward_matches_keras(name):
    case = load("layers", name)
    layer = built_layer(case)
    kwargs = dict(case["spec"].get("call", {}))
    if "mask" in case:
        kwargs["mask"] = case["mask"]
    got = flatten(layer(case["x"], **kwargs))
    expected = expected_outputs(case)
    assert len(got) == len(expected)
    for y, want in zip(got, expected):
        assert y.shape == want.shape
        assert_close(y.numpy(), want)


@pytest.mark.parametrize("name", cases("layers", RECURRENT))
def test_layer_gradients_match_keras(name):
    case = load("layers", name)
    grads = traced_gradients(built_layer(case), case)
    expected = [case["grad_x"]] + indexed(case, "grad_w")
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected):
        assert_close(np.zeros_like(want) if got is None else got, want)


@pytest.mark.parametrize("name", model_cases())
def test_model_forward_and_gradients_match_keras(name):
    case = load("models", name)
    backend.clear_session()
    model = make_sequential(case["spec"])
    model.set_weights(indexed(case, "w"))
    assert_close(model(case["x"]).numpy(), case["y"])
    grads = traced_gradients(model, case)
    expected = ([case["grad_x"]] if "grad_x" in case else []) + indexed(case, "grad_w")
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected):
        assert_close(np.zeros_like(want) if got is None else got, want)


# ---- summaries -------------------------------------------------------------------------------

def summary_lines(model):
    lines = []
    model.summary(print_fn=lines.append)
    return lines


def seed_model(name):
    backend.clear_session()
    layers = keras.layers
    model = keras.Sequential()
    if name == "seed_embedding_lstm":
        for layer in [layers.Embedding(10000, 16), layers.LSTM(64), layers.Dense(16, activation="relu"),
                      layers.Dense(1, activation="sigmoid")]:
            model.add(layer)
        return model
    model.add(layers.Embedding(10000, 32))
    if name == "seed_embedding_simplernn_stack":
        for _ in range(3):
            model.add(layers.SimpleRNN(32, return_sequences=True))
    model.add(layers.SimpleRNN(32, return_sequences=name == "seed_embedding_simplernn_seq"))
    return model


@pytest.mark.parametrize("name", ["seed_embedding_simplernn", "seed_embedding_simplernn_seq",
                                  "seed_embedding_simplernn_stack", "seed_embedding_lstm"])
def test_seed_summaries(name):
    expected = (TEXT / f"summary_{name}.txt").read_text().splitlines()
    assert summary_lines(seed_model(name)) == expected


def test_seed_summary_rows():
    rows = {
        "seed_embedding_simplernn": "simple_rnn (SimpleRNN)       (None, 32)                2080      ",
        "seed_embedding_simplernn_seq": "simple_rnn (SimpleRNN)       (None, None, 32)          2080      ",
        "seed_embedding_lstm": "lstm (LSTM)                  (None, 64)                20736     ",
    }
    for name, row in rows.items():
        assert row in summary_lines(seed_model(name))
    assert "Total params: 328,320" in summary_lines(seed_model("seed_embedding_simplernn_stack"))


def test_bidirectional_summary_and_weights():
    backend.clear_session()
    model = keras.Sequential([keras.layers.Embedding(10000, 16),
                              keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True)),
                              keras.layers.Bidirectional(keras.layers.GRU(4))])
    lines = summary_lines(model)
    assert "bidirectional (Bidirectional (None, None, 6)           480       " in lines
    assert "bidirectional_1 (Bidirection (None, 8)                 288       " in lines
    bi = model.layers[1]
    assert (bi.forward_layer.name, bi.backward_layer.name) == ("forward_lstm", "backward_lstm")
    assert (bi.forward_layer.go_backwards, bi.backward_layer.go_backwards) == (False, True)
    assert [w.path for w in bi.weights] == [f"{d}_lstm/{n}" for d in ("forward", "backward")
                                            for n in ("kernel", "recurrent_kernel", "bias")]


# ---- weights, initialisers, configs ---------------------------------------------------------------

def test_weight_shapes_and_initialisers():
    backend.clear_session()
    backend.set_random_seed(0)
    lstm, gru, gru_v1 = keras.layers.LSTM(3), keras.layers.GRU(3), keras.layers.GRU(3, reset_after=False)
    for layer in (lstm, gru, gru_v1):
        layer.build((None, 5, 4))
    assert [w.shape for w in lstm.weights] == [(4, 12), (3, 12), (12,)]
    assert [w.shape for w in gru.weights] == [(4, 9), (3, 9), (2, 9)]
    assert [w.shape for w in gru_v1.weights] == [(4, 9), (3, 9), (9,)]
    np.testing.assert_array_equal(lstm.bias.numpy(), [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])  # unit_forget_bias
    u = lstm.recurrent_kernel.numpy()
    np.testing.assert_allclose(u @ u.T, np.eye(3), atol=1e-5)  # orthogonal
    no_forget = keras.layers.LSTM(2, unit_forget_bias=False)
    no_forget.build((None, 3, 2))
    assert not no_forget.bias.numpy().any()
    no_bias = keras.layers.SimpleRNN(2, use_bias=False)
    no_bias.build((None, 3, 2))
    assert [w.name for w in no_bias.weights] == ["kernel", "recurrent_kernel"]


def test_config_keys_follow_keras_3():
    keras3 = json.loads((TEXT / "json_keras3_embedding_lstm.json").read_text())
    lstm_config = next(l["config"] for l in keras3["config"]["layers"] if l["class_name"] == "LSTM")
    backend.clear_session()
    lstm = keras.layers.LSTM(64)
    assert list(lstm.get_config()) == list(lstm_config)
    gru = keras.layers.GRU(3).get_config()
    assert list(gru)[-2:] == ["reset_after", "seed"] and gru["reset_after"] is True
    simple = keras.layers.SimpleRNN(3).get_config()
    assert "seed" not in simple and "recurrent_activation" not in simple
    clone = keras.layers.LSTM.from_config(keras.layers.LSTM(5, go_backwards=True, dropout=0.25).get_config())
    assert (clone.units, clone.go_backwards, clone.dropout) == (5, True, 0.25)


def test_bidirectional_config_round_trip():
    backend.clear_session()
    bi = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True), merge_mode="sum")
    config = bi.get_config()
    assert config["merge_mode"] == "sum"
    assert config["layer"]["config"]["name"] == "forward_gru"
    assert config["backward_layer"]["config"]["go_backwards"] is True
    assert config["layer"]["config"]["zero_output_for_mask"] is True
    again = keras.layers.Bidirectional.from_config(config)
    assert (again.forward_layer.name, again.backward_layer.name) == ("forward_gru", "backward_gru")


# ---- calls: initial states, merge modes, masks, dropout ---------------------------------------------

def test_initial_state_feeds_the_first_step():
    """SimpleRNN with an initial state equals the loop written out in numpy."""
    backend.clear_session()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    h0 = rng.standard_normal((2, 5)).astype(np.float32)
    layer = keras.layers.SimpleRNN(5, return_sequences=True, return_state=True)
    layer.build(x.shape)
    kernel, recurrent, bias = layer.get_weights()
    b = backend.new_trace_builder(name="init")
    xs = SymbolicTensor(b, b.input("x", TensorType(x.shape)))
    hs = SymbolicTensor(b, b.input("h0", TensorType(h0.shape)))
    seq, h = layer(xs, initial_state=[hs])
    b.g.graph["outputs"] = [seq.node, h.node]
    (got_seq, got_h), _ = run_reference(b.g, {"x": x, "h0": h0})
    state, outs = h0, []
    for t in range(4):
        state = np.tanh(x[:, t] @ kernel + state @ recurrent + bias)
        outs.append(state)
    assert_close(got_seq, np.stack(outs, 1))
    assert_close(got_h, state)
    # The Keras 2 form, [x, h0] as the inputs, is the same call.
    seq2, _ = layer([xs, hs])
    b.g.graph["outputs"] = [seq2.node]
    assert_close(run_reference(b.g, {"x": x, "h0": h0})[0][0], got_seq)


def test_bidirectional_merge_none_and_return_state():
    backend.clear_session()
    x = np.random.default_rng(1).standard_normal((2, 4, 3)).astype(np.float32)
    inner = keras.layers.LSTM(2, return_sequences=True, return_state=True)
    bi = keras.layers.Bidirectional(inner, merge_mode=None)
    outs = bi(x)
    assert [o.shape for o in outs] == [(2, 4, 2), (2, 4, 2), (2, 2), (2, 2), (2, 2), (2, 2)]
    fwd, bwd = bi.forward_layer(x), bi.backward_layer(x)
    assert_close(outs[0].numpy(), fwd[0].numpy())
    assert_close(outs[1].numpy(), bwd[0].numpy()[:, ::-1])  # backward sequence back in time order
    assert_close(outs[4].numpy(), bwd[1].numpy())


def test_mask_flows_through_return_sequences_only():
    backend.clear_session()
    inputs = keras.Input(shape=(5,), dtype="int32")
    emb = keras.layers.Embedding(8, 3, mask_zero=True)(inputs)
    seq = keras.layers.LSTM(2, return_sequences=True)(emb)
    last = keras.layers.GRU(2)(seq)
    assert seq._keras_mask is not None and last._keras_mask is None
    assert seq.shape == (None, 5, 2) and last.shape == (None, 2)
    out, h, c = keras.layers.LSTM(2, return_state=True)(emb)
    assert (out.shape, h.shape, c.shape) == ((None, 2), (None, 2), (None, 2))


def test_symbolic_time_dimension():
    backend.clear_session()
    inputs = keras.Input(shape=(None, 4))
    y = keras.layers.GRU(3, return_sequences=True, go_backwards=True)(inputs)
    assert y.shape == (None, None, 3)


def test_dropout_is_one_mask_per_sample_reused_at_every_step():
    """Linear SimpleRNN with identity kernel, zero recurrence: output_t = x_t * mask."""
    backend.clear_session()
    layer = keras.layers.SimpleRNN(4, activation="linear", dropout=0.5, return_sequences=True, seed=3)
    layer.build((None, 6, 4))
    layer.set_weights([np.eye(4, dtype=np.float32), np.zeros((4, 4), np.float32), np.zeros(4, np.float32)])
    x = np.ones((8, 6, 4), np.float32)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    y = layer(x, training=True).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 0 < (y == 0).mean() < 1
    np.testing.assert_array_equal(y, np.repeat(y[:, :1], 6, axis=1))


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_recurrent_dropout_trains_and_is_a_no_op_at_inference(cls):
    backend.clear_session()
    x = np.random.default_rng(2).standard_normal((3, 5, 4)).astype(np.float32)
    plain = getattr(keras.layers, cls)(3, seed=1)
    dropped = getattr(keras.layers, cls)(3, dropout=0.3, recurrent_dropout=0.4, seed=1)
    for layer in (plain, dropped):
        layer.build(x.shape)
    dropped.set_weights(plain.get_weights())
    assert dropped.implementation == 1  # per-gate masks, as Keras with recurrent_dropout
    np.testing.assert_array_equal(dropped(x).numpy(), plain(x).numpy())
    assert not np.allclose(dropped(x, training=True).numpy(), plain(x).numpy())


# ---- errors ----------------------------------------------------------------------------------------

def test_wrong_feature_count_names_the_layer():
    backend.clear_session()
    layer = keras.layers.LSTM(3)
    layer.build((None, 5, 4))
    with pytest.raises(ShapeError, match=r"LSTM 'lstm' expects input last dimension 4, got 7"):
        layer(np.zeros((2, 5, 7), np.float32))
    with pytest.raises(ShapeError, match=r"expects input of rank 3"):
        keras.layers.GRU(2)(np.zeros((2, 5), np.float32))


def test_unsupported_options_raise():
    backend.clear_session()
    with pytest.raises(UnsupportedError, match="stateful=True"):
        keras.layers.SimpleRNN(2, stateful=True)
    with pytest.raises(UnsupportedError, match="cannot run inside the recurrent op"):
        keras.layers.LSTM(2, activation=lambda v: v * 2)
    with pytest.raises(ValueError, match="units must be a positive integer"):
        keras.layers.GRU(0)
    with pytest.raises(ValueError, match="invalid merge_mode"):
        keras.layers.Bidirectional(keras.layers.LSTM(2), merge_mode="max")
    keras.layers.LSTM(2, unroll=True)  # accepted, ignored


def test_initial_state_count_is_checked():
    backend.clear_session()
    layer = keras.layers.LSTM(2)
    b = backend.new_trace_builder(name="bad")
    xs = SymbolicTensor(b, b.input("x", TensorType((2, 3, 4))))
    hs = SymbolicTensor(b, b.input("h", TensorType((2, 2))))
    with pytest.raises(ValueError, match=r"expects 2 initial state\(s\) of shape \(batch, 2\), got 1"):
        layer(xs, initial_state=[hs])
