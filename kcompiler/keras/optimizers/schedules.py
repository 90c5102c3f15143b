"""keras.optimizers.schedules: learning rates as functions of the optimizer step, in keras.ops.

A schedule is called on the optimizer's ``iterations`` variable inside the traced step, so
the learning rate is computed in the graph at run time; ``schedule(step)`` on a number
returns a concrete tensor. Formulas are Keras 3's.
"""
import inspect
import math

from .. import ops


def _f32(step):
    return ops.cast(step, "float32")


class LearningRateSchedule:
    """Base class: implement ``__call__(step)`` with keras.ops and ``get_config()``."""

    def __call__(self, step):
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  "`__call__(self, step)`.")

    def get_config(self):
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override `get_config()` "
                                  "in order to be serializable.")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_decay_steps(decay_steps):
    if decay_steps <= 0:
        raise ValueError(f"Argument `decay_steps` must be > 0. Received: decay_steps={decay_steps}")


class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ^ (step / decay_steps), the exponent floored if staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        _check_decay_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps, self.decay_rate = initial_learning_rate, decay_steps, decay_rate
        self.staircase, self.name = staircase, name

    def __call__(self, step):
        p = _f32(step) / float(self.decay_steps)
        if self.staircase:
            p = ops.floor(p)
        return ops.multiply(float(self.initial_learning_rate), ops.power(float(self.decay_rate), p))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class InverseTimeDecay(LearningRateSchedule):
    """initial_learning_rate / (1 + decay_rate * step / decay_steps), the ratio floored if staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="InverseTimeDecay"):
        _check_decay_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps, self.decay_rate = initial_learning_rate, decay_steps, decay_rate
        self.staircase, self.name = staircase, name

    def __call__(self, step):
        p = _f32(step) / float(self.decay_steps)
        if self.staircase:
            p = ops.floor(p)
        return ops.divide(float(self.initial_learning_rate), ops.add(1.0, ops.multiply(float(self.decay_rate), p)))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[i] while boundaries[i-1] < step <= boundaries[i], ..."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ValueError("The length of boundaries should be 1 less than the length of values. Received: "
                             f"boundaries={boundaries} of length {len(boundaries)}, and values={values} of length "
                             f"{len(values)}.")
        self.boundaries, self.values, self.name = list(boundaries), list(values), name

    def __call__(self, step):
        step = ops.convert_to_tensor(step) if isinstance(step, (int, float)) else step
        integral = not step.dtype.startswith("float")
        if integral and not all(float(b).is_integer() for b in self.boundaries):
            step, integral = _f32(step), False
        bounds = [int(b) if integral else float(b) for b in self.boundaries]
        values = [float(v) for v in self.values]

        def indicator(condition):
            return ops.cast(condition, "float32")

        result = indicator(ops.less_equal(step, bounds[0])) * values[0]
        result = result + indicator(ops.greater(step, bounds[-1])) * values[-1]
        for low, high, value in zip(bounds[:-1], bounds[1:], values[1:-1]):
            in_range = ops.logical_and(ops.greater(step, low), ops.less_equal(step, high))
            result = result + indicator(in_range) * value
        return result

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """(initial - end) * (1 - step / decay_steps) ^ power + end; with cycle, decay_steps grows by multiples."""

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0, cycle=False,
                 name="PolynomialDecay"):
        _check_decay_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps = initial_learning_rate, decay_steps
        self.end_learning_rate, self.power, self.cycle, self.name = end_learning_rate, power, cycle, name

    def __call__(self, step):
        step = _f32(step)
        decay_steps = float(self.decay_steps)
        if self.cycle:
            multiplier = ops.where(ops.equal(step, 0.0), 1.0, ops.ceil(step / decay_steps))
            decay_steps = ops.multiply(decay_steps, multiplier)
        else:
            step = ops.minimum(step, decay_steps)
        p = ops.divide(step, decay_steps)
        span = float(self.initial_learning_rate) - float(self.end_learning_rate)
        return ops.add(ops.multiply(span, ops.power(1.0 - p, float(self.power))), float(self.end_learning_rate))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "end_learning_rate": self.end_learning_rate, "power": self.power, "cycle": self.cycle,
                "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Optional linear warmup from initial_learning_rate to warmup_target over warmup_steps, then
    cosine decay over decay_steps to alpha times the rate decayed from."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        _check_decay_steps(decay_steps)
        self.initial_learning_rate, self.decay_steps, self.alpha, self.name = (
            initial_learning_rate, decay_steps, alpha, name)
        self.warmup_target, self.warmup_steps = warmup_target, warmup_steps

    def _decay(self, step, decay_from):
        completed_fraction = ops.divide(step, float(self.decay_steps))
        cosine_decayed = 0.5 * (1.0 + ops.cos(ops.multiply(math.pi, completed_fraction)))
        decayed = (1 - self.alpha) * cosine_decayed + self.alpha
        return ops.multiply(decay_from, decayed)

    def __call__(self, step):
        step = _f32(step)
        initial = float(self.initial_learning_rate)
        if self.warmup_target is None:
            return self._decay(ops.minimum(step, float(self.decay_steps)), initial)
        warmup_steps = float(self.warmup_steps)
        target = float(self.warmup_target)
        step = ops.minimum(step, float(self.decay_steps) + warmup_steps)
        # Both branches are computed and one selected (Keras uses cond); avoid dividing by 0 steps.
        warmup = (target - initial) * (step / max(warmup_steps, 1.0)) + initial
        return ops.where(ops.less(step, warmup_steps), warmup, self._decay(step - warmup_steps, target))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


ALL_OBJECTS = {c.__name__: c for c in (LearningRateSchedule, ExponentialDecay, InverseTimeDecay,
                                        PiecewiseConstantDecay, PolynomialDecay, CosineDecay)}


def serialize(schedule):
    """Keras 3's form: {'module', 'class_name', 'config', 'registered_name'}."""
    return {"module": "keras.optimizers.schedules", "class_name": type(schedule).__name__,
            "config": schedule.get_config(), "registered_name": None}


def deserialize(config, custom_objects=None):
    objects = dict(ALL_OBJECTS, **(custom_objects or {}))
    cls = objects.get(config.get("class_name"))
    if cls is None or not inspect.isclass(cls):
        raise ValueError(f"Unknown learning rate schedule {config.get('class_name')!r}; known: "
                         f"{', '.join(sorted(ALL_OBJECTS))}")
    return cls.from_config(config.get("config", {}))
