"""Program: what kcompiler.compile returns — the IR at every stage, the generated
kernels, and the entry points that run them (``predict``, ``train_step``).

Programs are specialised per batch size (and label type for training); a batch of
another size — the last, partial batch of an epoch — gets its own specialisation,
so it is computed exactly on its real samples.
"""
import numpy as np

from .errors import KCompilerError, ShapeError
from .ir.printer import dump as dump_graph
from .ir.types import TensorType
from .keras.tensor import to_array
from .passes.pipeline import back_stages, front_stages


class Program:
    def __init__(self, model, *, target="cpu", fuse=True, training=False, batch_size=None):
        self.model = model
        self.target = target
        self.fuse = fuse
        self.training = training
        self.batch_size = batch_size
        self.iterations = 0
        self._specialized = {}  # key -> (CompiledGraph, stages)
        self.stages = front_stages(model, training=training, batch_size=batch_size)
        self._compiled = None
        if batch_size is not None:
            self._compiled, self.stages = back_stages(self.stages, target=target, fuse=fuse)
            self._specialized[self._key(batch_size, self._label_type(self.stages["traced"]))] = \
                (self._compiled, self.stages)

    def _label_type(self, g):
        """The type of the traced graph's labels (None for inference programs)."""
        for n in g.graph["inputs"]:
            if g.nodes[n]["attrs"]["name"] == "y":
                return g.nodes[n]["type"]
        return None

    @staticmethod
    def _key(batch_size, label_type):
        return (batch_size, None if label_type is None else (label_type.shape[1:], label_type.dtype))

    @property
    def graph(self):
        """The final IR (the last stage)."""
        return next(reversed(self.stages.values()))

    @property
    def kernels(self):
        return self._compiled.kernels if self._compiled is not None else []

    def dump(self, fmt="text", stage=None):
        if stage is None:
            stage = next(reversed(self.stages))
        if stage not in self.stages:
            raise KeyError(f"no stage {stage!r}; this program has {list(self.stages)}")
        return dump_graph(self.stages[stage], fmt, stage)

    def _specialize(self, batch_size, label_type=None):
        key = self._key(batch_size, label_type)
        if key not in self._specialized:
            stages = front_stages(self.model, training=self.training, batch_size=batch_size, label_type=label_type)
            self._specialized[key] = back_stages(stages, target=self.target, fuse=self.fuse)
        compiled, stages = self._specialized[key]
        if self._compiled is None:
            self._compiled, self.stages = compiled, stages
        return compiled

    def _input_arrays(self, x):
        names = [name for name, _ in self.model.input_types()]
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(names):
            raise ShapeError(f"model '{self.model.name}' takes {len(names)} inputs, got {len(xs)}")
        arrays = []
        for (name, t), a in zip(self.model.input_types(), xs):
            a = to_array(a, what=f"input {name!r}")
            if t.dtype.startswith("int") and a.dtype.kind == "f":
                a = a.astype(t.dtype)
            arrays.append(a)
        return dict(zip(names, arrays))

    # ---- inference ----------------------------------------------------------------------

    def __call__(self, x):
        return self.predict(x)

    def predict(self, x, batch_size=None):
        """Forward pass on generated kernels, in batches of the program's batch size."""
        if self.training:
            raise KCompilerError("this Program was compiled for training; use train_step, or compile "
                                 "with training=False for predictions")
        feeds = self._input_arrays(x)
        n = len(next(iter(feeds.values())))
        step = batch_size or self.batch_size or n
        results = []
        for start in range(0, n, step):
            chunk = {k: v[start:start + step] for k, v in feeds.items()}
            rows = len(next(iter(chunk.values())))
            compiled = self._specialize(rows)
            results.append(compiled.run(chunk))
        outs = [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]
        return outs[0] if len(outs) == 1 else outs

    # ---- training -----------------------------------------------------------------------

    def train_step(self, x, y, sample_weight=None):
        """One whole training step (forward, loss, backward, update) in one native call.
        Returns {'loss': this batch's loss incl. regularisation, <metric>: its batch value}."""
        if not self.training:
            raise KCompilerError("this Program was compiled for inference: compile with training=True")
        feeds = self._input_arrays(x)
        n = len(next(iter(feeds.values())))
        y = to_array(y, what="labels")
        expected = self._label_type(self.stages["traced"])
        if y.dtype.kind == "f" and expected.dtype == "int32":
            y = y.astype(np.int32)  # class ids given as floats, as Keras accepts them
        if len(y) != n:
            raise ShapeError(f"labels: {len(y)} samples for {n} inputs")
        label_type = TensorType(y.shape, str(y.dtype))
        compiled = self._specialize(n, label_type)
        feeds["y"] = y
        feeds["sample_weight"] = (np.ones(n, np.float32) if sample_weight is None
                                  else to_array(sample_weight, dtype=np.float32).reshape(n))
        if "rng_step" in compiled.inputs:
            feeds["rng_step"] = np.asarray(self.iterations, dtype=np.int64)
        outs = compiled.run(feeds)
        self.iterations += 1
        names = compiled.graph.graph.get("output_names", ["loss"])
        return {name: float(v) for name, v in zip(names, outs)}

    def __repr__(self):
        return f"<Program {self.model.name}: stages={list(self.stages)}, target={self.target}>"
