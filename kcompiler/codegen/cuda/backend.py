"""The CUDA backend (target 'cuda'): renders a scheduled graph as one CUDA C translation unit
and its step program (module.py), compiles and loads it on the device (device.py: a GPU
through pycuda, with cubins cached on disk by cubin.py; or, when ``Options.cuda_emulation``
is set, the CPU emulation of the same source), and binds it to device memory with the
weights and optimizer state resident there (executable.py).

Without pycuda, the driver library or a GPU, compiling for this target raises one
UnsupportedError saying which is missing (device.py); it never falls back to the emulation.
"""
from dataclasses import dataclass

from ...errors import UnsupportedError
from ...ir.registry import all_ops
from ...options import default_options
from ..backend import Backend, Capabilities
from . import conv, gemm, rnn, rnn_backward  # noqa: F401  (register the contraction templates)
from .device import get_device, gpu_problem
from .executable import CudaExecutable
from .module import DTYPES, generate

# The contraction ops fusion may make the head of a fused_contraction (as on the CPU); a head
# takes an epilogue here when its own CUDA template and the fused_contraction template exist.
FUSABLE_HEADS = ("matmul", "conv2d", "conv2d_backward_input")


@dataclass(frozen=True)
class CudaModule:
    device: object         # device.PycudaDevice or device.EmulatedDevice
    loaded: object         # the module on that device (a pycuda Module, or the emulation library)
    program: object        # module.StepProgram


class CudaBackend(Backend):
    name = "cuda"

    def capabilities(self):
        templates = frozenset(name for name, op in all_ops().items() if "cuda" in op.lowerings)
        heads = frozenset(h for h in FUSABLE_HEADS if h in templates) if "fused_contraction" in templates \
            else frozenset()
        return Capabilities(epilogue_heads=heads, templates=templates, dtypes=frozenset(DTYPES),
                            executes=default_options().cuda_emulation or gpu_problem() is None)

    def generate(self, g, options):
        if options.bounds_check:
            raise UnsupportedError("bounds-checked builds (KCOMPILER_BOUNDS_CHECK=1) exist for target='cpu' only: the "
                                   "CUDA kernels are checked by running their emulation under AddressSanitizer")
        get_device(options)  # a missing pycuda, driver or GPU is reported before anything is rendered
        return generate(g)

    def compile(self, source, options, name):
        device = get_device(options)
        with device.activate():
            return CudaModule(device, device.load(source.text), source.program)

    def bind(self, g, module, kernels):
        return CudaExecutable(g, module, kernels)


BACKEND = CudaBackend()
