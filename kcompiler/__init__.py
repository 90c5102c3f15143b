"""kcompiler: a graph compiler for Keras models.

    from kcompiler import keras      # the tf.keras-compatible front end
    program = kcompiler.compile(model, batch_size=32)
    program.predict(x)               # runs generated kernels
    print(program.dump())            # the IR after the last pass
"""
__version__ = "0.1.0"

TARGETS = ("cpu", "cuda")

# kcompiler.report is the function (kcompiler/report/__init__.py, which imports nothing heavy):
# bound here, at package import, so it is not replaced by the subpackage of the same name.
# The subpackage's modules import as `from kcompiler.report import collect` (not `import
# kcompiler.report.collect as ...`, which looks the attribute up on the function).
from .report import report  # noqa: E402,F401


def __getattr__(name):
    # kcompiler.GradientTape without importing the front end at package import time
    if name == "GradientTape":
        from .keras.tape import GradientTape
        return GradientTape
    if name == "errors":
        from . import errors
        return errors
    raise AttributeError(f"module 'kcompiler' has no attribute {name!r}")


def compile(model, *, target="cpu", fuse=True, training=False, batch_size=None, max_specializations=None,
            options=None):
    """Compile a Keras model. Without a batch size the program holds the traced and
    shape-checked IR and specialises (fuses, plans, generates code) per batch size on
    first use; with one, it does so now. It keeps the ``max_specializations`` most recently
    used specialisations (default ``$KCOMPILER_MAX_SPECIALIZATIONS``, else 8). ``options``
    (kcompiler.options.Options) override the defaults read from the environment."""
    from .program import Program
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
    return Program(model, target=target, fuse=fuse, training=training, batch_size=batch_size,
                   max_specializations=max_specializations, options=options)


def benchmark(model, x, y=None, modes=("unfused", "fused"), steps=20):
    """Per-mode step time, kernel count and bytes moved: fused against unfused code."""
    from .bench import benchmark as run
    return run(model, x, y, modes=modes, steps=steps)


def dump_ir(model, fmt="text", stage=None, **compile_kwargs):
    """The IR of ``model`` at ``stage`` (None = the last stage that exists) as text, json or dot."""
    return compile(model, **compile_kwargs).dump(fmt, stage)
