"""Model, Sequential, InputLayer and Input.

Three ways to write a model, one way to compile it: every model traces by being
called on symbolic inputs (``trace_model`` in passes/trace.py). Sequential calls its
layers in order; a functional Model replays the layer calls recorded when it was
built; a subclassed Model runs the user's ``call``.
"""

from ..errors import ShapeError
from ..ir.types import TensorType, fmt_shape
from . import backend
from .functional import collect_records, replay
from .layers.base import Layer, flatten, map_structure
from .tensor import SymbolicTensor


class InputLayer(Layer):
    def __init__(self, input_shape=None, batch_size=None, dtype=None, name=None, batch_input_shape=None,
                 shape=None, sparse=False, ragged=False, **kwargs):
        name = name or backend.unique_name("input", zero_based=False)
        if shape is not None:
            input_shape = shape
        if batch_input_shape is None:
            if input_shape is None:
                raise ValueError(f"InputLayer '{name}': an input shape is required")
            batch_input_shape = (batch_size,) + tuple(input_shape)
        super().__init__(name=name, dtype=dtype or "float32", **kwargs)
        self._batch_input_shape = tuple(None if d is None else int(d) for d in batch_input_shape)
        b = backend.construction_builder()
        self.output = SymbolicTensor(b, b.input(self.name, TensorType(self._batch_input_shape, self.dtype)))
        from .functional import record_layer_call
        record_layer_call(self, [], (), {}, self.output)
        self.built = True

    def get_config(self):
        # Keras 3's keys; from_config also takes tf.keras 2's batch_input_shape.
        return {"batch_shape": list(self._batch_input_shape), "dtype": self.dtype,
                "sparse": False, "ragged": False, "name": self.name, "optional": False}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "batch_shape" in config:
            config["batch_input_shape"] = config.pop("batch_shape")
        if config.pop("optional", False) or config.get("sparse") or config.get("ragged"):
            raise NotImplementedError(f"InputLayer '{config.get('name')}': optional, sparse and ragged inputs "
                                      "are not supported")
        return cls(**config)


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None, **kwargs):
    """A symbolic input tensor (keras.Input): the start of a functional model."""
    if batch_shape is not None:
        layer = InputLayer(batch_input_shape=batch_shape, dtype=dtype, name=name)
    else:
        layer = InputLayer(input_shape=shape, batch_size=batch_size, dtype=dtype, name=name)
    return layer.output


