"""RMSprop (plain, with momentum, centered), as Keras 3 updates it: epsilon inside the square root."""
from .. import ops
from .base import Optimizer, current_value


class RMSprop(Optimizer):
    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._velocities = self.add_optimizer_variables(var_list, "velocity")
        self._momentums = self.add_optimizer_variables(var_list, "momentum") if self.momentum > 0 else []
        self._average_gradients = (self.add_optimizer_variables(var_list, "average_gradient")
                                   if self.centered else [])

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        rho = self.rho
        velocity = self.assign(self._velocities[i], ops.add(
            ops.multiply(rho, current_value(self._velocities[i])), ops.multiply(1 - rho, ops.square(gradient))))
        if self.centered:
            average_grad = self.assign(self._average_gradients[i], ops.add(
                ops.multiply(rho, current_value(self._average_gradients[i])), ops.multiply(1 - rho, gradient)))
            denominator = velocity - ops.square(average_grad) + self.epsilon
        else:
            denominator = ops.add(velocity, self.epsilon)
        increment = ops.divide(ops.multiply(learning_rate, gradient), ops.sqrt(denominator))
        if self.momentum > 0:
            momentum = self.assign(self._momentums[i], ops.add(
                ops.multiply(self.momentum, current_value(self._momentums[i])), increment))
            self.assign_sub(variable, momentum)
        else:
            self.assign_sub(variable, increment)

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                       "centered": self.centered})
        return config
