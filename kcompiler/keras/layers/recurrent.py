"""Recurrent layers: SimpleRNN, LSTM, GRU.

Each call emits one recurrent op (``simple_rnn``, ``lstm``, ``gru``; see
kcompiler/ops/rnn.py) that runs the whole sequence, plus what feeds it: zero
initial states (``fill``), zero bias without ``use_bias``, and in training the
dropout masks (the ``dropout`` op applied to ones, one mask per sample reused at
every step, as Keras does). The layer picks what it returns from the op's outputs
(sequence, final states) with tuple items.
"""
import numpy as np

from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from ...ops.rnn import ACTIVATIONS, GATES, STATES, bias_shape
from .. import activations, backend, constraints, initializers, ops, regularizers
from .base import InputSpec, Layer

__all__ = ["SimpleRNN", "LSTM", "GRU"]


class _UnitForgetBias:
    """LSTM's bias initialiser with unit_forget_bias: the forget-gate block starts at 1."""

    def __init__(self, base, units):
        self.base, self.units = base, units

    def __call__(self, shape, dtype="float32"):
        u = self.units
        return np.concatenate([self.base((u,), dtype=dtype), np.ones((u,), dtype=dtype),
                               self.base((2 * u,), dtype=dtype)]).astype(dtype)


class _RNN(Layer):
    """What SimpleRNN, LSTM and GRU share: arguments, weights, masks, dropout and outputs."""

    op = None                       # the recurrent op this layer emits
    has_recurrent_activation = True

    def __init__(self, units, activation, recurrent_activation, use_bias, kernel_initializer,
                 recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
                 bias_regularizer, activity_regularizer, kernel_constraint, recurrent_constraint,
                 bias_constraint, dropout, recurrent_dropout, return_sequences, return_state, go_backwards,
                 stateful, unroll, seed, kwargs):
        zero_output_for_mask = kwargs.pop("zero_output_for_mask", False)
        self.implementation = int(kwargs.pop("implementation", 2))
        kwargs.pop("use_cudnn", None)  # a backend choice; there is one implementation here
        if kwargs.pop("time_major", False):
            raise UnsupportedError(f"{type(self).__name__}: time_major=True is not supported")
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"{self._describe()}: units must be a positive integer, got {units!r}")
        if stateful:
            raise UnsupportedError(f"{self._describe()}: stateful=True is not supported")
        self.units = int(units)
        self.activation = self._activation(activation, "activation")
        if self.has_recurrent_activation:
            self.recurrent_activation = self._activation(recurrent_activation, "recurrent_activation")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout = min(1.0, max(0.0, float(dropout)))
        self.recurrent_dropout = min(1.0, max(0.0, float(recurrent_dropout)))
        if self.recurrent_dropout != 0.0:
            self.implementation = 1  # as Keras: per-gate masks
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = False
        self.unroll = bool(unroll)  # accepted; the loop is one op either way
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.seed = seed
        # Seeds of the two dropout masks, drawn only when dropout is used so plain layers
        # leave the session's random stream (weight initialisation) untouched.
        self._dropout_seeds = None
        if self.dropout or self.recurrent_dropout:
            self._dropout_seeds = ((seed, seed + 1) if seed is not None
                                   else (backend.next_seed(), backend.next_seed()))
        self.supports_masking = True
        self.input_spec = InputSpec(ndim=3)

    def _activation(self, identifier, what):
        try:
            fn = activations.get(identifier)
        except ValueError as e:
            raise ValueError(f"{self._describe()}: {e}") from None
        name = activations.serialize(fn)
        if name not in ACTIVATIONS or activations.get(name) is not fn:
            raise UnsupportedError(f"{self._describe()}: {what} {name!r} cannot run inside the recurrent op; "
                                   f"use one of {', '.join(sorted(ACTIVATIONS))}")
        return fn

    @property
    def state_size(self):
        """One entry per state (h, and c for LSTM), as Keras's RNN.state_size."""
        return [self.units] * len(STATES[self.op])

    # ---- weights ------------------------------------------------------------------------

    def _bias_initializer(self):
        return self.bias_initializer

    def _bias_shape(self):
        return bias_shape(self.op, self.units, getattr(self, "reset_after", True))

    def build(self, input_shape):
        if isinstance(input_shape, list) and input_shape and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]  # [sequences, *initial states]
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ShapeError(f"{self._describe()} expects input of shape (batch, time, features), "
                             f"got {fmt_shape(input_shape)}")
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ShapeError(f"{self._describe()}: the last dimension of the input must be known, "
                             f"got input shape {fmt_shape(input_shape)}")
        width = GATES[self.op] * self.units
        self.kernel = self.add_weight(shape=(input_dim, width), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, constraint=self.kernel_constraint,
                                      name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, width), initializer=self.recurrent_initializer,
                                                regularizer=self.recurrent_regularizer,
                                                constraint=self.recurrent_constraint, name="recurrent_kernel")
        self.bias = (self.add_weight(shape=self._bias_shape(), initializer=self._bias_initializer(),
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                     name="bias") if self.use_bias else None)
        self.input_spec = InputSpec(ndim=3, axes={-1: input_dim})
        self.built = True

    # ---- call ---------------------------------------------------------------------------

    def call(self, inputs, mask=None, training=None, initial_state=None, _output_in_time_order=False):
        if isinstance(inputs, (list, tuple)):  # [sequences, *initial states], as Keras 2 accepted
            if initial_state is not None:
                raise ValueError(f"{self._describe()}: initial states given both in the inputs list and as "
                                 "initial_state")
            inputs, initial_state = inputs[0], list(inputs[1:]) or None
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        return self._run(inputs, mask, bool(training), initial_state, _output_in_time_order)

    def _initial_states(self, batch, dtype, initial_state):
        n = len(STATES[self.op])
        if initial_state is None:
            return [ops.zeros((batch, self.units), dtype) for _ in range(n)]
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        if len(states) != n:
            raise ValueError(f"{self._describe()} expects {n} initial state(s) of shape (batch, {self.units}), "
                             f"got {len(states)}")
        return states

    def _dropout_masks(self, x, batch, training):
        """The dropout-mask operands for a training call: ones through the dropout op, one
        (1 or gates, batch, width) tensor each; Keras draws them once per call."""
        masks = {}
        gates = GATES[self.op]
        count = gates if (self.implementation == 1 and self.op != "simple_rnn") else 1
        for name, rate, width, seed in (("dropout_mask", self.dropout, x.shape[-1], 0),
                                        ("recurrent_dropout_mask", self.recurrent_dropout, self.units, 1)):
            if training and 0.0 < rate < 1.0:
                ones = ops.ones((count, batch, width), x.dtype)
                masks[name] = ops.dropout(ones, rate, self._dropout_seeds[seed])
        return masks

    def _run(self, x, mask, training, initial_state, output_in_time_order=False):
        batch = x.shape[0]
        states = self._initial_states(batch, x.dtype, initial_state)
        bias = self.bias if self.use_bias else ops.zeros(self._bias_shape(), x.dtype)
        attrs = {"units": self.units, "activation": activations.serialize(self.activation),
                 "go_backwards": self.go_backwards, "zero_output_for_mask": self.zero_output_for_mask,
                 "output_in_time_order": bool(output_in_time_order and self.go_backwards)}
        if self.has_recurrent_activation:
            attrs["recurrent_activation"] = activations.serialize(self.recurrent_activation)
        attrs.update(self._extra_attrs())
        operands = [x, self.kernel, self.recurrent_kernel, bias, *states]
        if mask is not None:
            if mask.dtype != "bool":
                mask = ops.cast(mask, "bool")
            operands.append(mask)
            attrs["masked"] = True
        for name, m in self._dropout_masks(x, batch, training).items():
            operands.append(m)
            attrs[name] = True
        outs = backend.apply_op(self.op, operands, **attrs)
        sequence, final_states = outs[0], list(outs[1:])
        if self.return_sequences:
            output = sequence
        elif self.zero_output_for_mask and mask is not None:
            output = self._last_step(sequence, attrs["output_in_time_order"])
        else:
            output = final_states[0]  # the output of the last step is h (carried over masked steps)
        return [output] + final_states if self.return_state else output

    def _last_step(self, sequence, time_ordered):
        """The output of the last processed step (zero if that step is masked)."""
        time = sequence.shape[1]
        if time is None:
            raise UnsupportedError(f"{self._describe()}: zero_output_for_mask=True with return_sequences=False "
                                   "needs a known sequence length")
        last = 0 if time_ordered else time - 1
        return ops.reshape(ops.slice(sequence, (0, last, 0), (-1, 1, -1)), (0, self.units))

    def _extra_attrs(self):
        return {}

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return [output_mask] + [None] * len(STATES[self.op])
        return output_mask

    # ---- config -------------------------------------------------------------------------

    def _config_head(self):
        return {**super().get_config(), "return_sequences": self.return_sequences,
                "return_state": self.return_state, "go_backwards": self.go_backwards, "stateful": self.stateful,
                "unroll": self.unroll, "zero_output_for_mask": self.zero_output_for_mask, "units": self.units,
                "activation": activations.serialize(self.activation)}

    def _config_weights(self):
        return {"kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
                "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout}

    def _config_initializers(self):
        return {"kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}


class SimpleRNN(_RNN):
    op = "simple_rnn"
    has_recurrent_activation = False

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, seed=None, **kwargs):
        super().__init__(units, activation, None, use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer,
                         activity_regularizer, kernel_constraint, recurrent_constraint, bias_constraint, dropout,
                         recurrent_dropout, return_sequences, return_state, go_backwards, stateful, unroll, seed,
                         kwargs)

    def get_config(self):
        # Keras 3's SimpleRNN config has no seed.
        return {**self._config_head(), "use_bias": self.use_bias, **self._config_initializers(),
                **self._config_weights()}


class LSTM(_RNN):
    op = "lstm"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, kernel_regularizer=None,
                 recurrent_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
                         bias_regularizer, activity_regularizer, kernel_constraint, recurrent_constraint,
                         bias_constraint, dropout, recurrent_dropout, return_sequences, return_state,
                         go_backwards, stateful, unroll, seed, kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_initializer(self):
        if self.unit_forget_bias:
            return _UnitForgetBias(self.bias_initializer, self.units)
        return self.bias_initializer

    def get_config(self):
        return {**self._config_head(),
                "recurrent_activation": activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias, **self._config_initializers(),
                "unit_forget_bias": self.unit_forget_bias, **self._config_weights(), "seed": self.seed}


class GRU(_RNN):
    op = "gru"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0, recurrent_dropout=0.0,
                 seed=None, return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, reset_after=True, **kwargs):
        self.reset_after = bool(reset_after)
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
                         bias_regularizer, activity_regularizer, kernel_constraint, recurrent_constraint,
                         bias_constraint, dropout, recurrent_dropout, return_sequences, return_state,
                         go_backwards, stateful, unroll, seed, kwargs)

    def _extra_attrs(self):
        return {"reset_after": self.reset_after}

    def get_config(self):
        return {**self._config_head(),
                "recurrent_activation": activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias, **self._config_initializers(), **self._config_weights(),
                "reset_after": self.reset_after, "seed": self.seed}
