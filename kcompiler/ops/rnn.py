"""Recurrent loops as primitive ops: ``simple_rnn``, ``lstm``, ``gru`` and their gradients.

The time length is unknown when a model is traced, so a recurrent layer cannot be
unrolled into per-step nodes. Each loop is one op whose kernel runs the whole
sequence, like cuDNN's RNN: one ``<op>`` node forward, one ``<op>_grad`` node for
backprop through time.

Operands, in this order (the optional ones present when the attr says so):
  x (batch, time, features); kernel (features, G*units); recurrent_kernel (units, G*units);
  bias: simple_rnn (units,), lstm (4*units,), gru (3*units,) or, with reset_after,
        (2, 3*units) = [input bias, recurrent bias]. A layer without bias passes zeros,
        so the operand list is fixed per op;
  h0 (batch, units) and, for lstm, c0 (batch, units): the initial states;
  mask (batch, time) bool                                  when attrs.masked;
  dropout_mask (D, batch, features)                        when attrs.dropout_mask;
  recurrent_dropout_mask (D, batch, units)                 when attrs.recurrent_dropout_mask.
G is the number of gates (1, 4: i f c o, 3: z r h). The dropout masks are
0 or 1/(1-rate) per element, made in the graph by the ``dropout`` op applied to ones,
so the recurrent op itself is deterministic; D is 1 (one mask shared by every gate,
what Keras does with implementation 2) or G (one per gate, implementation 1).
Gate g multiplies its input by mask[g % D].

Attrs: units; activation and recurrent_activation (names from ACTIVATIONS);
go_backwards (process t = T-1 .. 0); reset_after (gru); masked, dropout_mask,
recurrent_dropout_mask (which optional operands exist); zero_output_for_mask;
output_in_time_order.

Outputs (a tuple): the output sequence (batch, time, units), then the final states
h (and c for lstm). Position s of the sequence is the s-th step processed, so with
go_backwards it comes out reversed, as Keras returns it; ``output_in_time_order``
writes the output of input step t at position t instead (Bidirectional uses it so it
needs no flip). At a masked step the states are carried over unchanged and the
output repeats the previous step's output (zeros before the first valid step), or is
zero with ``zero_output_for_mask``.

Gradients: ``<op>_grad`` takes the forward operands followed by the cotangent of
every output and returns one gradient per differentiable operand (x, kernel,
recurrent_kernel, bias, h0[, c0]). By default it recomputes the forward pass: a kernel
for it runs the loop forward into a scratch workspace (every step's states, what the
gates' derivatives need, the masked copies of h), then backward through time (the
trade of activation checkpointing). With attr ``reserve`` (set by the pass
passes/recurrent_reserve.py for a backend that declares it can) the forward op has one
more output, a *reserve* of ``reserve_floats`` float32 — cuDNN's reserve space: what the
forward sweep of the training step leaves for the backward one, with contents the
backend defines (region sizes: ``reserve_regions``) — and the gradient op takes it as its
last operand and runs no forward sweep. The reference interpreter leaves the reserve zero
and recomputes, so a gradient that reads a wrong reserve differs from the reference.
"""
from ..errors import ShapeError
from ..ir.registry import register
from ..ir.types import TensorType, fmt_shape
from .common import dims_equal

