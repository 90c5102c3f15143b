"""MultiHeadAttention (Keras 3's arguments, weights, masks and numbers).

The projections are matmuls on reshaped views of Keras's (E, heads, dim) kernels, with the
biases as their epilogues; each projection's kernel and bias live in a sublayer named as
Keras's (query_dense 'query', ..., output_dense 'attention_output'), so Keras's files load. When
the probabilities are not needed Keras 3 calls ``dot_product_attention``, where a masked score is
replaced by a large negative, so a fully masked row attends uniformly; here that is the fused
``attention`` op (ops/attention.py: online softmax, no (B, heads, T, S) tensor in memory, forward
or backward) from sequence length FUSED_ATTENTION_MIN_LENGTH, and the same math through batched
GEMMs below it.
When ``return_attention_scores=True``, or in training with ``dropout > 0``, the layer composes
the scores as Keras does on that path: scaled query, batched matmul, Keras's masked Softmax (a
fully masked row is all zeros there), dropout, a second matmul.

The mask is the AND of the query's Keras mask (B, T, 1), the value's and key's (B, 1, S),
``attention_mask`` and, with ``use_causal_mask=True``, the lower triangle; the fused op takes
the causal part as an attribute and the rest as one (B, T, S) float mask.

Inputs of higher rank, (batch, d1, ..., dk, features), attend over ``attention_axes`` (Keras's
default: all of d1..dk jointly): the other d axes join the batch and the attention axes are
flattened into one sequence (a transpose and reshapes around the rank-3 computation, which
is what Keras's einsum equations compute); the scores come back as Keras's (batch,
<other axes>, heads, <query attention axes>, <key attention axes>). There ``attention_mask``
is (batch, <query attention axes>, <key attention axes>), and Keras masks and
``use_causal_mask`` (whose meaning Keras ties to axis 1) are refused.
``use_gate``, ``sliding_window`` and ``flash_attention`` as Keras's defaults only.
"""
import math

import numpy as np

from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from .. import backend, constraints, initializers, ops, regularizers
from .activation import LARGE_NEGATIVE
from .base import Layer

__all__ = ["AdditiveAttention", "Attention", "MultiHeadAttention"]

# From this sequence length (query or key side; also when a length is not static) the layers use
# the fused ``attention`` op, which never holds the (B, heads, T, S) scores; shorter sequences
# take the composition through batched GEMMs, whose scores are small and which runs faster: the
# fused op is a generic kernel description (no GEMM micro-kernel), and at T = S = 128 (the TX
# workload) its kernels took ~45 % of the training step, 2.5x the GEMM composition's time.
FUSED_ATTENTION_MIN_LENGTH = 512


def use_fused_attention(t_len, s_len):
    return t_len is None or s_len is None or max(t_len, s_len) >= FUSED_ATTENTION_MIN_LENGTH


class _Projection(Layer):
    """One of MultiHeadAttention's four projections, a sublayer as Keras's EinsumDense ones
    (query_dense, key_dense, value_dense, output_dense, named query, key, value and
    attention_output) holding its kernel and bias, so that the weights of a file Keras saved
    find their places."""

    def __init__(self, owner, name, kernel_shape, bias_shape):
        super().__init__(name=name)
        self.kernel = self.add_weight(shape=kernel_shape, initializer=owner.kernel_initializer,
                                      regularizer=owner.kernel_regularizer, constraint=owner.kernel_constraint,
                                      name="kernel")
        self.bias = (self.add_weight(shape=bias_shape, initializer=owner.bias_initializer,
                                     regularizer=owner.bias_regularizer, constraint=owner.bias_constraint,
                                     name="bias") if owner.use_bias else None)
        for var in self._own_weights():   # Keras's paths: multi_head_attention/query/kernel
            var.path = f"{owner.name}/{var.path}"
        self.built = True


