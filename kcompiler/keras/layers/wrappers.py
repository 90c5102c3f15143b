"""Wrappers: Bidirectional and TimeDistributed.

TimeDistributed applies its layer to every time step at once: (B, T, ...) is viewed as
(B*T, ...) (a reshape: no copy), the layer traces once on that view, and its output is viewed
back as (B, T, ...); a (B, T) mask goes to the layer as (B*T,).

Bidirectional runs a forward copy and a go_backwards copy of a recurrent layer and
merges their outputs: two recurrent ops and a merge op. The backward copy writes its
output sequence in input time order (the op's ``output_in_time_order``), which is
what Keras gets by flipping it back, so no reverse op is needed.
"""
from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from .. import ops
from .base import Layer

__all__ = ["Bidirectional", "TimeDistributed"]

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _serialize(layer):
    return {"module": "keras.layers", "class_name": type(layer).__name__, "config": layer.get_config(),
            "registered_name": None}


def _deserialize(config):
    from ..serialization import deserialize_layer
    return deserialize_layer(config)


def _copy(layer, name, go_backwards):
    """A fresh layer with ``layer``'s config (its own weights), renamed."""
    config = dict(layer.get_config(), name=name, go_backwards=go_backwards)
    return type(layer).from_config(config)


def _strip(prefix, name):
    return name[len(prefix):] if name.startswith(prefix) else name


class Bidirectional(Layer):
    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        if not isinstance(layer, Layer):
            raise ValueError(f"Bidirectional must wrap a keras layer instance, got {layer!r}")
        if backward_layer is not None and not isinstance(backward_layer, Layer):
            raise ValueError(f"Bidirectional: backward_layer must be a keras layer instance, got {backward_layer!r}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"Bidirectional: invalid merge_mode {merge_mode!r}; expected one of "
                             "'sum', 'mul', 'ave', 'concat' or None")
        for attr in ("go_backwards", "return_sequences", "return_state"):
            if not hasattr(layer, attr):
                raise ValueError(f"Bidirectional must wrap a recurrent layer; {layer._describe()} has no {attr}")
        super().__init__(**kwargs)
        self.forward_layer = _copy(layer, f"forward_{_strip('forward_', layer.name)}", layer.go_backwards)
        self.backward_layer = (backward_layer if backward_layer is not None else
                               _copy(layer, f"backward_{_strip('backward_', layer.name)}", not layer.go_backwards))
        self._verify()
        for sub in (self.forward_layer, self.backward_layer):
            if hasattr(sub, "zero_output_for_mask"):
                # Keras: inside Bidirectional, masked steps of a returned sequence are zeros.
                sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self._initial_weights = weights
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = getattr(layer, "stateful", False)
        self.supports_masking = True
        self.input_spec = layer.input_spec

    def _verify(self):
        fwd, bwd = self.forward_layer, self.backward_layer
        if fwd.go_backwards == bwd.go_backwards:
            raise ValueError(f"{self._describe()}: the forward and backward layers must have different "
                             f"go_backwards, got {fwd.go_backwards} for both")
        for attr in ("return_sequences", "return_state"):
            if getattr(fwd, attr) != getattr(bwd, attr):
                raise ValueError(f"{self._describe()}: the forward and backward layers must have the same "
                                 f"{attr}, got {getattr(fwd, attr)} and {getattr(bwd, attr)}")

    def build(self, input_shape):
        for sub in (self.forward_layer, self.backward_layer):
            if not sub.built:
                sub.build(input_shape)
                sub.built = True
        self.built = True
        if self._initial_weights:
            self.set_weights(self._initial_weights)
            self._initial_weights = None

    def call(self, inputs, mask=None, training=None, initial_state=None):
        if isinstance(inputs, (list, tuple)):
            inputs, initial_state = inputs[0], list(inputs[1:]) or None
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        forward_state = backward_state = None
        if initial_state is not None:
            half = len(initial_state) // 2
            forward_state, backward_state = list(initial_state[:half]), list(initial_state[half:])
        y = self.forward_layer(inputs, mask=mask, training=training, initial_state=forward_state)
        extra = {}
        if self.return_sequences:
            if not self.backward_layer._call_accepts("_output_in_time_order"):
                raise UnsupportedError(f"{self._describe()}: the backward layer {self.backward_layer._describe()} "
                                       "cannot return its sequence in input time order")
            extra["_output_in_time_order"] = True
        y_rev = self.backward_layer(inputs, mask=mask, training=training, initial_state=backward_state, **extra)
        states = []
        if self.return_state:
            states = list(y[1:]) + list(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        output = self._merge(y, y_rev)
        if self.return_state:
            return (output if isinstance(output, list) else [output]) + states
        return output

    def _merge(self, y, y_rev):
        if self.merge_mode == "concat":
            return ops.concatenate([y, y_rev], axis=-1)
        if self.merge_mode == "sum":
            return ops.add(y, y_rev)
        if self.merge_mode == "ave":
            return ops.divide(ops.add(y, y_rev), 2.0)
        if self.merge_mode == "mul":
            return ops.multiply(y, y_rev)
        return [y, y_rev]

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        output_mask = mask if self.return_sequences else None
        masks = [output_mask] if self.merge_mode else [output_mask, output_mask]
        if self.return_state:
            masks += [None] * (len(self.forward_layer.state_size) * 2)
        return masks if len(masks) > 1 else masks[0]

    def get_config(self):
        return {**super().get_config(), "merge_mode": self.merge_mode, "layer": _serialize(self.forward_layer),
                "backward_layer": _serialize(self.backward_layer)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = _deserialize(config["layer"])
        if config.get("backward_layer") is not None:
            config["backward_layer"] = _deserialize(config["backward_layer"])
        return cls(**config)


class TimeDistributed(Layer):
    def __init__(self, layer, **kwargs):
        if not isinstance(layer, Layer):
            raise ValueError("Please initialize `TimeDistributed` layer with a `keras.layers.Layer` instance. "
                             f"Received: {layer}")
        super().__init__(**kwargs)
        self.layer = layer
        self.supports_masking = True

    def build(self, input_shape):
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) < 3:
            raise ValueError("`TimeDistributed` Layer should be passed an `input_shape` with at least 3 dimensions, "
                             f"received: {input_shape}")
        if not self.layer.built:
            self.layer.build((input_shape[0], *input_shape[2:]))
            self.layer.built = True

    def call(self, inputs, training=None, mask=None):
        time, step_shape = inputs.shape[1], tuple(inputs.shape[2:])
        if time is None or None in step_shape:
            raise ShapeError(f"{self._describe()}: the time and feature sizes of the input must be known, got "
                             f"{fmt_shape(inputs.shape)}")
        kwargs = {}
        if self.layer._call_accepts("training"):
            kwargs["training"] = training
        if mask is not None and self.layer._call_accepts("mask"):
            kwargs["mask"] = ops.reshape(mask, (-1,) + tuple(mask.shape[2:]))
        y = self.layer(ops.reshape(inputs, (-1,) + step_shape), **kwargs)
        if None in y.shape[1:]:
            raise ShapeError(f"{self._describe()}: the wrapped layer's output {fmt_shape(y.shape)} must have known "
                             "sizes after the batch")
        return ops.reshape(y, (-1, time) + tuple(y.shape[1:]))

    def get_config(self):
        return {**super().get_config(), "layer": _serialize(self.layer)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(_deserialize(config.pop("layer")), **config)

