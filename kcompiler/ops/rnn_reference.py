"""numpy references of the recurrent ops: the loop over time, forward and backward.

One generic loop (``_run_forward`` / ``_run_backward``) handles time order, masks,
carried states and outputs; a cell per op (SimpleRNNCell, LSTMCell, GRUCell) does
one step and its derivative. The gradient ops recompute the forward pass, keeping
each step's cache, then walk the steps backwards (see rnn.py for why).
"""
from functools import partial

import numpy as np

from ..ir.registry import reference
from .elementwise_reference import UNARY_REFERENCE
from ..ir.types import TensorType
from .rnn import ACTIVATIONS, GATES, RECURRENT_OPS, STATES, full_attrs, operand_names, reserve_floats


class Activation:
    """f and f' of an activation name, computed in the dtype of the input."""

    def __init__(self, name):
        spec = ACTIVATIONS[name]
        if spec is None:
            self._f, self._df = (lambda v: v), (lambda v: np.ones_like(v))
        else:
            f, df = UNARY_REFERENCE[spec[0]]
            self._f, self._df = partial(f, **spec[1]), partial(df, **spec[1])

    def f(self, v):
        return np.asarray(self._f(v), dtype=v.dtype)

    def df(self, v):
        return np.asarray(self._df(v), dtype=v.dtype)


def _split(a, n):
    """The n gate blocks of the last axis (views, so gradients can accumulate into them)."""
    u = a.shape[-1] // n
    return [a[..., g * u:(g + 1) * u] for g in range(n)]


def _per_gate(v, masks, gates):
    """What each gate's matmul sees: v times that gate's dropout mask (mask[g % D])."""
    if masks is None:
        return [v] * gates, [None] * gates
    ms = [masks[g % len(masks)] for g in range(gates)]
    return [v * m for m in ms], ms


def _matmuls_backward(douts, vs, ms, mats, dmats):
    """Backward of out_g = vs[g] @ mats[g] with vs[g] = v * ms[g]: accumulate dmats, return dv."""
    dv = 0
    for g, d in enumerate(douts):
        dmats[g] += vs[g].T @ d
        t = d @ mats[g].T
        dv = dv + (t if ms[g] is None else t * ms[g])
    return dv


class _Cell:
    """Weights split per gate, their gradient buffers, and the activations."""

    def __init__(self, op, kernel, recurrent_kernel, bias, attrs):
        n = GATES[op]
        self.act = Activation(attrs["activation"])
        self.ract = Activation(attrs["recurrent_activation"])
        self.K, self.R = _split(kernel, n), _split(recurrent_kernel, n)
        self.dkernel, self.drecurrent, self.dbias = (np.zeros_like(kernel), np.zeros_like(recurrent_kernel),
                                                     np.zeros_like(bias))
        self.dK, self.dR = _split(self.dkernel, n), _split(self.drecurrent, n)
        self.bias = bias

    def input_part(self, xs):
        return [xs[g] @ self.K[g] + self.b_in[g] for g in range(len(self.K))]

    def input_backward(self, das, xs, xms):
        for g, d in enumerate(das):
            self.db_in[g] += d.sum(0)
        return _matmuls_backward(das, xs, xms, self.K, self.dK)


class SimpleRNNCell(_Cell):
    def __init__(self, kernel, recurrent_kernel, bias, attrs):
        super().__init__("simple_rnn", kernel, recurrent_kernel, bias, attrs)
        self.b_in, self.db_in = [bias], [self.dbias]

    def forward(self, xs, hs, states):
        a = self.input_part(xs)[0] + hs[0] @ self.R[0]
        return [self.act.f(a)], a

    def backward(self, a, d_new, xs, xms, hs, hms, states):
        da = d_new[0] * self.act.df(a)
        dh = _matmuls_backward([da], hs, hms, self.R, self.dR)
        return [dh], self.input_backward([da], xs, xms)


