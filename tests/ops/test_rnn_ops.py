"""The recurrent ops (simple_rnn, lstm, gru): their gradient ops (backprop through time)
against float64 finite differences, the loop's semantics (masks, go_backwards, dropout
masks, output order), and the shape rules' errors."""
import numpy as np
import pytest

from kcompiler.errors import ShapeError
from kcompiler.ops.rnn import GATES, differentiable_count
from op_check import build_op_graph, check_vjp, run_op

BATCH, TIME, FEATURES, UNITS = 2, 3, 3, 2
MASK = np.array([[True, False, True], [False, True, True]])  # a gap, and a masked first step


def operands(op, seed=0, reset_after=True, masked=False, dropout_masks=0, scale=1.0):
    """Random float64 operands of ``op`` in operand order; dropout_masks = D (0: none)."""
    rng = np.random.default_rng(seed)
    g = GATES[op]
    bias_shape = (2, 3 * UNITS) if op == "gru" and reset_after else (g * UNITS,)
    xs = [scale * rng.standard_normal((BATCH, TIME, FEATURES)), scale * rng.standard_normal((FEATURES, g * UNITS)),
          scale * rng.standard_normal((UNITS, g * UNITS)), scale * rng.standard_normal(bias_shape),
          rng.standard_normal((BATCH, UNITS))]
    if op == "lstm":
        xs.append(rng.standard_normal((BATCH, UNITS)))
    if masked:
        xs.append(MASK)
    if dropout_masks:
        keep = lambda shape: (rng.random(shape) > 0.3) / 0.7  # noqa: E731
        xs.append(keep((dropout_masks, BATCH, FEATURES)))
        xs.append(keep((dropout_masks, BATCH, UNITS)))
    return xs


def attrs_for(op, reset_after=True, masked=False, dropout_masks=0, **extra):
    attrs = {"units": UNITS, "masked": masked, **extra}
    if op == "gru":
        attrs["reset_after"] = reset_after
    if dropout_masks:
        attrs.update(dropout_mask=True, recurrent_dropout_mask=True)
    return attrs


def wrt(op):
    return list(range(differentiable_count(op)))


VARIANTS = [  # (op, reset_after)
    ("simple_rnn", True), ("lstm", True), ("gru", True), ("gru", False)]


@pytest.mark.parametrize("op,reset_after", VARIANTS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_vjp_matches_finite_differences(op, reset_after, masked, go_backwards):
    xs = operands(op, reset_after=reset_after, masked=masked)
    attrs = attrs_for(op, reset_after, masked, go_backwards=go_backwards)
    check_vjp(op, xs, attrs, wrt=wrt(op))


@pytest.mark.parametrize("op,reset_after", VARIANTS)
@pytest.mark.parametrize("dropout_masks", [1, "gates"])
def test_vjp_with_dropout_masks_and_zero_output(op, reset_after, dropout_masks):
    d = GATES[op] if dropout_masks == "gates" else 1
    xs = operands(op, seed=1, reset_after=reset_after, masked=True, dropout_masks=d)
    attrs = attrs_for(op, reset_after, True, d, zero_output_for_mask=True, go_backwards=True,
                      output_in_time_order=True)
    check_vjp(op, xs, attrs, wrt=wrt(op))


@pytest.mark.parametrize("op", ["simple_rnn", "lstm", "gru"])
def test_vjp_with_other_activations(op):
    xs = operands(op, seed=2, scale=0.5)
    attrs = attrs_for(op, activation="softsign")
    if op != "simple_rnn":
        attrs["recurrent_activation"] = "hard_sigmoid"
    check_vjp(op, xs, attrs, wrt=wrt(op))


def test_vjp_reaches_only_the_outputs_used():
    """A cotangent for the final state alone (return_state without sequences) still flows back
    to every step through the recurrence."""
    from kcompiler.ir.interpreter_reference import run_reference
    from kcompiler.passes.autodiff import gradients
    xs = operands("lstm")
    b, ids, outs = build_op_graph("lstm", xs, attrs_for("lstm"))
    total = b.op("sum", outs[2], axes=None, keepdims=False)  # sum of the final cell state
    (gx,) = gradients(b, total, [ids[0]])
    b.g.graph["outputs"] = [gx]
    (dx,), _ = run_reference(b.g, {f"x{i}": a for i, a in enumerate(xs)})
    assert np.all(np.abs(dx[:, 0]) > 0)


# ---- semantics of the loop -------------------------------------------------------------

def simple_rnn_loop(x, kernel, recurrent, bias, h0, mask=None, backwards=False):
    """SimpleRNN written out step by step: the Keras semantics the op must reproduce."""
    h, prev, outs = h0, np.zeros_like(h0), []
    steps = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    for t in steps:
        new = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)
        if mask is not None:
            m = mask[:, t, None]
            new, out = np.where(m, new, h), np.where(m, new, prev)
        else:
            out = new
        h, prev = new, out
        outs.append(out)
    return np.stack(outs, 1), h


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_simple_rnn_forward_is_the_keras_loop(masked, go_backwards):
    xs = operands("simple_rnn", masked=masked)
    seq, h = run_op("simple_rnn", xs, attrs_for("simple_rnn", masked=masked, go_backwards=go_backwards))
    expected_seq, expected_h = simple_rnn_loop(*xs[:5], mask=MASK if masked else None, backwards=go_backwards)
    np.testing.assert_allclose(seq, expected_seq, rtol=1e-12)
    np.testing.assert_allclose(h, expected_h, rtol=1e-12)


