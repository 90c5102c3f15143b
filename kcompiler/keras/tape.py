"""Recording of eager computations for GradientTape (the compiler-core issue builds on this).

Eager ops call ``record``; with no tape active it does nothing."""

_active_tapes = []


def record(op, inputs, attrs, outputs):
    for t in _active_tapes:
        t._record(op, inputs, attrs, outputs)