class LSTMCell(_Cell):
    def __init__(self, kernel, recurrent_kernel, bias, attrs):
        super().__init__("lstm", kernel, recurrent_kernel, bias, attrs)
        self.b_in, self.db_in = _split(bias, 4), _split(self.dbias, 4)

    def forward(self, xs, hs, states):
        _, c = states
        a = [p + hs[g] @ self.R[g] for g, p in enumerate(self.input_part(xs))]
        i, f, cc, o = self.ract.f(a[0]), self.ract.f(a[1]), self.act.f(a[2]), self.ract.f(a[3])
        c_new = f * c + i * cc
        return [o * self.act.f(c_new), c_new], (a, i, f, cc, o, c_new)

    def backward(self, cache, d_new, xs, xms, hs, hms, states):
        a, i, f, cc, o, c_new = cache
        dh, dc = d_new
        do = dh * self.act.f(c_new)
        dc = dc + dh * o * self.act.df(c_new)
        das = [dc * cc * self.ract.df(a[0]), dc * states[1] * self.ract.df(a[1]),
               dc * i * self.act.df(a[2]), do * self.ract.df(a[3])]
        dh_prev = _matmuls_backward(das, hs, hms, self.R, self.dR)
        return [dh_prev, dc * f], self.input_backward(das, xs, xms)


class GRUCell(_Cell):
    def __init__(self, kernel, recurrent_kernel, bias, attrs):
        super().__init__("gru", kernel, recurrent_kernel, bias, attrs)
        self.reset_after = attrs["reset_after"]
        if self.reset_after:  # bias = [input bias, recurrent bias]
            self.b_in, self.db_in = _split(bias[0], 3), _split(self.dbias[0], 3)
            self.b_rec, self.db_rec = _split(bias[1], 3), _split(self.dbias[1], 3)
        else:
            self.b_in, self.db_in = _split(bias, 3), _split(self.dbias, 3)

    def forward(self, xs, hs, states):
        (h,) = states
        xz, xr, xh = self.input_part(xs)
        rz, rr = hs[0] @ self.R[0], hs[1] @ self.R[1]
        if self.reset_after:
            rz, rr = rz + self.b_rec[0], rr + self.b_rec[1]
        z, r = self.ract.f(xz + rz), self.ract.f(xr + rr)
        if self.reset_after:
            rh = hs[2] @ self.R[2] + self.b_rec[2]
            ah = xh + r * rh
        else:
            rh = None
            ah = xh + (r * hs[2]) @ self.R[2]
        hh = self.act.f(ah)
        return [z * h + (1 - z) * hh], (xz + rz, xr + rr, ah, z, r, rh, hh)

    def backward(self, cache, d_new, xs, xms, hs, hms, states):
        (h,), (dh,) = states, d_new
        az, ar, ah, z, r, rh, hh = cache
        dah = dh * (1 - z) * self.act.df(ah)
        if self.reset_after:
            dr = dah * rh
            drh = dah * r
        else:
            dhr = dah @ self.R[2].T
            dr = dhr * hs[2]
        daz, dar = dh * (h - hh) * self.ract.df(az), dr * self.ract.df(ar)
        dh_prev = dh * z + _matmuls_backward([daz, dar], hs[:2], hms[:2], self.R[:2], self.dR[:2])
        if self.reset_after:
            for g, d in enumerate((daz, dar, drh)):
                self.db_rec[g] += d.sum(0)
            dh_prev = dh_prev + _matmuls_backward([drh], hs[2:], hms[2:], self.R[2:], self.dR[2:])
        else:
            # (r * h_g) @ U_h: r acts as one more per-sample mask on the dropped state.
            rm = r if hms[2] is None else r * hms[2]
            dh_prev = dh_prev + _matmuls_backward([dah], [r * hs[2]], [rm], self.R[2:], self.dR[2:])
        return [dh_prev], self.input_backward([daz, dar, dah], xs, xms)