def test_masked_steps_repeat_the_last_output_or_give_zeros():
    xs = operands("gru", masked=True)
    seq, h = run_op("gru", xs, attrs_for("gru", masked=True))
    assert np.all(seq[0, 1] == seq[0, 0]) and np.all(seq[1, 0] == 0)  # before the first valid step: zeros
    zero_seq, zero_h = run_op("gru", xs, attrs_for("gru", masked=True, zero_output_for_mask=True))
    assert np.all(zero_seq[0, 1] == 0) and np.all(zero_seq[~MASK[:, :, None].repeat(UNITS, 2)] == 0)
    np.testing.assert_array_equal(zero_seq[MASK], seq[MASK])
    np.testing.assert_array_equal(zero_h, h)


@pytest.mark.parametrize("op", ["simple_rnn", "lstm", "gru"])
def test_output_in_time_order_is_the_flipped_backwards_sequence(op):
    xs = operands(op, masked=True)
    reversed_seq = run_op(op, xs, attrs_for(op, masked=True, go_backwards=True))[0]
    ordered_seq = run_op(op, xs, attrs_for(op, masked=True, go_backwards=True, output_in_time_order=True))[0]
    np.testing.assert_array_equal(ordered_seq, reversed_seq[:, ::-1])


@pytest.mark.parametrize("op,reset_after", VARIANTS)
def test_one_shared_dropout_mask_equals_the_same_mask_per_gate(op, reset_after):
    xs = operands(op, reset_after=reset_after, dropout_masks=1)
    per_gate = xs[:-2] + [np.repeat(m, GATES[op], axis=0) for m in xs[-2:]]
    attrs = attrs_for(op, reset_after, dropout_masks=1)
    for a, b in zip(run_op(op, xs, attrs), run_op(op, per_gate, attrs)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    ones = xs[:-2] + [np.ones_like(m) for m in xs[-2:]]
    plain = run_op(op, xs[:-2], attrs_for(op, reset_after))
    for a, b in zip(run_op(op, ones, attrs), plain):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_lstm_gates_are_i_f_c_o():
    """One step from x = 0: the bias alone drives the gates, in Keras's column order."""
    x = np.zeros((1, 1, 1))
    bias = np.array([0.1, 0.7, -0.4, 1.3])
    c0 = np.full((1, 1), 0.6)
    _, h, c = run_op("lstm", [x, np.zeros((1, 4)), np.zeros((1, 4)), bias, np.zeros((1, 1)), c0], {"units": 1})
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, cc, o = sig(0.1), sig(0.7), np.tanh(-0.4), sig(1.3)
    assert c[0, 0] == pytest.approx(f * 0.6 + i * cc, rel=1e-12)
    assert h[0, 0] == pytest.approx(o * np.tanh(f * 0.6 + i * cc), rel=1e-12)


# ---- shape rules -------------------------------------------------------------------------

def test_wrong_feature_count_names_expected_and_got():
    xs = operands("lstm")
    xs[0] = np.zeros((BATCH, TIME, 5))
    with pytest.raises(ShapeError, match=r"lstm: the kernel expects 3 input features, got x with 5 features"):
        build_op_graph("lstm", xs, attrs_for("lstm"))


@pytest.mark.parametrize("index,shape,message", [
    (2, (UNITS, 2 * UNITS), r"recurrent_kernel must have shape \(2, 6\)"),
    (3, (3 * UNITS,), r"bias must have shape \(2, 6\)"),
    (4, (BATCH, UNITS + 1), r"h0 must have shape \(2, 2\) \(batch, units\), got \(2, 3\)"),
])
def test_wrong_operand_shapes_are_named(index, shape, message):
    xs = operands("gru")
    xs[index] = np.zeros(shape)
    with pytest.raises(ShapeError, match=message):
        build_op_graph("gru", xs, attrs_for("gru"))


def test_mask_must_be_bool_and_batch_by_time():
    xs = operands("simple_rnn") + [MASK.astype(np.float64)]
    with pytest.raises(ShapeError, match="mask must have dtype bool"):
        build_op_graph("simple_rnn", xs, attrs_for("simple_rnn", masked=True))
    xs[-1] = np.ones((BATCH, TIME + 1), bool)
    with pytest.raises(ShapeError, match=r"mask must have shape \(2, 3\) \(batch, time\), got \(2, 4\)"):
        build_op_graph("simple_rnn", xs, attrs_for("simple_rnn", masked=True))


def test_missing_operand_and_bad_attrs():
    xs = operands("lstm")
    with pytest.raises(ShapeError, match=r"expects 6 operands \(x, kernel, recurrent_kernel, bias, h0, c0\)"):
        build_op_graph("lstm", xs[:5], attrs_for("lstm"))
    with pytest.raises(ShapeError, match="unsupported activation 'softmax'"):
        build_op_graph("lstm", xs, attrs_for("lstm", activation="softmax"))
    with pytest.raises(ShapeError, match=r"dropout_mask must have shape \(1 or 4, batch, 3\)"):
        build_op_graph("lstm", xs + [np.ones((2, BATCH, FEATURES))], attrs_for("lstm", dropout_mask=True))


def test_symbolic_batch_and_time_pass_through():
    from kcompiler.ir.graph import GraphBuilder
    from kcompiler.ir.types import TensorType
    b = GraphBuilder()
    x = b.input("x", TensorType((None, None, 3)))
    h0 = b.input("h0", TensorType((None, 4)))
    ws = [b.input(n, TensorType(s)) for n, s in [("k", (3, 12)), ("r", (4, 12)), ("b", (2, 12))]]
    node = b.add("gru", [x, *ws, h0], {"units": 4})
    assert [t.shape for t in b.type(node)] == [(None, None, 4), (None, 4)]
