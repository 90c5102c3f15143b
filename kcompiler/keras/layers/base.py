"""The Layer base class: weights, build, call, tracing and eager execution.

Calling a layer on symbolic tensors traces its ``call`` into the graph those
tensors belong to; calling it on concrete data traces ``call`` into a fresh graph
for the data's shapes and runs that graph (``_call_eager``). Either way the math
is only ever what ``call`` emits through ``keras.ops``, so built-in and user
layers are treated alike.
"""
import functools
import inspect

import numpy as np

from ...errors import ShapeError
from ...ir.types import TensorType, fmt_shape
from ...runtime.specializations import SpecializationCache
from .. import backend, constraints as constraints_mod, initializers, regularizers
from ..tensor import SymbolicTensor, Tensor, is_symbolic, to_array
from ..variables import Variable


def flatten(structure):
    if isinstance(structure, (list, tuple)):
        out = []
        for s in structure:
            out.extend(flatten(s))
        return out
    if isinstance(structure, dict):
        return flatten(list(structure.values()))
    return [structure]


def map_structure(fn, structure):
    if isinstance(structure, list):
        return [map_structure(fn, s) for s in structure]
    if isinstance(structure, tuple):
        return tuple(map_structure(fn, s) for s in structure)
    if isinstance(structure, dict):
        return {k: map_structure(fn, v) for k, v in structure.items()}
    return fn(structure)


def _is_tensorlike(x):
    return isinstance(x, (SymbolicTensor, Tensor, np.ndarray)) or (
        isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, (int, float)) for v in flatten(x)))


class InputSpec:
    """What a layer accepts: a rank (ndim / min_ndim) and fixed sizes of some axes."""

    def __init__(self, ndim=None, min_ndim=None, axes=None, dtype=None):
        self.ndim, self.min_ndim, self.axes, self.dtype = ndim, min_ndim, dict(axes or {}), dtype