class MultiHeadAttention(Layer):
    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True, output_shape=None,
                 attention_axes=None, use_gate=False, sliding_window=None, flash_attention=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 seed=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.supports_masking = True
        for name, value in (("num_heads", num_heads), ("key_dim", key_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{self._describe()}: {name} must be a positive integer, got {value!r}")
        self.num_heads, self.key_dim = num_heads, key_dim
        self.value_dim = value_dim if value_dim is not None else key_dim
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{self._describe()}: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.use_bias = use_bias
        if output_shape is not None and not isinstance(output_shape, int) and \
                not (isinstance(output_shape, (list, tuple)) and len(output_shape) == 1):
            raise UnsupportedError(f"{self._describe()}: output_shape must be an integer (or a 1-tuple), got "
                                   f"{output_shape!r}")
        # Keras keeps a given output_shape as a tuple
        self.output_shape_arg = None if output_shape is None else tuple(int(d) for d in np.atleast_1d(output_shape))
        if attention_axes is not None:
            if not isinstance(attention_axes, (int, list, tuple)):
                raise ValueError(f"{self._describe()}: `attention_axes` must be an int, list, or tuple. Received: "
                                 f"attention_axes={attention_axes!r}")
            attention_axes = tuple(int(a) for a in np.atleast_1d(attention_axes))
        self.attention_axes = attention_axes
        for name, value, default in (("use_gate", use_gate, False), ("sliding_window", sliding_window, None),
                                     ("flash_attention", flash_attention, None)):
            if value != default and not (name == "flash_attention" and value is False):
                raise UnsupportedError(f"{self._describe()}: {name}={value!r} is not supported (only {default!r})")
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.seed = seed
        self._op_seed = seed if seed is not None else backend.next_seed()
        self._projections_built = False

    # ---- weights -----------------------------------------------------------------------------

    def build(self, query_shape, value_shape=None, key_shape=None):
        """Keras's build(query_shape, value_shape, key_shape); the layer's __call__ builds with the
        query's shape alone, so the weights are made at the first call, which knows all three."""
        if value_shape is None:
            return
        key_shape = value_shape if key_shape is None else key_shape
        rank = len(query_shape)
        for name, shape in (("query", query_shape), ("value", value_shape), ("key", key_shape)):
            if len(shape) < 3 or shape[-1] is None:
                raise ShapeError(f"{self._describe()}: {name} must have shape (batch, length, features) or (batch, "
                                 f"d1, ..., features) with known features, got {fmt_shape(shape)}")
            if len(shape) != rank:
                raise ShapeError(f"{self._describe()}: query, value and key must have the same rank, got query "
                                 f"{fmt_shape(query_shape)} and {name} {fmt_shape(shape)}")
        if tuple(value_shape[1:-1]) != tuple(key_shape[1:-1]):
            raise ValueError(f"{self._describe()}: All dimensions of `value` and `key`, except the last one, must be "
                             f"equal. Received: value_shape={tuple(value_shape)} and key_shape={tuple(key_shape)}")
        out_features = query_shape[-1] if self.output_shape_arg is None else \
            self.output_shape_arg[0]
        heads = self.num_heads
        self.query_dense = _Projection(self, "query", (query_shape[-1], heads, self.key_dim), (heads, self.key_dim))
        self.key_dense = _Projection(self, "key", (key_shape[-1], heads, self.key_dim), (heads, self.key_dim))
        self.value_dense = _Projection(self, "value", (value_shape[-1], heads, self.value_dim),
                                       (heads, self.value_dim))
        self.output_dense = _Projection(self, "attention_output", (heads, self.value_dim, out_features),
                                        (out_features,))
        # Keras fills in the default when it builds (all axes between batch and features) and
        # counts a negative axis from the end of the projected (..., heads, dim) tensor
        axes = tuple(range(1, rank - 1)) if self.attention_axes is None else \
            tuple(a if a >= 0 else rank + a for a in self.attention_axes)
        if not axes or len(set(axes)) != len(axes) or any(not 1 <= a <= rank - 2 for a in axes):
            raise ValueError(f"{self._describe()}: attention_axes={self.attention_axes!r} must name distinct axes "
                             f"between the batch and the features of inputs of rank {rank}")
        self.attention_axes = axes
        self._projections_built = True
        self.built = True

    def _project(self, x, projection, dim):
        """x (B, L, E) -> (B, L, heads, dim): one matmul by the (E, heads*dim) view of the kernel."""
        kernel, bias = projection.kernel, projection.bias
        y = ops.matmul(x, ops.reshape(kernel, (kernel.shape[0], self.num_heads * dim)))
        if bias is not None:
            y = backend.apply_op("bias_add", [y, ops.reshape(bias, (self.num_heads * dim,))])
        return ops.reshape(y, (0, 0, self.num_heads, dim))

    # ---- call --------------------------------------------------------------------------------

    def call(self, query, value, key=None, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
             return_attention_scores=False, training=None, use_causal_mask=False):
        if key is None:
            key = value
        if not self._projections_built:
            self.build(tuple(query.shape), tuple(value.shape), tuple(key.shape))
        # Keras takes the query's mask from the tensor itself, the others from the arguments or
        # their tensors
        query_mask = getattr(query, "_keras_mask", None)
        value_mask = value_mask if value_mask is not None else getattr(value, "_keras_mask", None)
        key_mask = key_mask if key_mask is not None else getattr(key, "_keras_mask", None)
        if len(query.shape) == 3:
            return self._attend(query, value, key, query_mask, value_mask, key_mask, attention_mask,
                                return_attention_scores, training, use_causal_mask)
        return self._attend_over_axes(query, value, key, (query_mask, value_mask, key_mask), attention_mask,
                                      return_attention_scores, training, use_causal_mask)

    def _attend_over_axes(self, query, value, key, keras_masks, attention_mask, return_attention_scores, training,
                          use_causal_mask):
        """Inputs of rank > 3: the axes that are not attended join the batch, the attended ones
        become one sequence axis, and the rank-3 computation runs on that view."""
        if any(m is not None for m in keras_masks) or use_causal_mask:
            raise UnsupportedError(f"{self._describe()}: Keras masks and use_causal_mask are supported for inputs of "
                                   f"rank 3 only, got query {fmt_shape(query.shape)}")
        rank, axes = len(query.shape), self.attention_axes
        others = [a for a in range(1, rank - 1) if a not in axes]
        perm = (0, *others, *axes, rank - 1)
        for name, x in (("value", value), ("key", key)):
            if any(x.shape[a] != query.shape[a] for a in others):
                raise ShapeError(f"{self._describe()}: the axes not attended over ({others}) must be equal in query "
                                 f"{fmt_shape(query.shape)} and {name} {fmt_shape(x.shape)}")

        def as_sequences(x):
            return ops.reshape(ops.transpose(x, perm), (-1, int(np.prod([x.shape[a] for a in axes])), x.shape[-1]))

        other_dims = [query.shape[a] for a in others]
        t_dims, s_dims = [query.shape[a] for a in axes], [value.shape[a] for a in axes]
        mask = None
        if attention_mask is not None:
            expected = 1 + 2 * len(axes)
            if len(attention_mask.shape) != expected:
                raise ShapeError(f"{self._describe()}: attention_mask must have shape (batch, {tuple(t_dims)}..., "
                                 f"{tuple(s_dims)}...) for attention over axes {axes}, got "
                                 f"{fmt_shape(attention_mask.shape)}")
            t_len, s_len = int(np.prod(t_dims)), int(np.prod(s_dims))
            mask = ops.reshape(attention_mask, (-1, 1, t_len, s_len))
            mask = ops.reshape(ops.broadcast_to(mask, (0, int(np.prod(other_dims)), t_len, s_len)),
                               (-1, t_len, s_len))
        out = self._attend(as_sequences(query), as_sequences(value), as_sequences(key), None, None, None, mask,
                           return_attention_scores, training, False)
        y, scores = out if return_attention_scores else (out, None)
        y = ops.reshape(y, (-1, *other_dims, *t_dims, y.shape[-1]))
        y = ops.transpose(y, tuple(int(i) for i in np.argsort(perm)))
        if not return_attention_scores:
            return y
        return y, ops.reshape(scores, (-1, *other_dims, self.num_heads, *t_dims, *s_dims))

    def _attend(self, query, value, key, query_mask, value_mask, key_mask, attention_mask, return_attention_scores,
                training, use_causal_mask):
        """The rank-3 layer: (batch, length, features) inputs."""
        q = self._project(query, self.query_dense, self.key_dim)
        k = self._project(key, self.key_dense, self.key_dim)
        v = self._project(value, self.value_dense, self.value_dim)
        mask = self._mask(query, value, query_mask, value_mask, key_mask, attention_mask)
        scale = 1.0 / math.sqrt(float(self.key_dim))
        scores = None
        if return_attention_scores or (training and self.dropout > 0.0):
            context, scores = self._composed(q, k, v, mask, use_causal_mask, scale, training)
        elif not use_fused_attention(q.shape[1], k.shape[1]):
            # Keras's dot_product_attention path: a row whose keys are all masked is uniform
            context, _ = self._composed(q, k, v, mask, use_causal_mask, scale, training, zero_masked_rows=False)
        else:
            operands = [q, k, v] + ([ops.broadcast_to(mask, (0, query.shape[1], value.shape[1]))]
                                    if mask is not None else [])
            context, _ = backend.apply_op("attention", operands, scale=scale, causal=bool(use_causal_mask))
        flat = ops.reshape(context, (0, 0, self.num_heads * self.value_dim))
        kernel, bias = self.output_dense.kernel, self.output_dense.bias
        y = ops.matmul(flat, ops.reshape(kernel, (self.num_heads * self.value_dim, kernel.shape[-1])))
        if bias is not None:
            y = backend.apply_op("bias_add", [y, bias])
        return (y, scores) if return_attention_scores else y

    def _mask(self, query, value, query_mask, value_mask, key_mask, attention_mask):
        """The non-causal part of the mask as float32 (B or 1, T or 1, S or 1), or None."""
        parts = []
        if query_mask is not None:
            parts.append(ops.expand_dims(ops.cast(query_mask, "float32"), -1))
        for m in (value_mask, key_mask):
            if m is not None:
                parts.append(ops.expand_dims(ops.cast(m, "float32"), -2))
        if attention_mask is not None:
            m = ops.cast(attention_mask, "float32")
            if len(m.shape) != 3:
                raise ShapeError(f"{self._describe()}: attention_mask must have shape (batch, {query.shape[1]}, "
                                 f"{value.shape[1]}), got {fmt_shape(m.shape)}")
            parts.append(m)
        if not parts:
            return None
        total = parts[0]
        for m in parts[1:]:
            total = ops.multiply(total, m)
        if len(total.shape) == 2:
            total = ops.expand_dims(total, 0)
        return total

    def _composed(self, q, k, v, mask, causal, scale, training, zero_masked_rows=True):
        """Keras's path with explicit probabilities: (context (B, T, H, Dv), scores (B, H, T, S));
        ``zero_masked_rows``: masked probabilities are zeros, so a row whose keys are all masked is
        zero (Keras's masked Softmax), else such a row is uniform (its dot_product_attention)."""
        t_len, s_len = q.shape[1], k.shape[1]
        qh = ops.transpose(ops.multiply(q, scale), (0, 2, 1, 3))
        kh = ops.transpose(k, (0, 2, 1, 3))
        vh = ops.transpose(v, (0, 2, 1, 3))
        logits = backend.apply_op("matmul", [qh, kh], transpose_b=True)
        keep = None
        if mask is not None:
            keep = ops.greater(ops.expand_dims(mask, 1), 0.5)
        if causal:
            lower = ops.convert_to_tensor(np.tril(np.ones((1, 1, t_len, s_len), bool)))
            keep = lower if keep is None else ops.logical_and(keep, lower)
        if keep is not None:
            logits = ops.where(keep, logits, LARGE_NEGATIVE)
        scores = ops.softmax(logits, axis=-1)
        if keep is not None and zero_masked_rows:
            scores = ops.where(keep, scores, 0.0)
        weights = ops.dropout(scores, self.dropout, self._op_seed) if training and self.dropout > 0.0 else scores
        context = ops.transpose(ops.matmul(weights, vh), (0, 2, 1, 3))
        return context, scores

    def compute_mask(self, inputs, mask=None):
        return mask   # the query's mask: Keras passes the first input's mask on

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "dropout": self.dropout, "use_bias": self.use_bias,
                "use_gate": False, "output_shape": self.output_shape_arg, "attention_axes": self.attention_axes,
                "sliding_window": None,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint), "seed": self.seed}


