"""Program: what kcompiler.compile returns — the IR at every stage, the generated
kernels, and the entry points that run them (``predict``, ``train_step``).

Programs are specialised per batch size (and label type for training); a batch of
another size — the last, partial batch of an epoch — gets its own specialisation,
so it is computed exactly on its real samples. A program keeps the
``max_specializations`` (default ``$KCOMPILER_MAX_SPECIALIZATIONS``, else 8) most
recently used ones; an evicted one is made again (from the disk cache) when it comes back.

Several threads may call ``predict`` on one program at once (runtime/compiled.py,
runtime/specializations.py); ``train_step`` updates the weights and must not run
concurrently with another step.
"""
import numpy as np

from .errors import KCompilerError, ShapeError
from .ir.printer import dump as dump_graph
from .ir.types import fmt_shape
from .options import resolve
from .runtime.collector import older_objects_frozen
from .runtime.data import as_numbers, to_array
from .runtime.specializations import SpecializationCache, compile_lock, unit_weights

with older_objects_frozen():  # the compiler's modules: a first compile imports them here
    from .pipeline import back_stages, front_stages


class Program:
    def __init__(self, model, *, target="cpu", fuse=True, training=False, evaluation=False, batch_size=None,
                 max_specializations=None, options=None):
        if training and evaluation:
            raise ValueError("a Program is compiled for training or for evaluation, not both")
        self.model = model
        self.target = target
        self.evaluation = evaluation
        self.options = resolve(options, **({"max_specializations": max_specializations}
                                           if max_specializations is not None else {}))
        self.fuse = fuse
        self.training = training
        self.batch_size = batch_size
        self.iterations = 0
        # model.compile(run_eagerly=True): the numpy reference interpreter runs the steps (debugging)
        self.run_eagerly = bool(getattr(model, "run_eagerly", False))
        self._specialized = SpecializationCache(self.options.max_specializations)  # key -> (CompiledGraph, stages)
        # the first specialisation made: program.kernels, graph and dump show it, even once evicted
        self._compiled = None
        self._input_specs = None
        self._has_symbolic_dims = None
        self._label_type_cache = None
        self._weight_names = None  # the step's sample-weight inputs (one per labelled output)
        self._ones = {}  # batch size -> sample weights of 1
        with compile_lock:
            self.stages = front_stages(model, training=training, batch_size=batch_size, evaluation=evaluation)
            if batch_size is not None:
                self._compiled, self.stages = back_stages(self.stages, target=target, fuse=fuse,
                                                          run_eagerly=self.run_eagerly, options=self.options)
                self._specialized[self._key(batch_size, self._label_type(self.stages["traced"]))] = \
                    (self._compiled, self.stages)

    def _label_type(self, g):
        """The type of the traced graph's labels (None for inference programs); a list of one
        per label input for a model with several labelled outputs."""
        names = g.graph.get("label_names")
        if not names:
            return None
        by_name = {g.nodes[n]["attrs"]["name"]: g.nodes[n]["type"] for n in g.graph["inputs"]}
        types = [by_name[name] for name in names]
        return types[0] if names == ["y"] else types

    @staticmethod
    def _key(batch_size, label_type):
        if label_type is None:
            return (batch_size, None)
        if isinstance(label_type, (list, tuple)):
            return (batch_size,) + tuple(Program._key(None, t)[1:] for t in label_type)
        dtype = label_type.dtype
        return (batch_size, tuple(label_type.shape[1:]), dtype.num if hasattr(dtype, "num") else np.dtype(dtype).num)

    @property
    def graph(self):
        """The final IR (the last stage)."""
        return next(reversed(self.stages.values()))

    @property
    def kernels(self):
        return self._compiled.kernels if self._compiled is not None else []

    def profile(self):
        """[(kernel name, cycles)] of the first specialisation's kernels summed over its runs so far,
        most expensive first; needs a CPU program compiled with the profile option
        (KCOMPILER_PROFILE=1)."""
        if self._compiled is None or not hasattr(self._compiled, "profile"):
            raise KCompilerError(f"no kernel profile: profiling needs a CPU program compiled with a batch size "
                                 f"and the profile option (KCOMPILER_PROFILE=1); this one targets {self.target}")
        return self._compiled.profile()

    def kernel_cycles(self):
        """[(kernel name, cycles)] that the specialisation run last counted since the previous
        call, most expensive first; its counters start again from zero. Needs a program compiled
        with ``options.profile`` (``KCOMPILER_PROFILE=1``) for the CPU target."""
        compiled = self._specialized.recent[1]
        if compiled is None:
            raise KCompilerError("kernel_cycles: this program has not run a step yet")
        if not hasattr(compiled[0], "profile"):
            raise KCompilerError(f"kernel_cycles: the kernel profiler counts the CPU target's kernels; this "
                                 f"program runs on target {self.target!r}"
                                 + (" with run_eagerly=True" if self.run_eagerly else ""))
        return compiled[0].profile(reset=True)

    def dump(self, fmt="text", stage=None):
        if stage is None:
            stage = next(reversed(self.stages))
        if stage not in self.stages:
            raise KeyError(f"no stage {stage!r}; this program has {list(self.stages)}")
        return dump_graph(self.stages[stage], fmt, stage)

    def _symbolic_dims(self):
        """Whether some input has a symbolic dimension besides the batch (a sequence length)."""
        if self._has_symbolic_dims is None:
            self._has_symbolic_dims = any(None in t.shape[1:] for _, t in self.model.input_types())
        return self._has_symbolic_dims

    def _specialize(self, batch_size, label_type=None, feeds=None):
        key = self._key(batch_size, label_type)
        input_shapes = None
        if feeds is not None and self._symbolic_dims():  # sequence lengths are specialisation keys too
            input_shapes = {name: feeds[name].shape for name, _ in self._input_specs}
            key = key + tuple(sorted(input_shapes.items()))
        recent = self._specialized.recent
        if recent[0] == key:
            return recent[1][0]
        return self._specialized.get_or_make(key, self._make, batch_size, label_type, input_shapes)[0]

    def _make(self, batch_size, label_type, input_shapes):
        """A new specialisation: (CompiledGraph, stages); called under compile_lock."""
        with older_objects_frozen():
            stages = front_stages(self.model, training=self.training, batch_size=batch_size,
                                  label_type=label_type, input_shapes=input_shapes, evaluation=self.evaluation)
            made = back_stages(stages, target=self.target, fuse=self.fuse, run_eagerly=self.run_eagerly,
                               options=self.options)
        if self._compiled is None:
            self._compiled, self.stages = made
        return made

    def _input_arrays(self, x):
        if self._input_specs is None:
            self._input_specs = list(self.model.input_types())
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(self._input_specs):
            raise ShapeError(f"model '{self.model.name}' takes {len(self._input_specs)} inputs, got {len(xs)}")
        feeds = {}
        for (name, t), a in zip(self._input_specs, xs):
            if not (type(a) is np.ndarray and a.dtype == t.dtype):  # the common case needs no conversion
                a = to_array(a, dtype=t.dtype, what=f"model '{self.model.name}', input {name!r}")  # range-checked
            if a.shape[1:] != t.shape[1:] and (len(a.shape) != len(t.shape) or any(
                    d is not None and d != e for d, e in zip(t.shape[1:], a.shape[1:]))):
                raise ShapeError(f"model '{self.model.name}' expects input {name!r} of shape {fmt_shape(t.shape)}, "
                                 f"got {fmt_shape(a.shape)}")
            feeds[name] = a
        return feeds

    # ---- inference ----------------------------------------------------------------------

    def __call__(self, x):
        return self.predict(x)

    def predict(self, x, batch_size=None):
        """Forward pass on generated kernels, in batches of the program's batch size."""
        if self.training or self.evaluation:
            raise KCompilerError("this Program was compiled for training or evaluation; compile with "
                                 "training=False for predictions")
        feeds = self._input_arrays(x)
        n = len(next(iter(feeds.values())))
        step = batch_size or self.batch_size or n
        results = []
        for start in range(0, n, step):
            chunk = {k: v[start:start + step] for k, v in feeds.items()}
            rows = len(next(iter(chunk.values())))
            compiled = self._specialize(rows, feeds=chunk)
            results.append(compiled.run(chunk))
        outs = [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]
        return outs[0] if len(outs) == 1 else outs

    # ---- training -----------------------------------------------------------------------

    def train_step(self, x, y, sample_weight=None, collective=None):
        """One whole training step (forward, loss, backward, update) in one native call.
        Returns {'loss': this batch's loss incl. regularisation, <metric>: its batch value}.
        A data-parallel step (compiled under keras.distribution.DataParallel) is two native
        calls with ``collective`` (distribute/step.py: StepCollective) between them; without
        one it runs as one process's step."""
        if not self.training:
            raise KCompilerError("this Program was compiled for inference: compile with training=True")
        logs = self._step(x, y, sample_weight, rng_step=self.iterations, collective=collective)
        self.iterations += 1
        return logs

    def test_step(self, x, y, sample_weight=None, collective=None):
        """Keras's test step in one native call: the loss (with regularisation) and each metric
        over one batch, in inference mode (dropout off, BatchNormalization's moving statistics);
        needs a program compiled with ``evaluation=True``."""
        if not self.evaluation:
            raise KCompilerError("test_step needs a Program compiled with evaluation=True")
        return self._step(x, y, sample_weight, rng_step=0, collective=collective)

    def _step(self, x, y, sample_weight, rng_step, collective=None):
        feeds = self._input_arrays(x)
        n = len(next(iter(feeds.values())))
        if self._label_type_cache is None:
            self._label_type_cache = self._label_type(self.stages["traced"])
        expected = self._label_type_cache
        if isinstance(expected, list):  # several labelled outputs: one label array each
            names = self.stages["traced"].graph["label_names"]
            ys = list(y) if isinstance(y, (list, tuple)) else [y]
            if len(ys) != len(names):
                raise ShapeError(f"labels: {len(ys)} label arrays for the {len(names)} labelled outputs of "
                                 f"model '{self.model.name}'")
            ys = [self._labels(a, t, n, int(name[2:])) for a, t, name in zip(ys, expected, names)]
            compiled = self._specialize(n, ys, feeds)
            feeds.update(zip(names, ys))
        else:
            y = self._labels(y, expected, n, None)
            compiled = self._specialize(n, y, feeds)  # arrays have .shape and .dtype like a TensorType
            feeds["y"] = y
        weight_names = self._weight_names
        if weight_names is None:
            weight_names = self._weight_names = self.stages["traced"].graph.get("sample_weight_names",
                                                                                ["sample_weight"])
        if sample_weight is None and len(weight_names) == 1:  # the common case, without the loop below
            feeds[weight_names[0]] = unit_weights(self._ones, n, self._specialized.max_entries)
        else:
            if not isinstance(sample_weight, (list, tuple)):  # one for every output
                sample_weight = [sample_weight] * len(weight_names)
            elif len(sample_weight) != len(weight_names):  # one per labelled output
                raise ShapeError(f"sample_weight: {len(sample_weight)} arrays for the {len(weight_names)} "
                                 f"labelled outputs of model '{self.model.name}'")
            for name, w in zip(weight_names, sample_weight):
                if w is None:
                    feeds[name] = unit_weights(self._ones, n, self._specialized.max_entries)
                else:
                    feeds[name] = to_array(w, dtype=np.float32, what="sample_weight").reshape(n)
        if "rng_step" in compiled.inputs:
            feeds["rng_step"] = rng_step
        if "gradient_scale" in compiled.inputs:  # this rank's share of the global batch
            feeds["gradient_scale"] = 1.0 if collective is None else collective.gradient_scale
        if collective is not None:
            return compiled.run(feeds, scalars=True, collective=collective)
        return compiled.run(feeds, scalars=True)

    def _labels(self, y, expected, n, output_index):
        """One label array of the step's expected dtype, for ``n`` samples."""
        if not (type(y) is np.ndarray and y.dtype == expected.dtype):
            # class ids may come as floats or int64 (as Keras accepts them): range-checked when narrowed.
            # Labels already of the expected dtype skip the class-id check, which costs a fifth of a small
            # step: fit and train_on_batch check their whole label array once.
            y = as_numbers(y, what="labels")
            check = getattr(self.model, "check_class_ids", None)  # a Keras model checks its sparse labels
            if check is not None:
                check(y) if output_index is None else check(y, output_index)
            y = to_array(y, dtype=expected.dtype, what="labels")
        if len(y) != n:
            raise ShapeError(f"labels: {len(y)} samples for {n} inputs")
        return y

    def __repr__(self):
        return f"<Program {self.model.name}: stages={list(self.stages)}, target={self.target}>"

