"""The backend interface, and the registry that maps target names to backends.

A backend turns a scheduled graph (every described node carries its target-neutral kernel,
kcompiler/schedule/) into something that runs:

    generate(g, options) -> (source, kernels)    render each kernel; ``kernels`` are Kernel
                                                 records with ``name``, ``source``, ``nodes``
    compile(source, options, name) -> module     compile (through the backend's disk cache,
                                                 under the trust model of docs/kernel-cache.md)
    bind(g, module, kernels) -> executable       buffers bound; ``executable.run(feeds,
                                                 scalars=False)`` runs one step (``scalars``:
                                                 ``step_logs`` of the outputs)

``lower`` chains the three. ``capabilities`` tell the target-neutral passes what they may
ask of the backend: which contraction templates take an element-wise epilogue, which dtypes
it compiles, whether it can execute on this machine. Passes never import a backend; the
pipeline (kcompiler/pipeline.py) asks ``get_backend`` and hands the passes the capabilities.

The guarantees every backend keeps (DESIGN §4) live behind this interface: an executable may
be run from several threads at once (each concurrent step gets its own scratch memory), and a
step that reports an error commits no state and raises ``step_error``'s exception.

Adding a target: a package under kcompiler/codegen/<name>/ with a ``backend`` module that
defines ``BACKEND`` (an instance of a Backend subclass), plus one line in ``BACKENDS``.
"""
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import IndexRangeError, KCompilerError
from ..ir.registry import get_op
from ..schedule.kernel import STATUS_INDEX_OUT_OF_RANGE, STATUS_OUT_OF_BOUNDS

# target name -> module defining BACKEND (imported on first use: a target's toolchain is only
# loaded when that target is asked for)
BACKENDS = {
    "cpu": "kcompiler.codegen.llvm.backend",
    "cuda": "kcompiler.codegen.cuda.backend",
}


@dataclass(frozen=True)
class Capabilities:
    epilogue_heads: frozenset   # ops whose kernel takes a fused element-wise epilogue: contraction
                                # templates (fused_contraction), pooling gradients (fused_pool_grad,
                                # a target-neutral description the backend renders)
    templates: frozenset        # ops the backend lowers with its own template (no description)
    dtypes: frozenset           # dtypes its kernels compute in
    executes: bool              # whether compiled code can run on this machine
    bias_grad_heads: frozenset = frozenset()  # weight-gradient ops whose kernel also sums their dy
                                              # into the bias gradient (fused_bias_grad)
    bias_grad_dy_heads: frozenset = frozenset()  # pooling gradients a fused_bias_grad kernel (and a
                                                 # fused_conv2d_grads one) can compute its dy with
                                                 # (attr dy, passes/fusion.py)
    in_place_updates: bool = False  # element-wise kernels (and contraction epilogues) can compute
                                    # a state update in its variable's buffer (passes/memory_plan.py)
    recurrent_reserve: frozenset = frozenset()  # recurrent ops whose forward kernel can leave its
                                                # per-step values for the gradient (ops/rnn.py)
    pool_epilogue_heads: frozenset = frozenset()  # contraction heads whose fused kernel can also pool an
                                                  # output as its rows are finished (passes/fusion.py)
    pool_argmax: bool = False  # it has max_pool2d_argmax and max_pool2d_grad_argmax: max pooling's
                               # gradient reads the forward pass's window positions, not its input
                               # (passes/pool_argmax.py)
    conv_grads_sharing_dy: Callable = None  # geometry (ops.conv.ConvGeometry), options -> whether its
                                            # kernel for a convolution's input and kernel gradients
                                            # together reads dy once for both (fused_conv2d_grads)
    merges_updates: bool = False  # it runs the element-wise kernels that compute only state updates
                                  # as one kernel (fused_updates, passes/fusion.py)


class Backend:
    name = "?"

    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    def notes(self, options):
        """Lines for the dump about choices the backend made for this machine (tuning) and under
        ``options`` (kcompiler/options.py)."""
        return []

    def generate(self, g, options):
        raise NotImplementedError

    def compile(self, source, options, name):
        raise NotImplementedError

    def bind(self, g, module, kernels):
        raise NotImplementedError

    def lower(self, g, options):
        name = g.graph.get("name", "kcompiler")
        source, kernels = self.generate(g, options)
        return self.bind(g, self.compile(source, options, name), kernels)


_instances = {}


def get_backend(target):
    backend = _instances.get(target)
    if backend is None:
        if target not in BACKENDS:
            raise ValueError(f"unknown target {target!r}; expected one of {sorted(BACKENDS)}")
        backend = _instances[target] = importlib.import_module(BACKENDS[target]).BACKEND
    return backend


def registered_targets():
    return sorted(BACKENDS)


# ---- errors a step reports (shared by every backend's executable) -------------------------------

STATUS_MESSAGES = {STATUS_INDEX_OUT_OF_RANGE: "an index (Embedding input or label) is outside its valid range",
                   STATUS_OUT_OF_BOUNDS: "a kernel indexed outside a buffer (caught by the bounds-checked build)"}


def step_logs(names, outputs):
    """{output name: value} of a step: a float for a scalar output (the loss, most metrics), an
    array for a metric with several values (F1Score per class, Precision at several thresholds)."""
    return {name: float(v) if getattr(v, "ndim", 0) == 0 else np.array(v) for name, v in zip(names, outputs)}


def step_error(g, status, record, offset=None):
    """The exception for a step of scheduled graph ``g`` that returned ``status`` != 0, read
    from the error record the generated code left (the bytes at ``offset`` of ``record``, by
    default ``plan['error_record']`` of the step's arena: i32 status, i32 node id, i64
    offending value). The step committed no state."""
    offset = g.graph["plan"]["error_record"] if offset is None else offset
    nid = int(record[offset + 4:offset + 8].view(np.int32)[0])
    value = int(record[offset + 8:offset + 16].view(np.int64)[0])
    node = g.nodes[nid] if nid in g else None
    if status == STATUS_INDEX_OUT_OF_RANGE and node is not None and get_op(node["op"]).may_fail:
        return IndexRangeError(get_op(node["op"]).index_error(g, nid, value), value)
    where = f" in node %{nid} {node['op']} ({node.get('layer') or 'no layer'})" if node is not None else ""
    return KCompilerError(f"generated code reported error {status}{where}: "
                          f"{STATUS_MESSAGES.get(status, 'unknown error')}")
