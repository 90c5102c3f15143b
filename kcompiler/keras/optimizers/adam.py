"""The Adam family: Adam (and amsgrad), AdamW, Adamax, Nadam, with Keras 3's update formulas.

Adam adds epsilon to the uncorrected sqrt(v) and folds both bias corrections into the
step size: alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t).
"""
import numpy as np

from .. import ops
from ..variables import Variable
from .base import Optimizer, current_value, float32



class Adam(Optimizer):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
                         ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
                         loss_scale_factor=loss_scale_factor,
                         gradient_accumulation_steps=gradient_accumulation_steps, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])
        if self.amsgrad:
            self._velocity_hats = self.add_optimizer_variables(var_list, "velocity_hat")

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        local_step = ops.cast(ops.add(self.iterations, 1), "float32")
        beta_1_power = ops.power(float32(self.beta_1), local_step)
        beta_2_power = ops.power(float32(self.beta_2), local_step)
        alpha = learning_rate * ops.sqrt(1.0 - beta_2_power) / (1.0 - beta_1_power)
        m = self.assign_add(self._momentums[i], ops.multiply(
            ops.subtract(gradient, current_value(self._momentums[i])), 1 - self.beta_1))
        v = self.assign_add(self._velocities[i], ops.multiply(
            ops.subtract(ops.square(gradient), current_value(self._velocities[i])), 1 - self.beta_2))
        if self.amsgrad:
            v = self.assign(self._velocity_hats[i], ops.maximum(current_value(self._velocity_hats[i]), v))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "amsgrad": self.amsgrad})
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay: variable -= variable * weight_decay * lr before the Adam step."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=amsgrad, weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
                         ema_overwrite_frequency=ema_overwrite_frequency, loss_scale_factor=loss_scale_factor,
                         gradient_accumulation_steps=gradient_accumulation_steps, name=name, **kwargs)
        if self.weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")


class Adamax(Optimizer):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._m, self._u = self.add_optimizer_variables(var_list, ["momentum", "norm"])

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        local_step = ops.cast(ops.add(self.iterations, 1), "float32")
        beta_1_power = ops.power(float32(self.beta_1), local_step)
        m = self.assign_add(self._m[i], ops.multiply(ops.subtract(gradient, current_value(self._m[i])),
                                                     1 - self.beta_1))
        u = self.assign(self._u[i], ops.maximum(ops.multiply(self.beta_2, current_value(self._u[i])),
                                                ops.abs(gradient)))
        self.assign_sub(variable, ops.divide(ops.multiply(learning_rate, m),
                                             ops.multiply(1.0 - beta_1_power, ops.add(u, self.epsilon))))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


class Nadam(Optimizer):
    """Adam with Nesterov momentum and Keras's momentum schedule u_t = beta_1 * (1 - 0.5 * 0.96^t)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])
        # The running product of u_t, created after the slots as Keras does.
        self._u_product = self._track(Variable(np.ones((), np.float32), dtype="float32", trainable=False,
                                               name="u_product", path=f"{self.name}/u_product"))

    def _update_all(self, grads, variables, learning_rate):
        step = ops.cast(ops.add(self.iterations, 1), "float32")
        u_t = ops.multiply(ops.multiply(self._u_product, self.beta_1),
                           ops.subtract(1.0, ops.multiply(0.5, ops.power(0.96, step))))
        self.assign(self._u_product, u_t)
        super()._update_all(grads, variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        local_step = ops.cast(ops.add(self.iterations, 1), "float32")
        next_step = ops.cast(ops.add(self.iterations, 2), "float32")
        decay, beta_1, beta_2 = float32(0.96), float32(self.beta_1), float32(self.beta_2)
        u_t = beta_1 * (1.0 - 0.5 * ops.power(decay, local_step))
        u_t_1 = beta_1 * (1.0 - 0.5 * ops.power(decay, next_step))
        u_product_t = current_value(self._u_product)
        u_product_t_1 = u_product_t * u_t_1
        beta_2_power = ops.power(beta_2, local_step)
        m = self.assign_add(self._momentums[i], ops.multiply(
            ops.subtract(gradient, current_value(self._momentums[i])), 1.0 - beta_1))
        v = self.assign_add(self._velocities[i], ops.multiply(
            ops.subtract(ops.square(gradient), current_value(self._velocities[i])), 1.0 - beta_2))
        m_hat = ops.add(ops.divide(ops.multiply(u_t_1, m), 1.0 - u_product_t_1),
                        ops.divide(ops.multiply(1.0 - u_t, gradient), 1.0 - u_product_t))
        v_hat = ops.divide(v, 1.0 - beta_2_power)
        self.assign_sub(variable, ops.divide(ops.multiply(m_hat, learning_rate),
                                             ops.add(ops.sqrt(v_hat), self.epsilon)))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config
