"""BatchNormalization, LayerNormalization and GroupNormalization, as Keras 3 computes them.

BatchNormalization: biased batch variance for both the output and the moving-variance update;
a frozen layer (trainable=False) runs in inference mode. Training mode traces the ops of
kcompiler/ops/batch_norm.py (statistics, element-wise normalisation, one gradient op);
inference mode is element-wise math on the moving statistics. LayerNormalization and
GroupNormalization are the ``layer_norm`` op (kcompiler/ops/norm.py): one kernel forward, one
backward. LayerNormalization flattens several trailing axes into one (a reshape: no copy);
axes that are not trailing are moved there by a transpose first (a copy each way), and
GroupNormalization's channel axis likewise when it is not the last.
"""
from ...errors import ShapeError, UnsupportedError
from ...ir.types import fmt_shape
from .. import backend, constraints, initializers, ops, regularizers
from .base import InputSpec, Layer


class BatchNormalization(Layer):
    def __init__(self, axis=-1, momentum=0.99, epsilon=0.001, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, synchronized=False, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = center, scale
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True

    def build(self, input_shape):
        axis = self.axis % len(input_shape)
        dim = input_shape[axis]
        if dim is None:
            raise ShapeError(f"{self._describe()}: axis {self.axis} of the input must be known, got {input_shape}")
        shape = (dim,)
        self.gamma = (self.add_weight(shape=shape, initializer=self.gamma_initializer, name="gamma",
                                      regularizer=self.gamma_regularizer, constraint=self.gamma_constraint)
                      if self.scale else None)
        self.beta = (self.add_weight(shape=shape, initializer=self.beta_initializer, name="beta",
                                     regularizer=self.beta_regularizer, constraint=self.beta_constraint)
                     if self.center else None)
        self.moving_mean = self.add_weight(shape=shape, initializer=self.moving_mean_initializer,
                                           name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(shape=shape, initializer=self.moving_variance_initializer,
                                               name="moving_variance", trainable=False)
        self.input_spec = InputSpec(ndim=len(input_shape), axes={self.axis: dim})

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        axis = self.axis % rank
        bshape = tuple(inputs.shape[i] if i == axis else 1 for i in range(rank))

        def as_broadcast(v):
            return ops.reshape(v, bshape) if axis != rank - 1 else v

        if training and self.trainable:
            # one op for the statistics, one element-wise op for the normalisation (it fuses
            # with the activation after it); their gradient is one batch_norm_grad kernel
            mean, variance = backend.apply_op("batch_norm_stats", [inputs], axis=axis)
            flat_mean = ops.reshape(mean, (bshape[axis],))
            flat_var = ops.reshape(variance, (bshape[axis],))
            m = self.momentum
            backend.assign(self.moving_mean, ops.add(ops.multiply(self.moving_mean, m),
                                                     ops.multiply(flat_mean, 1.0 - m)))
            backend.assign(self.moving_variance, ops.add(ops.multiply(self.moving_variance, m),
                                                         ops.multiply(flat_var, 1.0 - m)))
            params = ([as_broadcast(self.gamma)] if self.scale else []) + \
                ([as_broadcast(self.beta)] if self.center else [])
            return backend.apply_op("batch_norm_apply", [inputs, mean, variance, *params], axis=axis,
                                    epsilon=self.epsilon, scale=self.scale, center=self.center)
        mean, variance = as_broadcast(self.moving_mean), as_broadcast(self.moving_variance)
        inv = ops.rsqrt(ops.add(variance, self.epsilon))
        if self.scale:
            inv = ops.multiply(inv, as_broadcast(self.gamma))
        out = ops.multiply(ops.subtract(inputs, mean), inv)
        if self.center:
            out = ops.add(out, as_broadcast(self.beta))
        return out

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale, "synchronized": False,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        axis = config.get("axis", -1)
        if isinstance(axis, (list, tuple)):  # tf.keras 2 writes the axis as a list: [3]
            if len(axis) != 1:
                raise UnsupportedError(f"BatchNormalization '{config.get('name')}': normalising over several "
                                       f"axes {list(axis)} is not supported")
            config["axis"] = axis[0]
        return cls(**config)


class _ParameterNormalization(Layer):
    """What LayerNormalization and GroupNormalization share: gamma, beta and their options."""

    def __init__(self, epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                 gamma_regularizer, beta_constraint, gamma_constraint, kwargs):
        super().__init__(**kwargs)
        self.epsilon, self.center, self.scale = epsilon, center, scale
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True

    def _add_parameters(self, shape):
        self.gamma = (self.add_weight(shape=shape, name="gamma", initializer=self.gamma_initializer,
                                      regularizer=self.gamma_regularizer, constraint=self.gamma_constraint)
                      if self.scale else None)
        self.beta = (self.add_weight(shape=shape, name="beta", initializer=self.beta_initializer,
                                     regularizer=self.beta_regularizer, constraint=self.beta_constraint)
                     if self.center else None)

    def _normalize(self, x, groups, positions):
        """layer_norm over x's last axis (channels) with the layer's flattened parameters."""
        params = [ops.reshape(p, (-1,)) if len(p.shape) != 1 else p for p in (self.gamma, self.beta) if p is not None]
        return backend.apply_op("layer_norm", [x, *params], groups=groups, positions=positions,
                                epsilon=float(self.epsilon), scale=bool(self.scale), center=bool(self.center))

    def _parameter_config(self):
        return {"epsilon": self.epsilon, "center": self.center, "scale": self.scale}

    def _initializer_config(self):
        return {"beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint)}


def _moved_last(x, axes):
    """(x with ``axes`` moved after the others (a transpose when they are not already last),
    the permutation that moves them back or None)."""
    rank = len(x.shape)
    perm = [a for a in range(rank) if a not in axes] + list(axes)
    if perm == list(range(rank)):
        return x, None
    inverse = [perm.index(a) for a in range(rank)]
    return ops.transpose(x, perm), inverse


class LayerNormalization(_ParameterNormalization):
    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, **kwargs):
        if kwargs.pop("rms_scaling", False):
            raise UnsupportedError("LayerNormalization: rms_scaling=True (deprecated in Keras 3) is not supported; "
                                   "use RMS normalization instead")
        super().__init__(epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                         gamma_regularizer, beta_constraint, gamma_constraint, kwargs)
        if isinstance(axis, (list, tuple)):
            self.axis = list(axis)
        elif isinstance(axis, int):
            self.axis = axis
        else:
            raise TypeError(f"Expected an int or a list/tuple of ints for the argument 'axis', but received: {axis!r}")

    def _axes(self, rank):
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        if any(not -rank <= a < rank for a in axes):
            raise ValueError(f"{self._describe()}: axis {self.axis} is out of bounds for an input of rank {rank}")
        return sorted({a % rank for a in axes})

    def build(self, input_shape):
        axes = self._axes(len(input_shape))
        shape = tuple(input_shape[a] for a in axes)
        if None in shape or 0 in axes:
            raise ShapeError(f"{self._describe()}: the normalized axes {self.axis} of input {fmt_shape(input_shape)} "
                             "must be known and exclude the batch axis")
        self.axis = sorted(self.axis) if isinstance(self.axis, list) else [self.axis]
        self._add_parameters(shape)

    def call(self, inputs):
        rank = len(inputs.shape)
        axes = self._axes(rank)
        x, inverse = _moved_last(inputs, axes)
        moved_shape = tuple(x.shape)
        kept = rank - len(axes)
        if len(axes) > 1:
            x = ops.reshape(x, (0,) * kept + (-1,))
        y = self._normalize(x, groups=1, positions=0)
        if len(axes) > 1:
            y = ops.reshape(y, (0,) * kept + moved_shape[kept:])
        return y if inverse is None else ops.transpose(y, inverse)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, **self._parameter_config(), "rms_scaling": False,
                **self._initializer_config()}


class GroupNormalization(_ParameterNormalization):
    def __init__(self, groups=32, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, **kwargs):
        if not isinstance(groups, int) or (groups <= 0 and groups != -1):
            raise ValueError("Received an invalid value for argument `groups`, expected a positive integer (or `-1` "
                             f"for instance normalization). Received: groups={groups}")
        super().__init__(epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                         gamma_regularizer, beta_constraint, gamma_constraint, kwargs)
        self.groups, self.axis = groups, axis

    def build(self, input_shape):
        dim = input_shape[self.axis]
        if dim is None:
            raise ValueError(f"Axis {self.axis} of input tensor should have a defined dimension but the layer "
                             f"received an input with shape {input_shape}.")
        if self.groups == -1:
            self.groups = dim
        if dim < self.groups:
            raise ValueError(f"Number of groups ({self.groups}) cannot be more than the number of channels ({dim}).")
        if dim % self.groups != 0:
            raise ValueError(f"Number of groups ({self.groups}) must be a multiple of the number of channels "
                             f"({dim}).")
        self.input_spec = InputSpec(ndim=len(input_shape), axes={self.axis: dim})
        self._add_parameters((dim,))

    def call(self, inputs):
        rank = len(inputs.shape)
        x, inverse = _moved_last(inputs, [self.axis % rank])
        y = self._normalize(x, groups=self.groups, positions=rank - 2)
        return y if inverse is None else ops.transpose(y, inverse)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "axis": self.axis, **self._parameter_config(),
                **self._initializer_config()}

