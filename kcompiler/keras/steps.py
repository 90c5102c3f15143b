"""The steps fit/evaluate/predict run, one native call per batch, each a ``Program`` (one
specialisation cache per step kind): ``train_step`` for training, ``test_step`` of a program
compiled with ``evaluation=True`` (loss and metrics in inference mode, no gradients) for
evaluation, ``predict`` for predictions. ``model_steps(model)`` caches them on
the model until it is compiled again. With ``compile(run_eagerly=True)`` the same static
graphs run on the numpy reference interpreter instead (pipeline.back_stages).

Under ``keras.distribution.DataParallel`` (keras/distribution.py) the train and test steps
take the global batch and run this rank's shard (kcompiler/distribute/step.py); making the
steps broadcasts rank 0's weights (and optimizer state).

Several threads may run ``predict`` and ``evaluate`` on one model at once: the programs are
made once (under ``compile_lock``) and each native call uses buffers of its own
(kcompiler/codegen/llvm/executable.py). Metrics that keep state across batches (Precision, AUC, ...) live
in the model, so concurrent evaluations of such a model share it.
"""
from ..runtime.specializations import compile_lock
from .distribution import model_distribution


class CompiledSteps:
    """train/test/predict steps on generated kernels (a Program each, made on first use)."""

    def __init__(self, model):
        self.model = model
        self.target = getattr(model, "compile_target", "cpu")
        self.fuse = getattr(model, "compile_fuse", True)
        self.distribution = model_distribution(model)
        if self.distribution is not None:  # every rank starts from rank 0's weights
            self.distribution.check_model(model)
            self.distribution.broadcast_weights(model)
        self._train = self._test = self._predict = None
        self._plain_train = None  # the training program while profile_training(True) swaps in another

    @property
    def train_program(self):
        if self._train is None:
            with compile_lock:
                if self._train is None:
                    import kcompiler
                    self._train = kcompiler.compile(self.model, target=self.target, fuse=self.fuse, training=True)
        return self._train

    def profile_training(self, enabled):
        """Run the next training steps on a program whose entry also counts each kernel's cycles
        (``Program.kernel_cycles``; TensorBoard's ``profile_batch``), or again on the plain one.
        Both programs update the same weights; the step counter (dropout's random stream) carries over."""
        current = self.train_program
        with compile_lock:
            if enabled and not current.options.profile:
                import kcompiler
                self._plain_train = current
                self._train = kcompiler.compile(self.model, target=self.target, fuse=self.fuse, training=True,
                                                options=current.options.replace(profile=True))
            elif not enabled and self._plain_train is not None:
                self._train, self._plain_train = self._plain_train, None
            else:
                return self._train
            self._train.iterations = current.iterations
        return self._train

    def train(self, xs, y, sample_weight, presharded=False):
        """``presharded``: under a distribution, the batch is this rank's own (not the global one)."""
        if self.distribution is not None:
            return self.distribution.train_step(self.train_program, xs, y, sample_weight, presharded)
        return self.train_program.train_step(xs[0] if len(xs) == 1 else xs, y, sample_weight)

    def test(self, feeds, y, sample_weight, presharded=False):
        if self._test is None:
            with compile_lock:
                if self._test is None:
                    from ..program import Program
                    self._test = Program(self.model, target=self.target, fuse=self.fuse,
                                                           evaluation=True)
        xs = list(feeds.values())
        if self.distribution is not None:
            return self.distribution.test_step(self._test, xs, y, sample_weight, presharded)
        return self._test.test_step(xs[0] if len(xs) == 1 else xs, y, sample_weight)

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
             getattr(model, "compile_target", "cpu"), getattr(model, "compile_fuse", True), model_distribution(model))
    cached = getattr(model, "_runtime_steps", None)
    if cached is None or _changed(cached[0], token):
        with compile_lock:  # concurrent first calls share one set of steps
            cached = getattr(model, "_runtime_steps", None)
            if cached is None or _changed(cached[0], token):
                model._runtime_steps = cached = (token, CompiledSteps(model))
    return cached[1]


def _changed(old, new):
    return old != new  # tuples compare element by element, identity first


def feeds_by_name(model, xs):
    """{input name: array} for the model's inputs, in order."""
    return dict(zip([name for name, _ in model.input_types()], xs))
