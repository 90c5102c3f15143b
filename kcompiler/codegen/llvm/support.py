"""The support library: code every generated module may call, compiled once per process.

The SGEMM is large and the same for every model, so it lives in its own module,
compiled at O3 (disk-cached like any module) and published to MCJIT's symbol table;
generated modules only declare it. This keeps each model's compile time to its
own kernels.
"""
import threading

import llvmlite.binding as llvm
import llvmlite.ir as ir

from .gemm import GEMM_FN_TYPE, emit_gemm
from .target import compile_ir

GEMM_NAME = "kc_sgemm"
_lock = threading.Lock()
_library = None


def ensure_support_library():
    """Compile the support library once and register its symbols; returns its CompiledModule."""
    global _library
    with _lock:
        if _library is None:
            module = ir.Module(name="kcompiler_support")
            emit_gemm(module, GEMM_NAME)
            _library = compile_ir(str(module), opt_level=3, name="kcompiler_support")
            llvm.add_symbol(GEMM_NAME, _library.address(GEMM_NAME))
    return _library


def declare_gemm(module):
    """Declare the support library's SGEMM in ``module`` (and make sure it is loaded)."""
    ensure_support_library()
    fn = module.globals.get(GEMM_NAME)
    if fn is None:
        fn = ir.Function(module, GEMM_FN_TYPE, name=GEMM_NAME)
    return fn
