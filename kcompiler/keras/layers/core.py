"""Core layers: Dense, Activation, Dropout, Flatten, Reshape, Embedding, Masking, Identity.

Each emits primitives only (Dense = matmul, bias_add, activation); fusion passes
put them back together.
"""
from ...errors import ShapeError
from .. import activations, backend, constraints, initializers, ops, regularizers
from .base import InputSpec, Layer
from .data_format import standardize_data_format, to_channels_last


def serialize_activation(fn):
    return activations.serialize(fn)


def resolve_activation(layer, activation):
    """The activation function, or a ValueError naming the layer."""
    try:
        return activations.get(activation)
    except ValueError as e:
        raise ValueError(f"{layer._describe()}: {e}") from None


def set_kernel_bias_options(layer, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                            bias_regularizer, kernel_constraint, bias_constraint):
    """The options every layer with a kernel and a bias takes (Dense, Conv2D)."""
    layer.use_bias = use_bias
    layer.kernel_initializer = initializers.get(kernel_initializer)
    layer.bias_initializer = initializers.get(bias_initializer)
    layer.kernel_regularizer = regularizers.get(kernel_regularizer)
    layer.bias_regularizer = regularizers.get(bias_regularizer)
    layer.kernel_constraint = constraints.get(kernel_constraint)
    layer.bias_constraint = constraints.get(bias_constraint)


def kernel_bias_config(layer, activity_regularizer=False):
    """Their config entries, in Keras's order (Conv2D writes activity_regularizer among them)."""
    config = {"kernel_initializer": initializers.serialize(layer.kernel_initializer),
              "bias_initializer": initializers.serialize(layer.bias_initializer),
              "kernel_regularizer": regularizers.serialize(layer.kernel_regularizer),
              "bias_regularizer": regularizers.serialize(layer.bias_regularizer)}
    if activity_regularizer:
        config["activity_regularizer"] = regularizers.serialize(layer.activity_regularizer)
    config.update(kernel_constraint=constraints.serialize(layer.kernel_constraint),
                  bias_constraint=constraints.serialize(layer.bias_constraint))
    return config


class Dense(Layer):
    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if int(units) <= 0:
            raise ValueError(f"{self._describe()}: units must be a positive integer, got {units}")
        self.units = int(units)
        self.activation = resolve_activation(self, activation)
        set_kernel_bias_options(self, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                                bias_regularizer, kernel_constraint, bias_constraint)
        self.input_spec = InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ShapeError(f"{self._describe()}: the last dimension of the input must be known, "
                             f"got input shape {input_shape}")
        self.kernel = self.add_weight(shape=(input_dim, self.units), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, constraint=self.kernel_constraint,
                                      name="kernel")
        self.bias = (self.add_weight(shape=(self.units,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                     name="bias") if self.use_bias else None)
        self.input_spec = InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs):
        y = ops.matmul(inputs, self.kernel)
        if self.use_bias:
            y = backend.apply_op("bias_add", [y, self.bias])
        return self.activation(y)

    def get_config(self):
        config = super().get_config()
        if self.activity_regularizer is not None:  # Keras 3 writes it only when set
            config["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        return {**config, "units": self.units,
                "activation": serialize_activation(self.activation), "use_bias": self.use_bias,
                **kernel_bias_config(self)}


class Activation(Layer):
    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = resolve_activation(self, activation)
        self.supports_masking = True

    def call(self, inputs):
        return self.activation(inputs)

    def get_config(self):
        return {**super().get_config(), "activation": serialize_activation(self.activation)}


class Dropout(Layer):
    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"{self._describe()}: rate must be in [0, 1), got {rate}")
        if noise_shape is not None:
            raise NotImplementedError(f"{self._describe()}: noise_shape is not supported")
        self.rate = float(rate)
        self.noise_shape = noise_shape
        self.seed = seed
        self._op_seed = seed if seed is not None else backend.next_seed()
        self.supports_masking = True

    def call(self, inputs, training=None):
        if training and self.rate > 0:
            return ops.dropout(inputs, self.rate, self._op_seed)
        return inputs

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed, "noise_shape": self.noise_shape}


class Flatten(Layer):
    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = standardize_data_format(self, data_format)
        self.input_spec = InputSpec(min_ndim=1)

    def call(self, inputs):
        if len(inputs.shape) == 1:
            return ops.expand_dims(inputs, -1)
        if self.data_format == "channels_first" and len(inputs.shape) > 2:
            # Keras flattens channels_first data in channels_last order, so the Dense after it
            # sees the same features in both formats
            inputs = to_channels_last(inputs)
        return backend.apply_op("reshape", [inputs], shape=(0, -1))

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


class Reshape(Layer):
    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target_shape)

    def call(self, inputs):
        return backend.apply_op("reshape", [inputs], shape=(0,) + self.target_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Embedding(Layer):
    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 activity_regularizer=None, embeddings_constraint=None, mask_zero=False, input_length=None,
                 **kwargs):
        # As in tf.keras 2, an Embedding implies its input shape: (input_length,) or (None,).
        if "input_shape" not in kwargs and "batch_input_shape" not in kwargs:
            kwargs["input_shape"] = (input_length,)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = initializers.get(
            "random_uniform" if embeddings_initializer == "uniform" else embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = constraints.get(embeddings_constraint)
        self.mask_zero = mask_zero
        self.input_length = input_length

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(shape=(self.input_dim, self.output_dim),
                                          initializer=self.embeddings_initializer,
                                          regularizer=self.embeddings_regularizer,
                                          constraint=self.embeddings_constraint, name="embeddings")

    def call(self, inputs):
        if not inputs.dtype.startswith("int"):
            inputs = ops.cast(inputs, "int32")
        return ops.take(self.embeddings, inputs)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        inputs = ops.convert_to_tensor(inputs)  # ids given as an array or a list
        return ops.not_equal(inputs, 0 if inputs.dtype.startswith("int") else 0.0)

    def get_config(self):
        config = {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                  "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
                  "embeddings_regularizer": regularizers.serialize(self.embeddings_regularizer),
                  "activity_regularizer": regularizers.serialize(self.activity_regularizer),
                  "embeddings_constraint": constraints.serialize(self.embeddings_constraint),
                  "mask_zero": self.mask_zero, "input_length": self.input_length}
        return config


class Masking(Layer):
    """Zeros the time steps whose features all equal ``mask_value`` and masks them."""

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = mask_value
        self.supports_masking = True
        self._step_masks = {}   # id(input tensor) -> its (batch, time, 1) keep mask, from call to compute_mask

    def _keep(self, inputs):
        return ops.any(ops.not_equal(inputs, self.mask_value), axis=-1, keepdims=True)

    def call(self, inputs):
        keep = self._keep(inputs)
        self._step_masks[id(inputs)] = keep
        return ops.where(keep, inputs, 0.0)

    def compute_mask(self, inputs, mask=None):
        keep = self._step_masks.pop(id(inputs), None)
        return ops.squeeze(keep if keep is not None else self._keep(inputs), axis=-1)

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}


class Identity(Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

