"""The op registry: one entry per primitive op.

An entry holds everything the compiler knows about an op: its shape rule, its
gradient (VJP) rule, its fusion kind, its numpy reference, its lowerings and, for ops
that may reject their data (an index out of range), the error they then raise.
Shape and gradient rules are declared with the op (``kcompiler/ops/<family>.py``);
numpy references live beside them in ``kcompiler/ops/<family>_reference.py`` (the
project keeps all numpy math in files named ``*reference*``); code generators
register their lowerings from ``kcompiler/codegen/<target>/``. Every piece is keyed
by the op's name, so adding an op is one entry with its parts side by side.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

# Fusion kinds, after TVM's op patterns: what a fusion pass may do with an op.
KINDS = (
    "parameter",    # inputs, variables, constants: no computation
    "elementwise",  # out[i] = f(in[i]) (with broadcasting)
    "injective",    # pure data movement: reshape, transpose, slice, concat
    "reduction",    # sums, means, maxima over axes
    "contraction",  # matmul, conv: fusable with an elementwise epilogue
    "opaque",       # anything else (recurrent loops, gathers, random masks)
)


@dataclass
class Op:
    name: str
    shape_rule: Callable          # (list[TensorType], attrs) -> TensorType | tuple[TensorType, ...]
    vjp_rule: Optional[Callable]  # (GraphBuilder, node_id, cotangent_id) -> list[grad_id | None]
    kind: str
    doc: str = ""
    reference: Optional[Callable] = None              # numpy: (*arrays, **attrs) -> array | tuple
    lowerings: dict = field(default_factory=dict)     # target name -> lowering (contraction templates)
    # The target-neutral kernel description (kcompiler/schedule/): (node, in_types, name) ->
    # schedule.kernel.Kernel. Ops that have one need no per-backend lowering.
    describe: Optional[Callable] = None
    # Whether ``describe`` takes a fourth argument: {operand index: scalar value known at compile
    # time} (scalar constants a kernel inlines instead of loading).
    describe_constants: bool = False
    # For ops whose kernel may report an index out of range (its lowering calls k.fail): the
    # error message, (graph, node id, offending value) -> str. Such "fallible" nodes are
    # checked right after their kernel runs, and a step that fails commits no state.
    index_error: Optional[Callable] = None

    @property
    def differentiable(self):
        return self.vjp_rule is not None

    @property
    def may_fail(self):
        return self.index_error is not None


OPS: dict = {}


def register(name, *, shape, vjp=None, kind="opaque", doc="", index_error=None):
    if kind not in KINDS:
        raise ValueError(f"op {name!r}: unknown kind {kind!r}")
    if name in OPS:
        raise ValueError(f"op {name!r} registered twice")
    if index_error is not None and kind == "elementwise":
        raise ValueError(f"op {name!r}: an op that may fail must keep its own kernel (not element-wise)")
    OPS[name] = Op(name, shape, vjp, kind, doc, index_error=index_error)
    return OPS[name]


def get_op(name):
    _load_ops()
    try:
        return OPS[name]
    except KeyError:
        from ..errors import UnsupportedError
        raise UnsupportedError(f"unknown op {name!r}; registered ops: {', '.join(sorted(OPS))}") from None


def reference(name):
    """Decorator registering the numpy reference of op ``name``."""
    def attach(fn):
        OPS[name].reference = fn
        return fn
    return attach


def lowering(target, name):
    """Decorator registering the lowering of op ``name`` for ``target`` ('llvm', 'cuda')."""
    def attach(fn):
        OPS[name].lowerings[target] = fn
        return fn
    return attach


def description(name, constants=False):
    """Decorator registering the kernel description builder of op ``name``; with ``constants``
    it also takes the operands' inline scalar constants (Op.describe_constants)."""
    def attach(fn):
        op = get_op(name)  # loads the ops first: kcompiler.schedule may be imported before them
        op.describe = fn
        op.describe_constants = constants
        return fn
    return attach


_loaded = False


def _load_ops():
    """Import every op family (and its reference) once, so the registry is complete."""
    global _loaded
    if not _loaded:
        _loaded = True
        from .. import ops  # noqa: F401  (registers everything)
        from .. import schedule  # noqa: F401  (registers the kernel descriptions)


def all_ops():
    _load_ops()
    return dict(OPS)
