"""Program: what kcompiler.compile returns — the IR at every stage, the generated
kernels, and the entry points that run them."""
from .ir.printer import dump as dump_graph


class Program:
    def __init__(self, model, stages, *, target="cpu", fuse=True, training=False, batch_size=None):
        self.model = model
        self.stages = stages
        self.target = target
        self.fuse = fuse
        self.training = training
        self.batch_size = batch_size
        self.kernels = []

    @property
    def graph(self):
        """The final IR (the last stage)."""
        return next(reversed(self.stages.values()))

    def dump(self, fmt="text", stage=None):
        if stage is None:
            stage = next(reversed(self.stages))
        if stage not in self.stages:
            raise KeyError(f"no stage {stage!r}; this program has {list(self.stages)}")
        return dump_graph(self.stages[stage], fmt, stage)

    def __call__(self, x):
        return self.predict(x)

    def predict(self, x):
        raise NotImplementedError("code generation has not landed yet: this Program holds the IR only "
                                  "(see the compiler-core issue)")

    def __repr__(self):
        return f"<Program {self.model.name}: stages={list(self.stages)}, target={self.target}>"