class Layer:
    def __init_subclass__(cls, **kwargs):
        # As in Keras, calling build() — by hand or on first call — marks the layer built, so a
        # later call does not build (and re-initialise its weights) again.
        super().__init_subclass__(**kwargs)
        if "build" in cls.__dict__:
            user_build = cls.__dict__["build"]

            @functools.wraps(user_build)
            def build(self, *args, **kw):
                result = user_build(self, *args, **kw)
                self.built = True
                return result
            cls.build = build

    _accepted_kwargs = {"trainable", "name", "dtype", "input_shape", "batch_input_shape", "input_dim",
                        "batch_size", "input_length", "autocast", "dynamic", "weights"}

    def __init__(self, trainable=True, name=None, dtype=None, activity_regularizer=None, **kwargs):
        unknown = set(kwargs) - self._accepted_kwargs
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) {sorted(unknown)}")
        self._tracking = True
        self.name = name or backend.unique_name(backend.snake_case(type(self).__name__))
        self._trainable = trainable
        self.dtype = "float32" if dtype in (None, "float32") else str(np.dtype(dtype))
        self.built = False
        self._weights_list = []
        self._sublayers = []
        self._inbound = []       # CallRecords of functional-API calls
        self._eager_graphs = SpecializationCache()  # (input types, call options) -> traced graph, for eager calls
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self.input_spec = None
        self.supports_masking = False
        batch_input_shape = kwargs.get("batch_input_shape")
        if batch_input_shape is None and kwargs.get("input_shape") is not None:
            batch_input_shape = (kwargs.get("batch_size"),) + tuple(kwargs["input_shape"])
        if batch_input_shape is None and kwargs.get("input_dim") is not None:
            batch_input_shape = (kwargs.get("batch_size"), kwargs["input_dim"])
        self._batch_input_shape = None if batch_input_shape is None else tuple(batch_input_shape)

    # ---- attribute tracking: sublayers and weights assigned as attributes ------------

    def __setattr__(self, name, value):
        if getattr(self, "_tracking", False) and name not in ("_sublayers",):
            for v in flatten(value) if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, Layer) and v is not self and all(v is not s for s in self._sublayers):
                    self._sublayers.append(v)
        object.__setattr__(self, name, value)

    @property
    def layers(self):
        return list(self._sublayers)

    def _describe(self):
        return f"{type(self).__name__} '{self.name}'"

    # ---- weights ------------------------------------------------------------------------

    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True, regularizer=None,
                   constraint=None, name=None, **kwargs):
        shape = () if shape is None else tuple(int(d) for d in shape)
        dtype = dtype or self.dtype
        if initializer is None:
            initializer = "glorot_uniform" if dtype.startswith("float") else "zeros"
        name = name or f"variable_{len(self._weights_list)}"
        var = Variable(initializers.get(initializer), shape=shape, dtype=dtype, trainable=trainable,
                       name=name, path=f"{self.name}/{name}", constraint=constraints_mod.get(constraint),
                       regularizer=regularizers.get(regularizer))
        self._weights_list.append(var)
        return var

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        for layer in self._sublayers:
            layer.trainable = value

    def _own_weights(self):
        return list(self._weights_list)

    @property
    def weights(self):
        return self._all_weights_in_order()

    @property
    def trainable_weights(self):
        if not self._trainable:
            return []
        out = [w for w in self._own_weights() if w.trainable]
        for layer in self._sublayers:
            out.extend(layer.trainable_weights)
        return _unique(out)

    @property
    def non_trainable_weights(self):
        out = [w for w in self._own_weights() if not w.trainable or not self._trainable]
        for layer in self._sublayers:
            out.extend(layer.non_trainable_weights if self._trainable else layer.weights)
        return _unique(out)

    @property
    def variables(self):
        return self.weights

    @property
    def trainable_variables(self):
        return self.trainable_weights

    @property
    def non_trainable_variables(self):
        return self.non_trainable_weights

    @property
    def losses(self):
        """The weight regularization penalties of this layer and its sublayers, at the current
        weights (eager scalars). Activity penalties exist only inside a traced step, where the
        training pass adds them to the loss, so they are not listed here."""
        return [var.regularizer(var) for var in self.weights if var.regularizer is not None]

    # ---- shapes of the functional-API calls (tf.keras 2's Layer.input_shape/output_shape) ----

    def _call_shapes(self, which):
        """The one shape (or list of shapes) of the layer's ``which`` ('input' or 'output') over
        its recorded calls; AttributeError as tf.keras when it was never called or the calls differ."""
        shapes = set()
        for rec in self._inbound:
            tensors = rec.input_tensors() if which == "input" else flatten(rec.outputs)
            found = [tuple(t.shape) for t in tensors]
            shapes.add(found[0] if len(found) == 1 else tuple(found))
        if not shapes:
            raise AttributeError(f"The layer \"{self.name}\" has never been called and thus has no defined "
                                 f"{which} shape.")
        if len(shapes) > 1:
            raise AttributeError(f"The layer \"{self.name}\" has multiple inbound nodes, with different {which} "
                                 f"shapes ({sorted(shapes, key=str)}): {which}_shape is ill-defined for it.")
        shape = shapes.pop()
        return [tuple(s) for s in shape] if shape and isinstance(shape[0], tuple) else shape

    @property
    def input_shape(self):
        return self._call_shapes("input")

    @property
    def output_shape(self):
        return self._call_shapes("output")

    def _all_weights_in_order(self):
        """Keras's weights order: own trainable, own non-trainable, then each sublayer's."""
        own = self._own_weights()
        out = [w for w in own if w.trainable] + [w for w in own if not w.trainable]
        for layer in self._sublayers:
            out.extend(layer._all_weights_in_order())
        return _unique(out)

    def get_weights(self):
        return [np.array(w.numpy()) for w in self._all_weights_in_order()]

    def set_weights(self, weights):
        mine = self._all_weights_in_order()
        if len(weights) != len(mine):
            raise ValueError(f"{self._describe()}: set_weights got {len(weights)} arrays but the layer has "
                             f"{len(mine)} weights ({', '.join(w.path for w in mine)})")
        for var, value in zip(mine, weights):
            value = np.asarray(value)
            if value.shape != var.shape:
                raise ValueError(f"{self._describe()}: weight {var.path!r} has shape {var.shape}, "
                                 f"got an array of shape {value.shape}")
            var.assign(value)

    def count_params(self):
        if not self.built:
            raise ValueError(f"{self._describe()} has not been built yet: call it on data or build it "
                             "before counting its parameters")
        return int(sum(np.prod(w.shape, dtype=np.int64) for w in self.weights))

    # ---- build / call ------------------------------------------------------------------

    def build(self, input_shape):
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return inputs

    def compute_mask(self, inputs, mask=None):
        return mask if self.supports_masking else None

    def compute_output_shape(self, input_shape):
        """Output shape(s) for ``input_shape`` (batch dim may be None), found by tracing ``call``."""
        shapes = input_shape
        b = backend.new_trace_builder(name=f"{self.name}_shape")
        if isinstance(shapes, list) and shapes and isinstance(shapes[0], (list, tuple)):
            inputs = [SymbolicTensor(b, b.input(f"x{i}", TensorType(tuple(s)))) for i, s in enumerate(shapes)]
        else:
            inputs = SymbolicTensor(b, b.input("x", TensorType(tuple(shapes))))
        out = self(inputs)
        return map_structure(lambda t: tuple(t.shape), out)

    def _maybe_build(self, inputs):
        if self.built:
            return
        shapes = map_structure(lambda t: tuple(t.shape), inputs)
        self._check_input_spec(inputs)
        self.build(shapes)
        self.built = True

    def _check_input_spec(self, inputs):
        spec = self.input_spec
        if spec is None or isinstance(inputs, (list, tuple)):
            return
        shape = tuple(inputs.shape)
        if spec.ndim is not None and len(shape) != spec.ndim:
            raise ShapeError(f"{self._describe()} expects input of rank {spec.ndim}, got shape {fmt_shape(shape)}")
        if spec.min_ndim is not None and len(shape) < spec.min_ndim:
            raise ShapeError(f"{self._describe()} expects input of rank >= {spec.min_ndim}, "
                             f"got shape {fmt_shape(shape)}")
        for axis, size in spec.axes.items():
            actual = shape[axis] if -len(shape) <= axis < len(shape) else None
            if actual is not None and actual != size:
                which = "last dimension" if axis == -1 else f"dimension {axis}"
                raise ShapeError(f"{self._describe()} expects input {which} {size}, got {actual} "
                                 f"(input shape {fmt_shape(shape)})")

    def _call_accepts(self, arg):
        try:
            return arg in inspect.signature(self.call).parameters
        except (TypeError, ValueError):
            return False

    def __call__(self, *args, **kwargs):
        if not args:
            if "inputs" not in kwargs:
                raise TypeError(f"{self._describe()}: called without inputs")
            args = (kwargs.pop("inputs"),)
        inputs, rest = args[0], args[1:]
        flat = flatten(inputs)
        if any(is_symbolic(x) for x in flat):
            return self._call_symbolic(inputs, rest, kwargs)
        return self._call_eager(inputs, rest, kwargs)

    def _call_symbolic(self, inputs, rest, kwargs):
        user_kwargs, kwargs = kwargs, dict(kwargs)
        flat = [x for x in flatten(inputs) if is_symbolic(x)]
        builder = flat[0].builder
        with backend.tracing(builder):
            prev_layer = builder.layer
            builder.layer = self._describe()
            try:
                self._maybe_build(inputs)
                self._check_input_spec(inputs)
                if self._call_accepts("mask") and kwargs.get("mask") is None:
                    masks = map_structure(lambda t: getattr(t, "_keras_mask", None), inputs)
                    if any(m is not None for m in flatten(masks)):
                        kwargs["mask"] = masks
                if self._call_accepts("training"):
                    if kwargs.get("training") is None:
                        kwargs["training"] = bool(builder.training)
                else:
                    kwargs.pop("training", None)
                outputs = self.call(inputs, *rest, **kwargs)
                # A call that passes an input through (Dropout at inference, Activation('linear'))
                # still gets output objects of its own: the functional API records which call made
                # each tensor on the tensor object, and the input's record must survive.
                input_ids = {id(x) for x in flatten(inputs)}
                outputs = map_structure(lambda t: SymbolicTensor(builder, t.node) if id(t) in input_ids else
                                        t if is_symbolic(t) else _as_symbolic(builder, t), outputs)
                mask = self.compute_mask(inputs, kwargs.get("mask") if self._call_accepts("mask") else
                                         map_structure(lambda t: getattr(t, "_keras_mask", None), inputs))
                if mask is not None:
                    for out, m in zip(flatten(outputs), flatten(mask) if isinstance(mask, (list, tuple))
                                      else [mask] * len(flatten(outputs))):
                        out._keras_mask = m
                if self.activity_regularizer is not None:
                    losses = builder.g.graph.setdefault("activity_losses", [])
                    for out in flatten(outputs):
                        losses.append(_as_symbolic(builder, self.activity_regularizer(out)).node)
            finally:
                builder.layer = prev_layer
        if getattr(builder, "records_history", False):
            from ..functional import record_layer_call
            record_layer_call(self, inputs, rest, user_kwargs, outputs)
        return outputs

    def _call_eager(self, inputs, rest, kwargs):
        """Run the layer on concrete data: trace ``call`` for these shapes (cached) and execute."""
        from ...runtime.executor import run_graph
        arrays = map_structure(lambda x: to_array(x, what=f"{self._describe()} input"), inputs)
        mask = kwargs.pop("mask", None)
        if mask is None:
            mask = map_structure(lambda x: getattr(x, "_keras_mask", None), inputs)
            mask = None if all(m is None for m in flatten(mask)) else mask
        training = bool(kwargs.pop("training", False))
        # Tensors passed beyond the first argument (initial_state=..., extra positional inputs)
        # become graph inputs too, named e0, e1, ...
        extra_names = [k for k, v in kwargs.items() if _is_tensorlike(v) or (
            isinstance(v, (list, tuple)) and v and all(_is_tensorlike(t) for t in v))]
        given = {k: kwargs.pop(k) for k in extra_names}
        extra = {k: map_structure(lambda t: to_array(t, what=f"{self._describe()} {k}"), v) for k, v in given.items()}
        if any(_is_tensorlike(v) for v in rest):
            given["__rest__"] = list(rest)
            extra["__rest__"] = [map_structure(to_array, v) for v in rest]
            rest = ()
        flat_extra = flatten(list(extra.values()))
        flat_given = flatten(list(given.values()))  # the tensors themselves: a tape differentiates them too
        flat_arrays = flatten(arrays)
        flat_masks = [] if mask is None else [None if m is None else to_array(m) for m in flatten(mask)]
        key = (tuple((a.shape, str(a.dtype)) for a in flat_arrays),
               tuple(None if m is None else m.shape for m in flat_masks), training, repr(sorted(kwargs.items())),
               repr(rest), tuple(extra), tuple((a.shape, str(a.dtype)) for a in flat_extra))

        def trace():
            b = backend.new_trace_builder(name=self.name, training=training)
            counter = iter(range(len(flat_arrays)))
            sym = map_structure(lambda a: SymbolicTensor(b, b.input(f"x{next(counter)}",
                                                                    TensorType(a.shape, str(a.dtype)))), arrays)
            call_kwargs = dict(kwargs)
            if mask is not None:
                mi = iter(range(len(flat_masks)))
                sym_masks = map_structure(
                    lambda m: None if m is None else SymbolicTensor(
                        b, b.input(f"mask{next(mi)}", TensorType(np.shape(m), "bool"))), mask)
                for t, m in zip(flatten(sym), flatten(sym_masks)):
                    t._keras_mask = m
            call_kwargs["training"] = training
            if not self._call_accepts("training"):
                call_kwargs.pop("training")
            ei = iter(range(len(flat_extra)))
            sym_extra = {k: map_structure(lambda a: SymbolicTensor(b, b.input(f"e{next(ei)}", TensorType(
                a.shape, str(a.dtype)))), v) for k, v in extra.items()}
            call_rest = tuple(sym_extra.pop("__rest__", rest))
            call_kwargs.update(sym_extra)
            outputs = self._call_symbolic(sym, call_rest, call_kwargs)
            flat_out = flatten(outputs)
            out_masks = [getattr(o, "_keras_mask", None) for o in flat_out]
            b.g.graph["outputs"] = [o.node for o in flat_out] + [m.node for m in out_masks if m is not None]
            return b.g, outputs, out_masks

        g, outputs, out_masks = self._eager_graphs.get_or_make(key, trace)  # traced once, under compile_lock
        feeds = {f"x{i}": a for i, a in enumerate(flat_arrays)}
        feeds.update({f"mask{i}": m for i, m in enumerate(flat_masks) if m is not None})
        feeds.update({f"e{i}": a for i, a in enumerate(flat_extra)})
        if "rng_step" in g.graph:
            from ...runtime.executor import next_step
            feeds["rng_step"] = next_step()
        values, updates = run_graph(g, feeds)
        tensors = [Tensor(v) for v in values]
        from .. import tape
        if tape._active_tapes:
            recorded = {f"x{i}": x for i, x in enumerate(flatten(inputs))}
            recorded.update({f"e{i}": x for i, x in enumerate(flat_given)})
            tape.record_graph(g, feeds, recorded, tensors)
        for vnode, value in updates.items():
            g.graph["variables"][vnode].assign(value)
        n = len(flatten(outputs))
        results = tensors[:n]
        extra = iter(tensors[n:])
        for r, m in zip(results, out_masks):
            if m is not None:
                r._keras_mask = next(extra)
        it = iter(results)
        return map_structure(lambda _: next(it), outputs)

    # ---- config --------------------------------------------------------------------------

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype}
        if self._batch_input_shape is not None:
            config["batch_input_shape"] = list(self._batch_input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


def _unique(ws):
    seen, out = set(), []
    for w in ws:
        if id(w) not in seen:
            seen.add(id(w))
            out.append(w)
    return out


def _as_symbolic(builder, value):
    """Wrap a constant (or a variable returned from call) as a node of ``builder``'s graph."""
    return SymbolicTensor(builder, backend.to_node(builder, value))
