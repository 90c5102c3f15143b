"""The Optimizer base class, structured as Keras 3's.

An optimizer's whole step (gradient clipping, weight decay, each variable's
``update_step``, constraints, ``iterations += 1``) is keras.ops math ending in state
updates recorded with ``backend.assign``. So it has one form that traces into a graph:
``trace_updates`` emits it into the training-step graph being traced, and eager
``apply_gradients`` traces it once per set of variables into a graph of its own
(gradients as inputs, variables as variable nodes, assignments as the graph's
``updates``), runs it and writes the new values back.

The learning rate is a runtime value: a float32 ``keras.Variable`` (assigning
``optimizer.learning_rate`` changes the variable, never the graph), or a schedule
evaluated in-graph from ``iterations``.
"""
import warnings

import numpy as np

from ...ir.types import TensorType
from .. import backend, initializers, ops
from ..tensor import SymbolicTensor, Tensor, is_symbolic, to_array
from ..variables import Variable
from . import schedules


def current_value(variable):
    """``variable``'s latest value in the graph being traced: the value this trace has already
    assigned to it (an update pending in ``graph['updates']``), else the variable itself.
    Reading through it gives the step Keras's sequential semantics (update m, then use the new m)."""
    b = backend.active_builder()
    if b is None:
        return variable
    vnode = b.g.graph.get("variable_nodes", {}).get(variable.uid)
    if vnode is not None and vnode in b.g.graph["updates"]:
        return SymbolicTensor(b, b.g.graph["updates"][vnode])
    return variable


def float32(value):
    """A float32 scalar constant (Keras casts hyperparameters to the variable dtype first)."""
    return Tensor(np.asarray(value, dtype=np.float32))