class Model(Layer):
    """keras.Model: functional (``Model(inputs, outputs)``) or subclassed (``__init__`` + ``call``)."""

    def __init__(self, *args, **kwargs):
        inputs = kwargs.pop("inputs", args[0] if len(args) > 0 else None)
        outputs = kwargs.pop("outputs", args[1] if len(args) > 1 else None)
        self._is_functional = inputs is not None and outputs is not None
        default = "model" if self._is_functional or type(self) is Model else backend.snake_case(type(self).__name__)
        if kwargs.get("name") is None and type(self).__name__ != "Sequential":
            kwargs["name"] = backend.unique_name(default)
        super().__init__(**kwargs)
        self._build_input_shape = None
        self.optimizer = None
        self.compiled = False
        if self._is_functional:
            self._init_functional(inputs, outputs)

    # ---- functional -------------------------------------------------------------------

    def _init_functional(self, inputs, outputs):
        for t in flatten([inputs, outputs]):
            if not isinstance(t, SymbolicTensor):
                raise TypeError(f"Model '{self.name}': inputs and outputs must be symbolic tensors from "
                                f"keras.Input and layer calls, got {type(t).__name__}")
        self.inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        self.outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        self._single_input = not isinstance(inputs, (list, tuple))
        self._single_output = not isinstance(outputs, (list, tuple))
        records = collect_records(self.outputs)
        layers = _layers_by_depth(records, self.outputs)
        self._records = records
        self._layers = layers
        self.built = True

    @property
    def layers(self):
        if getattr(self, "_is_functional", False):
            return list(self._layers)
        return super().layers

    def get_layer(self, name=None, index=None):
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"Model '{self.name}' has no layer named {name!r}; its layers are "
                         f"{[l.name for l in self.layers]}")

    def _all_weights_in_order(self):
        out = []
        for layer in self.layers:
            for w in layer._all_weights_in_order():
                if all(w is not o for o in out):
                    out.append(w)
        return out

    def _own_weights(self):
        return []

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        out = []
        for layer in self.layers:
            out.extend(w for w in layer.trainable_weights if all(w is not o for o in out))
        return out

    @property
    def non_trainable_weights(self):
        out = []
        for layer in self.layers:
            ws = layer.non_trainable_weights if self.trainable else layer.weights
            out.extend(w for w in ws if all(w is not o for o in out))
        return out

    def call(self, inputs, training=None, mask=None):
        if not self._is_functional:
            raise NotImplementedError(f"Model '{self.name}': a subclassed model must define call()")
        new = [inputs] if self._single_input else list(inputs)
        if len(new) != len(self.inputs):
            raise ShapeError(f"Model '{self.name}' expects {len(self.inputs)} inputs, got {len(new)}")
        for old, t in zip(self.inputs, new):
            _check_input_shape(self, old.shape, t.shape)
        outs = replay(self.inputs, self.outputs, new)
        return outs[0] if self._single_output else outs

    def build(self, input_shape):
        """Build a subclassed model by tracing its call on a symbolic input of this shape."""
        if getattr(self, "_is_functional", False):
            return
        self._build_input_shape = input_shape
        b = backend.new_trace_builder(name=f"{self.name}_build")
        if isinstance(input_shape, list) and input_shape and isinstance(input_shape[0], (list, tuple)):
            xs = [SymbolicTensor(b, b.input(f"x{i}", TensorType(tuple(s)))) for i, s in enumerate(input_shape)]
        else:
            xs = SymbolicTensor(b, b.input("x", TensorType(tuple(input_shape))))
        self.built = True  # so __call__ does not build again
        with backend.tracing(b):
            prev, b.layer = b.layer, self._describe()
            try:
                self.call(xs)
            finally:
                b.layer = prev

    def _maybe_build(self, inputs):
        if not self.built:
            shapes = map_structure(lambda t: (None,) + tuple(t.shape)[1:], inputs)
            self._build_input_shape = shapes
            self.built = True  # call() itself builds the sublayers as it runs
        elif self._build_input_shape is None and not getattr(self, "_is_functional", False):
            self._build_input_shape = map_structure(lambda t: (None,) + tuple(t.shape)[1:], inputs)

    def input_types(self):
        """The model's input types (batch dimension None), for tracing."""
        if getattr(self, "_is_functional", False):
            return [(t.builder.g.nodes[t.node]["attrs"].get("name", f"input_{i}"), t.type)
                    for i, t in enumerate(self.inputs)]
        shapes = self._build_input_shape
        if shapes is None:
            raise ValueError(f"Model '{self.name}' has not been built: call it on data or call "
                             "build(input_shape) first, so its input shape is known")
        if isinstance(shapes, list) and shapes and isinstance(shapes[0], (list, tuple)):
            return [(f"input_{i}", TensorType(tuple(s))) for i, s in enumerate(shapes)]
        return [("input", TensorType(tuple(shapes)))]

    @property
    def input_shape(self):
        shapes = [t.shape for _, t in self.input_types()]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        if getattr(self, "_is_functional", False):
            shapes = [t.shape for t in self.outputs]
            return shapes[0] if self._single_output else shapes
        from ..passes.trace import trace_model
        g = trace_model(self)
        shapes = [g.nodes[o]["type"].shape for o in g.graph["outputs"]]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def metrics(self):
        """The compiled metric objects, in compile's order ([] before compile). Metrics that keep
        state (Precision, AUC, ...) hold the latest fit/evaluate's state; the mean-of-samples ones
        (accuracy, mae, ...) are averaged by the loop, and their values are in the logs."""
        return list(getattr(self, "compiled_metric_objects", []))

    @property
    def metrics_names(self):
        """'loss' and each compiled metric's name: the labels of evaluate()'s list of results
        ([] before compile; tf.keras 2 fills it at the first fit/evaluate, Keras 3 lists
        'compile_metrics' instead of the names)."""
        if not getattr(self, "compiled", False):
            return []
        return ["loss"] + [e.log_name for e in getattr(self, "compiled_metric_entries", [])]

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True, target="cpu",
                fuse=True, **kwargs):
        """Configure training: optimizer, loss and metrics (names, objects or keras.ops functions), one
        per output or for all outputs (keras/training.py)."""
        from .training import compile_model
        if kwargs:
            raise TypeError(f"Model.compile() got unexpected keyword argument(s) {sorted(kwargs)} (model "
                            f"'{self.name}'); it takes optimizer, loss, metrics, loss_weights, weighted_metrics, "
                            "run_eagerly, steps_per_execution, jit_compile, auto_scale_loss, target and fuse")
        compile_model(self, optimizer, loss, metrics, loss_weights, weighted_metrics, run_eagerly=run_eagerly,
                      steps_per_execution=steps_per_execution, jit_compile=jit_compile,
                      auto_scale_loss=auto_scale_loss, target=target, fuse=fuse)

    # fit/evaluate/predict and weight files: the loops live in keras/loops.py

    def check_class_ids(self, y, output_index=None):
        """Raises ValueError if sparse labels ``y`` (of output ``output_index`` of several) hold an id
        outside the output's classes."""
        from .training import check_class_ids
        check_class_ids(self, y, output_index)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1,
            max_queue_size=10, workers=1, use_multiprocessing=False):
        from . import loops
        return loops.fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                         shuffle, class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps,
                         validation_batch_size, validation_freq, max_queue_size, workers, use_multiprocessing)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, max_queue_size=10, workers=1, use_multiprocessing=False, return_dict=False):
        from . import loops
        return loops.evaluate(self, x, y, batch_size, verbose, sample_weight, steps, callbacks, max_queue_size,
                              workers, use_multiprocessing, return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, max_queue_size=10, workers=1,
                use_multiprocessing=False):
        from . import loops
        return loops.predict(self, x, batch_size, verbose, steps, callbacks, max_queue_size, workers,
                             use_multiprocessing)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, reset_metrics=True, return_dict=False):
        from . import loops
        return loops.train_on_batch(self, x, y, sample_weight, class_weight, reset_metrics, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, reset_metrics=True, return_dict=False):
        from . import loops
        return loops.test_on_batch(self, x, y, sample_weight, reset_metrics, return_dict)

    def predict_on_batch(self, x):
        from . import loops
        return loops.predict_on_batch(self, x)

    def save_weights(self, filepath, overwrite=True, save_format=None, options=None):
        from . import loops
        loops.save_weights(self, filepath, overwrite, save_format, options)

    def load_weights(self, filepath, skip_mismatch=False, by_name=False, options=None):
        from . import loops
        loops.load_weights(self, filepath, skip_mismatch, by_name, options)

    def save(self, filepath, overwrite=True, save_format=None, include_optimizer=True, **kwargs):
        """Save the whole model: a `.keras` archive, or tf.keras 2's HDF5 file (`.h5`, save_format='h5')."""
        from .model_files import save_model
        save_model(self, filepath, overwrite=overwrite, save_format=save_format,
                   include_optimizer=include_optimizer, **kwargs)

    def export(self, filepath, format="tf_saved_model", **kwargs):
        """Keras 3 exports TensorFlow SavedModels (and ONNX, OpenVINO) here; kcompiler writes none."""
        raise ValueError(f"model.export(format={format!r}) is not supported: kcompiler does not write TensorFlow "
                         f"SavedModels or other exported artifacts; save to a `.keras` or `.h5` file with "
                         f"model.save. Received: filepath={filepath}")

    def summary(self, line_length=None, positions=None, print_fn=None):
        from .summary import print_summary
        print_summary(self, line_length=line_length, positions=positions, print_fn=print_fn)

    def get_config(self):
        from .saving import model_config
        return model_config(self)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from .saving import model_from_layer_config
        from .serialization import custom_object_scope
        with custom_object_scope(custom_objects):
            return model_from_layer_config(cls, config)

    def to_json(self, **kwargs):
        from .saving import model_to_json
        return model_to_json(self, **kwargs)

    def to_yaml(self, **kwargs):
        from .saving import model_to_yaml
        return model_to_yaml(self, **kwargs)


