"""The steps fit/evaluate/predict run, one native call per batch: ``Program.train_step`` for
training, ``EvaluationProgram.test_step`` (loss and metrics in inference mode, no gradients)
for evaluation, ``Program.predict`` for predictions. ``model_steps(model)`` caches them on
the model until it is compiled again. With ``compile(run_eagerly=True)`` the same static
graphs run on the numpy reference interpreter instead (pipeline.back_stages).

Several threads may run ``predict`` and ``evaluate`` on one model at once: the programs are
made once (under ``compile_lock``) and each native call uses buffers of its own
(runtime/compiled.py). Metrics that keep state across batches (Precision, AUC, ...) live
in the model, so concurrent evaluations of such a model share it.
"""
import numpy as np

from kcompiler.ir.types import TensorType

from .specializations import SpecializationCache, compile_lock, unit_weights


class EvaluationProgram:
    """Keras's test step as one native call: the loss (with regularisation) and each metric
    over one batch, in inference mode (dropout off, BatchNormalization's moving statistics).
    Specialised per batch size and label type, like ``Program.train_step``, keeping the
    ``max_specializations`` most recently used ones."""

    def __init__(self, model, target="cpu", fuse=True, max_specializations=None):
        self.model = model
        self.target = target
        self.fuse = fuse
        self._specialized = SpecializationCache(max_specializations)
        self._ones = {}  # batch size -> sample weights of 1

    def _specialize(self, n, y, feeds):
        key = (n, y.shape[1:], y.dtype.num)
        input_shapes = None
        if any(None in t.shape[1:] for _, t in self.model.input_types()):  # sequence lengths too
            input_shapes = {name: np.shape(a) for name, a in feeds.items()}
            key = key + tuple(sorted(input_shapes.items()))
        recent = self._specialized.recent
        if recent[0] == key:
            return recent[1]
        return self._specialized.get_or_make(key, self._compile, n, y, input_shapes)

    def _compile(self, n, y, input_shapes):
        from kcompiler.pipeline import back_stages, front_stages
        stages = front_stages(self.model, batch_size=n, label_type=TensorType(y.shape, str(y.dtype)),
                              input_shapes=input_shapes, evaluation=True)
        compiled, _ = back_stages(stages, target=self.target, fuse=self.fuse,
                                  run_eagerly=bool(getattr(self.model, "run_eagerly", False)))
        return compiled

    def test_step(self, feeds, y, sample_weight=None):
        """``feeds``: the model's inputs by name. Returns {'loss': ..., <metric>: ...} for this batch."""
        n = len(y)
        compiled = self._specialize(n, y, feeds)
        if sample_weight is None:
            sample_weight = unit_weights(self._ones, n, self._specialized.max_entries)
        feeds = dict(feeds, y=y, sample_weight=sample_weight)
        if "rng_step" in compiled.inputs:
            feeds["rng_step"] = np.int64(0)
        return compiled.run(feeds, scalars=True)


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
            with compile_lock:
                if self._train is None:
                    import kcompiler
                    self._train = kcompiler.compile(self.model, target=self.target, fuse=self.fuse, training=True)
        return self._train

    def train(self, xs, y, sample_weight):
        return self.train_program.train_step(xs[0] if len(xs) == 1 else xs, y, sample_weight)

    def test(self, feeds, y, sample_weight):
        if self._test is None:
            with compile_lock:
                if self._test is None:
                    self._test = EvaluationProgram(self.model, target=self.target, fuse=self.fuse)
        return self._test.test_step(feeds, y, sample_weight)

    def predict(self, xs):
        if self._predict is None:
            with compile_lock:
                if self._predict is None:
                    import kcompiler
                    self._predict = kcompiler.compile(self.model, target=self.target, fuse=self.fuse)
        return self._predict.predict(xs[0] if len(xs) == 1 else xs)


def model_steps(model):
    """The model's cached steps; compiling the model again (new optimizer, loss, metrics or
    options) makes new ones."""
    token = (getattr(model, "optimizer", None), getattr(model, "compiled_loss", None),
             tuple(getattr(model, "compiled_metric_objects", None) or ()), bool(getattr(model, "run_eagerly", False)),
             getattr(model, "compile_target", "cpu"), getattr(model, "compile_fuse", True))
    cached = getattr(model, "_runtime_steps", None)
    if cached is None or _changed(cached[0], token):
        with compile_lock:  # concurrent first calls share one set of steps
            cached = getattr(model, "_runtime_steps", None)
            if cached is None or _changed(cached[0], token):
                model._runtime_steps = cached = (token, CompiledSteps(model))
    return cached[1]


def _changed(old, new):
    return len(old) != len(new) or any(a is not b and a != b for a, b in zip(old, new))


def feeds_by_name(model, xs):
    """{input name: array} for the model's inputs, in order."""
    return dict(zip([name for name, _ in model.input_types()], xs))
