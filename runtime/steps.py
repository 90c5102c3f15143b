"""The steps fit/evaluate/predict run, one native call per batch: ``Program.train_step`` for
training, ``EvaluationProgram.test_step`` (loss and metrics in inference mode, no gradients)
for evaluation, ``Program.predict`` for predictions. ``model_steps(model)`` caches them on
the model until it is compiled again. With ``compile(run_eagerly=True)`` the same graphs run
on the numpy reference interpreter instead (``executor.use_reference``).
"""
from collections import OrderedDict

import numpy as np

from kcompiler.ir.types import TensorType

from . import executor


class EvaluationProgram:
    """Keras's test step as one native call: the loss (with regularisation) and each metric
    over one batch, in inference mode (dropout off, BatchNormalization's moving statistics).
    Specialised per batch size and label type, like ``Program.train_step``."""

    def __init__(self, model, target="cpu", fuse=True):
        self.model = model
        self.target = target
        self.fuse = fuse
        self._specialized = {}
        self._ones = {}

    def shaped_graph(self, n, y):
        from kcompiler.passes.shape_inference import infer_shapes, specialize_input_type
        from kcompiler.passes.training import trace_training
        traced = trace_training(self.model, TensorType(y.shape, str(y.dtype)), training=False)
        types = {traced.nodes[i]["attrs"]["name"]: specialize_input_type(traced.nodes[i]["type"], n)
                 for i in traced.graph["inputs"]}
        return traced, infer_shapes(traced, types, n)

    def _specialize(self, n, y):
        key = (n, y.shape[1:], y.dtype.num)
        compiled = self._specialized.get(key)
        if compiled is None:
            from kcompiler.passes.pipeline import back_stages
            traced, shaped = self.shaped_graph(n, y)
            compiled, _ = back_stages(OrderedDict(traced=traced, shaped=shaped), target=self.target, fuse=self.fuse)
            self._specialized[key] = compiled
        return compiled

    def test_step(self, feeds, y, sample_weight=None):
        """``feeds``: the model's inputs by name. Returns {'loss': ..., <metric>: ...} for this batch."""
        n = len(y)
        compiled = self._specialize(n, y)
        feeds = dict(feeds, y=y, sample_weight=_ones(self._ones, n) if sample_weight is None else sample_weight)
        if "rng_step" in compiled.inputs:
            feeds["rng_step"] = np.int64(0)
        outs = compiled.run(feeds, copy=False)
        return {name: float(v) for name, v in zip(compiled.output_names, outs)}


def _ones(cache, n):
    if n not in cache:
        cache[n] = np.ones(n, np.float32)
    return cache[n]


class CompiledSteps:
    """train/test/predict steps on generated kernels (a Program each, made on first use)."""

    def __init__(self, model):
        self.model = model
        self.target = getattr(model, "compile_target", "cpu")
        self.fuse = getattr(model, "compile_fuse", True)
        self._train = self._test = self._predict = None

    @property
    def train_program(self):
        if self._train is None:
            import kcompiler
            self._train = kcompiler.compile(self.model, target=self.target, fuse=self.fuse, training=True)
        return self._train

    def train(self, xs, y, sample_weight):
        return self.train_program.train_step(xs[0] if len(xs) == 1 else xs, y, sample_weight)

    def test(self, feeds, y, sample_weight):
        if self._test is None:
            self._test = EvaluationProgram(self.model, target=self.target, fuse=self.fuse)
        return self._test.test_step(feeds, y, sample_weight)

    def predict(self, xs):
        if self._predict is None:
            import kcompiler
            self._predict = kcompiler.compile(self.model, target=self.target, fuse=self.fuse)
        return self._predict.predict(xs[0] if len(xs) == 1 else xs)


class ReferenceSteps:
    """The same steps' graphs run on the numpy reference interpreter (run_eagerly=True)."""

    def __init__(self, model):
        self.model = model
        self._graphs = {}
        self._ones = {}
        self._iterations = 0

    def _run(self, g, feeds):
        if any(g.nodes[i]["attrs"]["name"] == "rng_step" for i in g.graph["inputs"]):
            feeds = dict(feeds, rng_step=np.asarray(self._iterations, np.int64))
        executor.use_reference(True)
        try:
            outs, updates = executor.run_graph(g, feeds)
        finally:
            executor.use_reference(False)
        for vnode, value in updates.items():
            g.graph["variables"][vnode].assign(value)
        return outs, g.graph.get("output_names")

    def train(self, xs, y, sample_weight):
        from kcompiler.passes.pipeline import front_stages
        n = len(y)
        key = ("train", n, y.shape[1:], y.dtype.num)
        if key not in self._graphs:
            label_type = TensorType(y.shape, str(y.dtype))
            self._graphs[key] = front_stages(self.model, training=True, batch_size=n,
                                             label_type=label_type)["differentiated"]
        feeds = dict(feeds_by_name(self.model, xs), y=y,
                     sample_weight=_ones(self._ones, n) if sample_weight is None else sample_weight)
        outs, names = self._run(self._graphs[key], feeds)
        self._iterations += 1
        return {name: float(v) for name, v in zip(names, outs)}

    def test(self, feeds, y, sample_weight):
        n = len(y)
        key = ("test", n, y.shape[1:], y.dtype.num)
        if key not in self._graphs:
            self._graphs[key] = EvaluationProgram(self.model).shaped_graph(n, y)[1]
        feeds = dict(feeds, y=y, sample_weight=_ones(self._ones, n) if sample_weight is None else sample_weight)
        outs, names = self._run(self._graphs[key], feeds)
        return {name: float(v) for name, v in zip(names, outs)}

    def predict(self, xs):
        from kcompiler.passes.shape_inference import infer_shapes, specialize_input_type
        from kcompiler.passes.trace import trace_model
        n = len(xs[0])
        key = ("predict", n)
        if key not in self._graphs:
            g = trace_model(self.model)
            types = {g.nodes[i]["attrs"]["name"]: specialize_input_type(g.nodes[i]["type"], n)
                     for i in g.graph["inputs"]}
            self._graphs[key] = infer_shapes(g, types, n)
        outs, _ = self._run(self._graphs[key], feeds_by_name(self.model, xs))
        outs = [np.array(o) for o in outs]
        return outs[0] if len(outs) == 1 else outs


def model_steps(model):
    """The model's cached steps; compiling the model again (new optimizer, loss, metrics or
    options) makes new ones."""
    token = (getattr(model, "optimizer", None), getattr(model, "compiled_loss", None),
             tuple(getattr(model, "compiled_metric_objects", None) or ()), bool(getattr(model, "run_eagerly", False)),
             getattr(model, "compile_target", "cpu"), getattr(model, "compile_fuse", True))
    cached = getattr(model, "_runtime_steps", None)
    if cached is None or len(cached[0]) != len(token) or any(a is not b and a != b
                                                             for a, b in zip(cached[0], token)):
        steps = ReferenceSteps(model) if token[3] else CompiledSteps(model)
        model._runtime_steps = cached = (token, steps)
    return cached[1]


def feeds_by_name(model, xs):
    """{input name: array} for the model's inputs, in order."""
    return dict(zip([name for name, _ in model.input_types()], xs))
