"""Adagrad and Adadelta, as Keras 3 updates them: epsilon inside the square roots."""
from .. import initializers, ops
from .base import Optimizer, current_value


class Adagrad(Optimizer):
    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None,
                 name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._accumulators = self.add_optimizer_variables(
            var_list, "accumulator", initializer=initializers.Constant(self.initial_accumulator_value))

    def update_step(self, gradient, variable, learning_rate):
        accumulator = self.assign_add(self._accumulators[self._get_variable_index(variable)],
                                      ops.square(gradient))
        self.assign_sub(variable, ops.divide(ops.multiply(learning_rate, gradient),
                                             ops.sqrt(ops.add(accumulator, self.epsilon))))

    def get_config(self):
        config = super().get_config()
        config.update({"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon})
        return config


class Adadelta(Optimizer):
    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.rho, self.epsilon = rho, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._accumulated_grads, self._accumulated_delta_vars = self.add_optimizer_variables(
            var_list, ["accumulated_grad", "accumulated_delta_var"])

    def update_step(self, grad, variable, learning_rate):
        i = self._get_variable_index(variable)
        rho = self.rho

        def rms(x):
            return ops.sqrt(ops.add(x, self.epsilon))

        accumulated_grad = self.assign(self._accumulated_grads[i], ops.add(
            rho * current_value(self._accumulated_grads[i]), ops.multiply(1 - rho, ops.square(grad))))
        delta_old = current_value(self._accumulated_delta_vars[i])
        delta_var = ops.negative(ops.divide(ops.multiply(rms(delta_old), grad), rms(accumulated_grad)))
        self.assign(self._accumulated_delta_vars[i], ops.add(
            ops.multiply(rho, delta_old), ops.multiply(1 - rho, ops.square(delta_var))))
        self.assign_add(variable, ops.multiply(learning_rate, delta_var))

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "epsilon": self.epsilon})
        return config