def _layers_by_depth(records, outputs):
    """tf.keras's layer order: by depth (distance from the outputs, largest first), ties in the
    order a depth-first walk from the outputs first finishes them."""
    consumers = {id(r): [] for r in records}
    by_tensor = {}
    for r in records:
        for t in flatten(r.outputs):
            by_tensor[id(t)] = r
    for r in records:
        for t in r.input_tensors():
            if id(t) in by_tensor:
                consumers[id(by_tensor[id(t)])].append(r)
    depth = {}
    for r in reversed(records):  # creation order is topological
        depth[id(r)] = max([depth[id(c)] + 1 for c in consumers[id(r)]], default=0)
    index, seen = {}, set()

    def visit(rec):
        if rec is None or id(rec) in seen:
            return
        seen.add(id(rec))
        for t in rec.input_tensors():
            visit(getattr(t, "_keras_history", None))
        if rec.layer is not None and id(rec.layer) not in index:
            index[id(rec.layer)] = len(index)

    for t in flatten(outputs):
        visit(t._keras_history)
    layer_depth, layers = {}, []
    for r in records:
        if r.layer is None:
            continue
        if id(r.layer) not in layer_depth:
            layers.append(r.layer)
        layer_depth[id(r.layer)] = max(layer_depth.get(id(r.layer), 0), depth[id(r)])
    return sorted(layers, key=lambda l: (-layer_depth[id(l)], index.get(id(l), 0)))


def _check_input_shape(model, expected, actual):
    if len(expected) != len(actual) or any(e is not None and a is not None and e != a
                                           for e, a in zip(expected, actual)):
        raise ShapeError(f"Model '{model.name}' expects input shape {fmt_shape(expected)}, "
                         f"got {fmt_shape(actual)}")


