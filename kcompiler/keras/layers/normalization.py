"""BatchNormalization, as Keras 3 computes it: biased batch variance for both the
output and the moving-variance update; a frozen layer (trainable=False) runs in
inference mode. Training mode traces the ops of kcompiler/ops/batch_norm.py (statistics,
element-wise normalisation, one gradient op); inference mode is element-wise math on the
moving statistics."""
from ...errors import ShapeError, UnsupportedError
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


