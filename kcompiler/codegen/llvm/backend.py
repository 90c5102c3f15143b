"""The CPU backend: renders scheduled graphs as LLVM units, one per distinct kernel plus the
entry point (module.py), compiles each through llvmlite with the disk cache and loads them
into one engine (jit.py, cache.py), and binds them to host buffers (executable.py). The worked example of docs/architecture.md's "adding a backend"."""
from ...ir.registry import all_ops
from ...ops.rnn import RECURRENT_OPS
from ..backend import Backend, Capabilities
from .executable import CompiledGraph
from .irutil import generating
from .module import COMPILED_DTYPES, generate
from .support_library import ensure_support_library
from .jit import compile_units, host_target_info


def _shares_dy_transform(geometry, options):
    """fused_conv2d_grads' kernel transforms dy once for both gradients where they run by
    Winograd (winograd.py: lower_winograd_conv2d_gradients); the direct kernels would gain nothing."""
    from .winograd import winograd_algorithm
    with generating(options):
        return winograd_algorithm(geometry) is not None


class LLVMBackend(Backend):
    name = "cpu"

    def capabilities(self):
        return Capabilities(
            epilogue_heads=frozenset({"matmul", "conv2d", "conv2d_backward_input", "max_pool2d_grad",
                                      "max_pool2d_grad_argmax", "avg_pool2d_grad", "depthwise_conv2d",
                                      "depthwise_conv2d_backward_input"}),
            templates=frozenset(name for name, op in all_ops().items() if "llvm" in op.lowerings),
            dtypes=frozenset(COMPILED_DTYPES),
            executes=True,
            bias_grad_heads=frozenset({"conv2d_backward_kernel"}),
            bias_grad_dy_heads=frozenset({"max_pool2d_grad", "max_pool2d_grad_argmax", "avg_pool2d_grad"}),
            in_place_updates=True,
            recurrent_reserve=frozenset(RECURRENT_OPS),
            pool_epilogue_heads=frozenset({"conv2d"}),
            # for the pools fused into a convolution (pool_epilogue_heads): the first convolution
            # of W2/W3 then keeps its activation in scratch and writes y and idx, and its weight
            # gradient computes dy from idx; the pass leaves other pools alone (freeing their
            # input early slowed the next step on two cores: docs/architecture.md)
            pool_argmax=True,
            conv_grads_sharing_dy=_shares_dy_transform,
            merges_updates=True)

    def notes(self, options):
        from .tuning import current
        from .winograd import describe
        return [current().describe(), describe(options.winograd)]

    def generate(self, g, options):
        with generating(options):
            return generate(g, module_name=g.graph.get("name", "kcompiler"), profile=options.profile)

    def compile(self, source, options, name):
        # the entry point is a straight line of calls and copies: O1 does all it needs
        units = [(text, options.opt_level) for text in source.units.values()]
        return compile_units(units + [(source.entry, min(options.opt_level, 1))], name=name,
                             before_load=ensure_support_library)  # (its build started in generate)

    def bind(self, g, module, kernels):
        return CompiledGraph(g, module, kernels)

    def describe_machine(self):
        triple, cpu, _ = host_target_info()
        return f"{cpu} ({triple})"


BACKEND = LLVMBackend()