class Sequential(Model):
    """A linear stack of layers."""

    def __init__(self, layers=None, name=None, trainable=True, **kwargs):
        super().__init__(name=name or backend.unique_name("sequential"), trainable=trainable, **kwargs)
        self._is_functional = False
        self._stack = []
        self._input = None          # the symbolic input in the construction graph, once known
        self._input_implied = False  # whether _input is the first layer's implied input (Embedding's (None, None))
        self._outputs_per_layer = []
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if isinstance(layer, SymbolicTensor):
            rec = layer._keras_history
            if rec is None or not isinstance(rec.layer, InputLayer):
                raise TypeError(f"Sequential '{self.name}': add() takes layers or a keras.Input tensor")
            self._input, self._input_implied = layer, False
            self._rebuild()
            return
        if isinstance(layer, InputLayer):
            self._input, self._input_implied = layer.output, False
            self._rebuild()
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential '{self.name}': add() takes Layer instances, got {type(layer).__name__}")
        self._stack.append(layer)
        self._tracking = False
        self._sublayers = list(self._stack)
        self._tracking = True
        if self._input is None and len(self._stack) == 1 and layer._batch_input_shape is not None:
            self._input = InputLayer(batch_input_shape=layer._batch_input_shape, dtype=_input_dtype(layer),
                                     name=f"{layer.name}_input").output
            self._input_implied = True
        if self._input is not None:
            try:
                self._extend(layer)
            except ValueError:  # ShapeError included
                if not (self._input_implied and None in self._input.shape[1:]):
                    raise
                self._defer_build()

    def _defer_build(self):
        """The layers cannot all be built from the first layer's implied input, whose unknown
        dimensions (an Embedding's sequence length) the data will give: as Keras 3 does, the
        model builds at its first call on data (``_maybe_build``) or ``build(input_shape)``."""
        self._input, self._input_implied = None, False
        self._outputs_per_layer = []
        self.built = False

    def pop(self):
        if not self._stack:
            raise TypeError(f"Sequential '{self.name}' has no layers to pop")
        self._stack.pop()
        self._sublayers = list(self._stack)
        self._rebuild()

    def _rebuild(self):
        self._outputs_per_layer = []
        if self._input is not None:
            for layer in self._stack:
                self._extend(layer)

    def _extend(self, layer):
        x = self._outputs_per_layer[-1] if self._outputs_per_layer else self._input
        out = layer(x)
        self._outputs_per_layer.append(out)
        self.built = True

    @property
    def layers(self):
        return list(self._stack)

    @property
    def inputs(self):
        return None if self._input is None else [self._input]

    @property
    def outputs(self):
        return [self._outputs_per_layer[-1]] if self._outputs_per_layer else None

    def build(self, input_shape=None):
        if input_shape is None:
            if self._input is None:
                raise ValueError(f"Sequential '{self.name}': build() needs an input shape")
            return
        if self._input is not None:
            return
        self._input = InputLayer(batch_input_shape=tuple(input_shape),
                                 dtype=_input_dtype(self._stack[0]) if self._stack else None,
                                 name=f"{self._stack[0].name}_input" if self._stack else None).output
        self._rebuild()

    def _maybe_build(self, inputs):
        if self._input is None:
            t = inputs if not isinstance(inputs, (list, tuple)) else inputs[0]
            self._input = InputLayer(batch_input_shape=(None,) + tuple(t.shape)[1:], dtype=t.dtype,
                                     name=f"{self._stack[0].name}_input" if self._stack else None).output
            self._rebuild()

    def call(self, inputs, training=None, mask=None):
        if not self._stack:
            raise ValueError(f"Sequential '{self.name}' has no layers")
        x = inputs
        if mask is not None and getattr(x, "_keras_mask", None) is None:
            x._keras_mask = mask
        for layer in self._stack:
            kwargs = {"training": training} if layer._call_accepts("training") else {}
            x = layer(x, **kwargs)
        return x

    def compute_mask(self, inputs, mask=None):
        return None

    def input_types(self):
        if self._input is None:
            raise ValueError(f"Sequential '{self.name}' has not been built: give the first layer an "
                             "input_shape, start with keras.Input, or call the model on data first")
        name = self._input.builder.g.nodes[self._input.node]["attrs"]["name"]
        return [(name, self._input.type)]

    @property
    def output_shape(self):
        if not self._outputs_per_layer:
            raise ValueError(f"Sequential '{self.name}' has not been built")
        return self._outputs_per_layer[-1].shape


def _input_dtype(first_layer):
    """The dtype of the input a Sequential makes for its first layer: the layer's, and int32 ids
    for an Embedding."""
    if first_layer.dtype == "float32" and type(first_layer).__name__ == "Embedding":
        return "int32"
    return first_layer.dtype