class Attention(Layer):
    """Keras's dot-product (Luong) attention: ``layer([query, value(, key)], mask=[query_mask,
    value_mask])``. With ``score_mode='dot'``, no returned scores, no dropout in training and
    sequences from FUSED_ATTENTION_MIN_LENGTH it is the fused ``attention`` op with one head (a learned ``scale`` multiplies the query
    first: the same scores); otherwise Keras's composition (scores, masked positions lowered
    by 1e9, softmax, dropout, matmul; ``'concat'`` scores as Keras computes them). Positions of
    a masked query give zeros. A row whose keys are all masked is uniform in the fused path
    (Keras's lowered scores are uniform too unless the scores span more than float32's
    rounding of 1e9)."""

    def __init__(self, use_scale=False, score_mode="dot", dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"{self._describe()}: Invalid value for argument score_mode. Expected one of "
                             f"{{'dot', 'concat'}}. Received: score_mode={score_mode}")
        self.use_scale, self.score_mode = bool(use_scale), score_mode
        self.dropout, self.seed = float(dropout), seed
        self._op_seed = seed if seed is not None else backend.next_seed()
        self.supports_masking = True

    def _validate(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError(f"{self._describe()} layer must be called on a list of inputs, namely [query, value] "
                             f"or [query, value, key]. Received: {inputs!r}")

    def build(self, input_shape):
        self._validate(input_shape)
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale") if self.use_scale else None
        self.concat_score_weight = (self.add_weight(shape=(), initializer="ones", name="concat_score_weight")
                                    if self.score_mode == "concat" else None)

    def call(self, inputs, mask=None, training=False, return_attention_scores=False, use_causal_mask=False):
        self._validate(inputs)
        q, v = inputs[0], inputs[1]
        k = inputs[2] if len(inputs) > 2 else v
        q_mask, v_mask = (mask[0], mask[1]) if mask else (None, None)
        if (self.score_mode == "dot" and not return_attention_scores and not (training and self.dropout > 0)
                and use_fused_attention(q.shape[1], k.shape[1])):
            output, scores = self._fused(q, k, v, v_mask, use_causal_mask), None
        else:
            output, scores = self._composed(q, k, v, v_mask, use_causal_mask, training)
        if q_mask is not None:
            output = ops.where(ops.expand_dims(q_mask, -1), output, 0.0)
        return (output, scores) if return_attention_scores else output

    def _fused(self, q, k, v, v_mask, causal):
        if self.scale is not None:
            q = ops.multiply(q, self.scale)
        operands = [ops.expand_dims(t, 2) for t in (q, k, v)]   # one head: (B, L, 1, dim)
        if v_mask is not None:
            keep = ops.expand_dims(ops.cast(v_mask, "float32"), 1)
            operands.append(ops.broadcast_to(keep, (0, q.shape[1], k.shape[1])))
        context, _ = backend.apply_op("attention", operands, scale=1.0, causal=bool(causal))
        return ops.squeeze(context, 2)

    def _scores(self, q, k):
        if self.score_mode == "dot":
            scores = backend.apply_op("matmul", [q, k], transpose_b=True)
            return scores if self.scale is None else ops.multiply(scores, self.scale)
        total = ops.add(ops.expand_dims(q, -2), ops.expand_dims(k, -3))
        if self.scale is not None:
            total = ops.multiply(self.scale, total)
        return ops.multiply(self.concat_score_weight, ops.sum(ops.tanh(total), axis=-1))

    def _composed(self, q, k, v, v_mask, causal, training):
        scores = self._scores(q, k)
        keep = None if v_mask is None else ops.expand_dims(ops.cast(v_mask, "bool"), -2)
        if causal:
            lower = ops.convert_to_tensor(np.tril(np.ones((1, q.shape[1], k.shape[1]), bool)))
            keep = lower if keep is None else ops.logical_and(keep, lower)
        if keep is not None:
            scores = ops.where(keep, scores, ops.subtract(scores, 1e9))
        weights = ops.softmax(scores, axis=-1)
        dropped = ops.dropout(weights, self.dropout, self._op_seed) if training and self.dropout > 0 else weights
        return ops.matmul(dropped, v), weights

    def compute_mask(self, inputs, mask=None):
        return None if not mask or mask[0] is None else mask[0]

    def get_config(self):
        return {**super().get_config(), "use_scale": self.use_scale, "score_mode": self.score_mode,
                "dropout": self.dropout, "seed": self.seed}


class AdditiveAttention(Attention):
    """Keras's additive (Bahdanau) attention: scores sum(scale * tanh(q + k)) over the features,
    with a learned (dim,) ``scale``; always Keras's composition (the scores are not dot
    products, so the fused op does not apply)."""

    def __init__(self, use_scale=True, dropout=0.0, **kwargs):
        kwargs.pop("score_mode", None)
        super().__init__(use_scale=use_scale, dropout=dropout, **kwargs)
        self.score_mode = "additive"

    def build(self, input_shape):
        self._validate(input_shape)
        self.concat_score_weight = None
        self.scale = (self.add_weight(shape=(input_shape[0][-1],), initializer="glorot_uniform", name="scale")
                      if self.use_scale else None)

    def _scores(self, q, k):
        tanh = ops.tanh(ops.add(ops.expand_dims(q, -2), ops.expand_dims(k, -3)))
        return ops.sum(tanh if self.scale is None else ops.multiply(self.scale, tanh), axis=-1)

    def get_config(self):
        config = super().get_config()
        del config["score_mode"]
        return config