RECURRENT_OPS = ("simple_rnn", "lstm", "gru")
GATES = {"simple_rnn": 1, "lstm": 4, "gru": 3}
STATES = {"simple_rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}

# Activation names a recurrent op resolves itself -> (element-wise op, its attrs).
# The names are Keras's; "linear" is the identity.
ACTIVATIONS = {
    "linear": None, "tanh": ("tanh", {}), "sigmoid": ("sigmoid", {}), "relu": ("relu", {}),
    "hard_sigmoid": ("hard_sigmoid", {}), "elu": ("elu", {"alpha": 1.0}), "selu": ("selu", {}),
    "softplus": ("softplus", {}), "softsign": ("softsign", {}), "swish": ("silu", {}),
    "silu": ("silu", {}), "gelu": ("gelu", {"approximate": False}), "exponential": ("exp", {}),
    "leaky_relu": ("leaky_relu", {"negative_slope": 0.2}), "relu6": ("relu6", {}),
}

DEFAULT_ATTRS = {"activation": "tanh", "recurrent_activation": "sigmoid", "go_backwards": False,
                 "reset_after": True, "masked": False, "dropout_mask": False,
                 "recurrent_dropout_mask": False, "zero_output_for_mask": False,
                 "output_in_time_order": False, "reserve": False}
RESERVE_ALIGN = 16  # floats: each reserve region starts on a 64-byte boundary


def full_attrs(attrs):
    return {**DEFAULT_ATTRS, **attrs}


def operand_names(op, attrs):
    """Names of the operands of ``op`` with these attrs, in operand order."""
    attrs = full_attrs(attrs)
    names = ["x", "kernel", "recurrent_kernel", "bias"] + [f"{s}0" for s in STATES[op]]
    for flag, name in (("masked", "mask"), ("dropout_mask", "dropout_mask"),
                       ("recurrent_dropout_mask", "recurrent_dropout_mask")):
        if attrs[flag]:
            names.append(name)
    return names


def reserve_regions(op, attrs, in_types):
    """{region: floats} of the reserve the forward sweep leaves for the gradient, in order:
    HS (time+1, batch, units) the state h before each step and after the last (and CS, the
    same of c, for lstm); KEPT (time, batch, GA) per step what the gates' derivatives need
    (GA = 5 units for lstm: i f c o and c_new; 4 units for gru reset_after: z r, the
    candidate's recurrent part and the candidate; G units otherwise); SRC (time, batch,
    NS*units) the masked copies of h the recurrent products read (NS: one per distinct
    recurrent dropout mask a gate group uses, and for gru reset_after=False the r*h)."""
    a = full_attrs(attrs)
    batch, time, _ = in_types[0].shape
    units, gates = a["units"], GATES[op]
    names = operand_names(op, a)
    d2 = in_types[names.index("recurrent_dropout_mask")].shape[0] if a["recurrent_dropout_mask"] else 0
    gru_nra = op == "gru" and not a["reset_after"]
    sources = {(g % d2 if d2 else None, gru_nra and g == 2) for g in range(gates)} - {(None, False)}
    ga = 5 * units if op == "lstm" else 4 * units if op == "gru" and a["reset_after"] else gates * units
    regions = {"HS": (time + 1) * batch * units}
    if op == "lstm":
        regions["CS"] = (time + 1) * batch * units
    regions["KEPT"] = time * batch * ga
    regions["SRC"] = time * batch * len(sources) * units
    return regions


def reserve_floats(op, attrs, in_types):
    """Size of the reserve: its regions, each rounded up to RESERVE_ALIGN floats."""
    return sum(-(-n // RESERVE_ALIGN) * RESERVE_ALIGN for n in reserve_regions(op, attrs, in_types).values())


def differentiable_count(op):
    """x, kernel, recurrent_kernel, bias and the initial states get gradients."""
    return 4 + len(STATES[op])


def bias_shape(op, units, reset_after=True):
    if op == "gru" and reset_after:
        return (2, 3 * units)
    return (GATES[op] * units,)


def _check(cond, op, message):
    if not cond:
        raise ShapeError(f"{op}: {message}")


def _forward_rule(op):
    def rule(in_types, attrs):
        attrs = full_attrs(attrs)
        names = operand_names(op, attrs)
        _check(len(in_types) == len(names), op, f"expects {len(names)} operands ({', '.join(names)}), "
               f"got {len(in_types)}")
        t = dict(zip(names, in_types))
        units, gates = attrs["units"], GATES[op]
        _check(isinstance(units, int) and units > 0, op, f"units must be a positive integer, got {units!r}")
        for key in ("activation", "recurrent_activation"):
            _check(attrs[key] in ACTIVATIONS, op, f"unsupported {key} {attrs[key]!r}; expected one of "
                   f"{', '.join(sorted(ACTIVATIONS))}")
        x = t["x"]
        _check(x.rank == 3, op, f"x must have shape (batch, time, features), got {fmt_shape(x.shape)}")
        _check(x.dtype.startswith("float"), op, f"x must be a float tensor, got {x.dtype}")
        batch, time, features = x.shape

        def expect(name, shape, what=""):
            got, dtype = t[name], "bool" if name == "mask" else x.dtype
            if got.dtype != dtype:
                raise ShapeError(f"{op}: {name} must have dtype {dtype}, got {got.dtype}")
            if got.rank != len(shape) or not all(dims_equal(a, b) for a, b in zip(got.shape, shape)):
                raise ShapeError(f"{op}: {name} must have shape {fmt_shape(shape)}{what}, "
                                 f"got {fmt_shape(got.shape)}")

        kernel = t["kernel"]
        if kernel.rank == 2 and not dims_equal(kernel.shape[0], features):
            raise ShapeError(f"{op}: the kernel expects {kernel.shape[0]} input features, got x with "
                             f"{features} features (x shape {fmt_shape(x.shape)})")
        expect("kernel", (features, gates * units), f" (features, {gates} * units)")
        expect("recurrent_kernel", (units, gates * units), f" (units, {gates} * units)")
        expect("bias", bias_shape(op, units, attrs["reset_after"]))
        for s in STATES[op]:
            expect(f"{s}0", (batch, units), " (batch, units)")
        if attrs["masked"]:
            expect("mask", (batch, time), " (batch, time)")
        for name, width in (("dropout_mask", features), ("recurrent_dropout_mask", units)):
            if attrs[name]:
                d = t[name].shape[0] if t[name].rank == 3 else None
                _check(d in (1, gates), op, f"{name} must have shape (1 or {gates}, batch, {width}), "
                       f"got {fmt_shape(t[name].shape)}")
                expect(name, (d, batch, width))
        state = TensorType((batch, units), x.dtype)
        outs = (TensorType((batch, time, units), x.dtype),) + (state,) * len(STATES[op])
        if attrs["reserve"]:
            outs += (TensorType((reserve_floats(op, attrs, in_types),), "float32"),)
        return outs
    return rule


def _grad_rule(op):
    forward = _forward_rule(op)

    def rule(in_types, attrs):
        n = len(operand_names(op, attrs))
        plain = {**attrs, "reserve": False}
        outs = forward(in_types[:n], plain)
        cotangents = in_types[n:]
        if full_attrs(attrs)["reserve"]:
            cotangents, reserve = in_types[n:-1], in_types[-1]
            size = reserve_floats(op, attrs, in_types[:n])
            _check(reserve.shape == (size,) and reserve.dtype == "float32", op + "_grad",
                   f"the reserve (last operand) must be float32 of shape ({size},), got "
                   f"{reserve.dtype} {fmt_shape(reserve.shape)}")
        _check(len(cotangents) == len(outs), op + "_grad", f"expects {len(outs)} cotangents after the "
               f"{n} forward operands, got {len(cotangents)}")
        for i, (ct, out) in enumerate(zip(cotangents, outs)):
            if ct.rank != out.rank or not all(dims_equal(a, b) for a, b in zip(ct.shape, out.shape)):
                raise ShapeError(f"{op}_grad: cotangent {i} must have shape {fmt_shape(out.shape)}, "
                                 f"got {fmt_shape(ct.shape)}")
        return tuple(in_types[:differentiable_count(op)])
    return rule


def _vjp(op):
    def vjp(b, nid, dy):
        operands = b.operands(nid)
        grad = b.add(f"{op}_grad", list(operands) + list(dy), b.attrs(nid))
        n = differentiable_count(op)
        return [b.tuple_item(grad, i) for i in range(n)] + [None] * (len(operands) - n)
    return vjp


_DOCS = {
    "simple_rnn": "h_t = act(x_t W + h_{t-1} U + b)",
    "lstm": "gates i f c o: c_t = f*c_{t-1} + i*act(.), h_t = o*act(c_t)",
    "gru": "gates z r h: h_t = z*h_{t-1} + (1-z)*act(x W_h + r*(h U_h + b_rec))  (reset_after)",
}
for _op in RECURRENT_OPS:
    register(_op, shape=_forward_rule(_op), vjp=_vjp(_op), kind="opaque",
             doc=f"{_DOCS[_op]}; -> (sequence, final states)")
    register(f"{_op}_grad", shape=_grad_rule(_op), kind="opaque",
             doc=f"backprop through time of {_op}: (operands, cotangents) -> gradients of x, kernel, "
                 "recurrent_kernel, bias and the initial states")