class Optimizer:
    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        if "lr" in kwargs:  # tf.keras 2's spelling
            learning_rate = kwargs.pop("lr")
        if kwargs.pop("decay", None):
            warnings.warn("Argument `decay` is no longer supported and will be ignored.")
        for ignored in ("jit_compile", "is_legacy_optimizer"):  # tf.keras 2 configs carry them
            kwargs.pop(ignored, None)
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
                             f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}")
        if use_ema:
            raise NotImplementedError(f"{type(self).__name__}: use_ema=True is not supported")
        if gradient_accumulation_steps:
            raise NotImplementedError(f"{type(self).__name__}: gradient_accumulation_steps is not supported")
        self.name = name or backend.unique_name(backend.snake_case(type(self).__name__))
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.use_ema, self.ema_momentum, self.ema_overwrite_frequency = use_ema, ema_momentum, ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.built = False
        self._variables = []
        self._trainable_variables = []
        self._index = {}          # Variable.uid -> position in the list the optimizer was built with
        self._eager_graphs = {}   # (variable uids, gradient types) -> traced update graph
        self._iterations = self._track(Variable(np.zeros((), np.int64), dtype="int64", trainable=False,
                                                name="iteration", path=f"{self.name}/iteration"))
        self._learning_rate = self._make_learning_rate(learning_rate)

    def _make_learning_rate(self, learning_rate):
        if isinstance(learning_rate, schedules.LearningRateSchedule):
            return learning_rate
        if isinstance(learning_rate, (Tensor, Variable, np.ndarray, np.generic)):
            learning_rate = float(np.asarray(learning_rate))
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
            raise ValueError("Argument `learning_rate` should be a float or an instance of LearningRateSchedule. "
                             f"Received instead: learning_rate={learning_rate!r}")
        return self._track(Variable(np.asarray(learning_rate, np.float32), dtype="float32", trainable=False,
                                    name="learning_rate", path=f"{self.name}/learning_rate"))

    def _track(self, variable):
        self._variables.append(variable)
        return variable

    # ---- state ----------------------------------------------------------------------------

    @property
    def iterations(self):
        return self._iterations

    @property
    def variables(self):
        """Keras 3's order: iterations, learning_rate (when not a schedule), then the slots."""
        return list(self._variables)

    def _state_variables(self):
        return [v for v in self._variables if v is not self._learning_rate]

    @property
    def weights(self):
        return self._state_variables()

    def get_weights(self):
        """The optimizer state as tf.keras returns it: iterations first, then the slot variables."""
        return [np.array(v.numpy()) for v in self._state_variables()]

    def set_weights(self, weights):
        mine = self._state_variables()
        if len(weights) != len(mine):
            raise ValueError(f"You called `set_weights(weights)` on optimizer {self.name} with a weight list of "
                             f"length {len(weights)}, but the optimizer was expecting {len(mine)} weights "
                             f"({', '.join(v.path for v in mine)}). Build the optimizer first (apply gradients "
                             "once, or call optimizer.build(variables)).")
        for var, value in zip(mine, weights):
            value = np.asarray(value)
            if tuple(value.shape) != var.shape:
                raise ValueError(f"Optimizer variable {var.path!r} has shape {var.shape} not compatible with "
                                 f"provided weight shape {tuple(value.shape)}")
            var.assign(value)

    @property
    def learning_rate(self):
        """The learning-rate Variable, or the schedule's value at the current iteration."""
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            return self._learning_rate(self._iterations)
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, schedules.LearningRateSchedule):
            if isinstance(self._learning_rate, Variable):
                self._variables.remove(self._learning_rate)
            self._learning_rate = value
            self._eager_graphs.clear()  # the step now reads the schedule instead of the variable
            return
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            raise TypeError("This optimizer was created with a `LearningRateSchedule` object as its "
                            "`learning_rate` constructor argument, hence its learning rate is not settable. If you "
                            "need the learning rate to be settable, you should instantiate the optimizer with a "
                            "float `learning_rate` argument.")
        self._learning_rate.assign(np.asarray(to_array(value), np.float32))

    lr = learning_rate  # tf.keras 2's alias

    # ---- slots ----------------------------------------------------------------------------

    def build(self, var_list):
        """Record the variables this optimizer updates; subclasses then create their slots."""
        self._trainable_variables = list(var_list)
        self._index = {v.uid: i for i, v in enumerate(var_list)}
        self.built = True

    def add_variable(self, shape, initializer="zeros", dtype=None, name=None):
        value = initializers.get(initializer)(tuple(shape), dtype=dtype or "float32")
        var = Variable(value, dtype=dtype or "float32", trainable=False, name=name or "variable",
                       path=f"{self.name}/{name or 'variable'}")
        return self._track(var)

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        name = f"{reference_variable.path.replace('/', '_')}_{name or 'var'}"
        return self.add_variable(reference_variable.shape, initializer, reference_variable.dtype, name)

    def add_optimizer_variables(self, trainable_variables, name, initializer="zeros"):
        """One slot per variable per name, created variable by variable (Keras's order: a_m, a_v, b_m, b_v)."""
        names = [name] if isinstance(name, str) else list(name)
        slots = tuple([] for _ in names)
        for variable in trainable_variables:
            for i, slot_name in enumerate(names):
                slots[i].append(self.add_variable_from_reference(variable, slot_name, initializer))
        return slots[0] if isinstance(name, str) else slots

    def _get_variable_index(self, variable):
        return self._index[variable.uid]

    # ---- state updates (recorded in the graph being traced) -------------------------------

    def assign(self, variable, value):
        """Record ``variable := value``; returns the new value for the rest of the step to use."""
        value = value if value.dtype == variable.dtype else ops.cast(value, variable.dtype)
        backend.assign(variable, value)
        return value

    def assign_add(self, variable, value):
        return self.assign(variable, ops.add(current_value(variable), value))

    def assign_sub(self, variable, value):
        return self.assign(variable, ops.subtract(current_value(variable), value))

    # ---- the step -------------------------------------------------------------------------

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError(f"{type(self).__name__} must implement update_step(gradient, variable, "
                                  "learning_rate)")

    def apply_gradients(self, grads_and_vars):
        """Apply one step. Symbolic gradients: emitted into the graph being traced. Concrete
        gradients: the step's graph (cached per variables and gradient shapes) is run now."""
        pairs = list(grads_and_vars)
        if not pairs:
            return self._iterations
        grads, variables = [list(t) for t in zip(*pairs)]
        if any(is_symbolic(g) for g in grads if g is not None):
            self.trace_updates(pairs)
            return self._iterations
        if not self.built:
            self.build(variables)
        self._check_variables_are_known(variables)
        grads, variables = self._filter_empty_gradients(grads, variables)
        arrays = [to_array(g, dtype=v.dtype, what=f"{self.name}: gradient of {v.path!r}")
                  for g, v in zip(grads, variables)]
        for a, v in zip(arrays, variables):
            if a.shape != v.shape:
                raise ValueError(f"{self.name}: the gradient of {v.path!r} has shape {a.shape}, but the variable "
                                 f"has shape {v.shape}")
        key = tuple((v.uid, a.shape, str(a.dtype)) for v, a in zip(variables, arrays))
        g = self._eager_graphs.get(key)
        if g is None:
            b = backend.new_trace_builder(name=f"{self.name}_apply_gradients")
            sym = [SymbolicTensor(b, b.input(f"grad_{i}", TensorType(a.shape, str(a.dtype))))
                   for i, a in enumerate(arrays)]
            self.trace_updates(zip(sym, variables))
            b.g.graph["outputs"] = []
            g = self._eager_graphs[key] = b.g
        from ...runtime.executor import run_graph
        _, updates = run_graph(g, {f"grad_{i}": a for i, a in enumerate(arrays)})
        new_values = {vnode: np.array(value) for vnode, value in updates.items()}  # before any write
        for vnode, value in new_values.items():
            g.graph["variables"][vnode].assign(value)
        return self._iterations

    def trace_updates(self, grads_and_vars):
        """Emit the whole step for ``grads_and_vars`` (symbolic gradients) into their graph: what the
        compiled training step calls. Builds the optimizer's slots on first use."""
        pairs = list(grads_and_vars)
        grads, variables = [list(t) for t in zip(*pairs)]
        if not self.built:
            self.build(variables)
        self._check_variables_are_known(variables)
        grads, variables = self._filter_empty_gradients(grads, variables)
        builder = next(g.builder for g in grads if is_symbolic(g))
        with backend.tracing(builder):
            grads = [g if g.dtype == v.dtype else ops.cast(g, v.dtype) for g, v in zip(grads, variables)]
            if self.loss_scale_factor is not None:
                grads = [g / self.loss_scale_factor for g in grads]
            grads = self._clip_gradients(grads)
            learning_rate = self._learning_rate_value()
            self._apply_weight_decay(variables, learning_rate)
            self._update_all(grads, variables, learning_rate)
            for variable in variables:
                if getattr(variable, "constraint", None) is not None:
                    self.assign(variable, variable.constraint(current_value(variable)))
            self.assign(self._iterations, ops.add(current_value(self._iterations), 1))

    def _update_all(self, grads, variables, learning_rate):
        for grad, variable in zip(grads, variables):
            self.update_step(grad, variable, learning_rate)

    def _learning_rate_value(self):
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            return self._learning_rate(self._iterations)
        return self._learning_rate

    def minimize(self, loss, var_list, tape=None):
        """Compute the gradients of ``loss`` w.r.t. ``var_list`` with ``tape`` and apply them.
        ``loss`` may be a zero-argument callable (evaluated under a new GradientTape)."""
        var_list = var_list() if callable(var_list) else list(var_list)
        if tape is None:
            from .. import tape as tape_module
            tape_cls = getattr(tape_module, "GradientTape", None)
            if tape_cls is None or not callable(loss):
                raise NotImplementedError("minimize() needs tape=... (a GradientTape that recorded the loss), "
                                          "or a callable loss and kcompiler's GradientTape")
            with tape_cls() as tape:
                loss = loss()
        grads = tape.gradient(loss, var_list)
        return self.apply_gradients(zip(grads, var_list))

    # ---- gradient transformations (Keras 3's formulas) ------------------------------------

    def _check_variables_are_known(self, variables):
        for v in variables:
            if v.uid not in self._index:
                raise ValueError(f"Unknown variable: {v.path!r}. This optimizer can only be called for the "
                                 "variables it was originally built with. When working with a new set of "
                                 "variables, you should recreate a new optimizer instance.")

    def _filter_empty_gradients(self, grads, variables):
        kept = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not kept:
            raise ValueError("No gradients provided for any variable.")
        missing = [v.path for g, v in zip(grads, variables) if g is None]
        if missing:
            warnings.warn(f"Gradients do not exist for variables {missing} when minimizing the loss. If using "
                          "`model.compile()`, did you forget to provide a `loss` argument?")
        return [g for g, _ in kept], [v for _, v in kept]

    def _clip_gradients(self, grads):
        if self.clipnorm and self.clipnorm > 0:
            return [self._clip_by_norm(g) for g in grads]
        if self.global_clipnorm and self.global_clipnorm > 0:
            return clip_by_global_norm(grads, self.global_clipnorm)
        if self.clipvalue and self.clipvalue > 0:
            return [ops.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def _clip_by_norm(self, values):
        l2sum = ops.sum(ops.square(values), keepdims=True)
        positive = ops.greater(l2sum, 0.0)
        l2sum_safe = ops.where(positive, l2sum, 1.0)  # two-tap where: no NaN gradient at 0
        l2norm = ops.where(positive, ops.sqrt(l2sum_safe), l2sum)
        return ops.multiply(values, self.clipnorm) / ops.maximum(l2norm, self.clipnorm)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        if self.built:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before the optimizer is built.")
        self._excluded_uids = {v.uid for v in var_list or []}
        self._excluded_names = list(var_names or [])

    def _use_weight_decay(self, variable):
        if variable.uid in getattr(self, "_excluded_uids", ()):
            return False
        return not any(n in variable.name for n in getattr(self, "_excluded_names", ()))

    def _apply_weight_decay(self, variables, learning_rate):
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                value = current_value(variable)
                self.assign(variable, value - value * float32(self.weight_decay) * learning_rate)

    # ---- config ---------------------------------------------------------------------------

    def get_config(self):
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            learning_rate = schedules.serialize(self._learning_rate)
        else:
            learning_rate = float(self._learning_rate.numpy())
        return {"name": self.name, "learning_rate": learning_rate, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue,
                "use_ema": self.use_ema, "ema_momentum": self.ema_momentum,
                "ema_overwrite_frequency": self.ema_overwrite_frequency,
                "loss_scale_factor": self.loss_scale_factor,
                "gradient_accumulation_steps": self.gradient_accumulation_steps}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"], custom_objects)
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


def clip_by_global_norm(grads, clip_norm):
    """Keras 3's clip_by_global_norm: scale all gradients by clip_norm / max(global norm, clip_norm)."""
    squared_norms = [ops.sum(ops.square(g)) for g in grads]
    use_norm = ops.sqrt(ops.sum(ops.stack(squared_norms)))
    scale_for_finite = clip_norm * ops.minimum(1.0 / use_norm, 1.0 / clip_norm)
    scale = scale_for_finite + (use_norm - use_norm)  # NaN when the norm is not finite, as Keras
    return [g * scale for g in grads]