CELLS = {"simple_rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}


def _run_forward(op, operands, attrs, keep_steps=False):
    """The loop over time. Returns (sequence, final states, steps, cell); with keep_steps,
    steps hold what the backward pass needs: (t, per-gate inputs and masks, previous
    states, cache) for each step in processing order."""
    attrs = full_attrs(attrs)
    v = dict(zip(operand_names(op, attrs), operands))
    x = v["x"]
    batch, time, _ = x.shape
    gates, units = GATES[op], attrs["units"]
    cell = CELLS[op](v["kernel"], v["recurrent_kernel"], v["bias"], attrs)
    mask = v.get("mask")
    states = [v[f"{s}0"] for s in STATES[op]]
    seq = np.zeros((batch, time, units), dtype=x.dtype)
    prev_out = np.zeros((batch, units), dtype=x.dtype)  # Keras starts from zeros, not h0
    steps = []
    for s in range(time):
        t = time - 1 - s if attrs["go_backwards"] else s
        xs, xms = _per_gate(x[:, t], v.get("dropout_mask"), gates)
        hs, hms = _per_gate(states[0], v.get("recurrent_dropout_mask"), gates)
        new, cache = cell.forward(xs, hs, states)
        out = new[0]
        if mask is not None:
            m = mask[:, t, None]
            new = [np.where(m, n, o) for n, o in zip(new, states)]
            out = np.where(m, out, 0 if attrs["zero_output_for_mask"] else prev_out)
        new = [n.astype(x.dtype) for n in new]
        seq[:, t if attrs["output_in_time_order"] else s] = out
        if keep_steps:
            steps.append((t, xs, xms, hs, hms, states, cache))
        prev_out, states = out, new
    return seq, states, steps, cell


def _run_backward(op, operands, cotangents, attrs):
    attrs = full_attrs(attrs)
    names = operand_names(op, attrs)
    v = dict(zip(names, operands))
    x, mask = v["x"], v.get("mask")
    _, _, steps, cell = _run_forward(op, operands, attrs, keep_steps=True)
    d_seq, d_states = cotangents[0], list(cotangents[1:])
    dx = np.zeros_like(x)
    d_carry = 0  # cotangent of the previous step's output, which masked steps repeat
    for s in reversed(range(len(steps))):
        t, xs, xms, hs, hms, prev_states, cache = steps[s]
        d_out = d_seq[:, t if attrs["output_in_time_order"] else s] + d_carry
        if mask is not None:
            m = mask[:, t, None]
            d_new = [np.where(m, d, 0) for d in d_states]
            d_new[0] = d_new[0] + np.where(m, d_out, 0)
            d_kept = [np.where(m, 0, d) for d in d_states]  # a masked step carries its state over
            d_carry = 0 if attrs["zero_output_for_mask"] else np.where(m, 0, d_out)
        else:
            d_new = list(d_states)
            d_new[0] = d_new[0] + d_out
            d_kept = [0] * len(d_states)
        d_prev, dx_t = cell.backward(cache, d_new, xs, xms, hs, hms, prev_states)
        dx[:, t] += dx_t
        d_states = [a + b for a, b in zip(d_prev, d_kept)]
    grads = [dx, cell.dkernel, cell.drecurrent, cell.dbias] + d_states
    return tuple(np.asarray(g, dtype=x.dtype) for g in grads)


def _register(op):
    @reference(op)
    def forward(*operands, **attrs):
        seq, states, _, _ = _run_forward(op, operands, attrs)
        if not attrs.get("reserve"):
            return (seq,) + tuple(states)
        # the reserve's contents are the backend's: the reference leaves it zero (ops/rnn.py)
        size = reserve_floats(op, attrs, [TensorType(np.shape(x), "float32") for x in operands])
        return (seq,) + tuple(states) + (np.zeros(size, np.float32),)

    @reference(f"{op}_grad")
    def backward(*operands, **attrs):
        n = len(operand_names(op, attrs))
        cotangents = operands[n:-1] if attrs.get("reserve") else operands[n:]  # recomputes: no reserve
        return _run_backward(op, operands[:n], cotangents, attrs)


for _op in RECURRENT_OPS:
    _register(_op)
