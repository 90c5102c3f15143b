"""The support library: code every generated module may call, compiled once per process.

The SGEMMs are large and the same for every model, so they live in their own module,
compiled at O2 (disk-cached like any module) and published to MCJIT's symbol table;
generated modules only declare them. This keeps each model's compile time to its own
kernels. ``kc_sgemm`` splits large products over the cores itself; ``kc_sgemm_epilogue`` is
the same GEMM calling a kernel's epilogue on each finished block of the product, and
``kc_sgemm_batched`` runs a batch of equal products, dealing small ones out whole to the cores
(gemm.py).

``kc_pack_gates`` (rows_product.py) packs the recurrent kernels' weight matrices, once per
kernel call. The fork-join runner ``kc_parallel_run`` (threads.py) lives here too, and generated
modules call this one: a detached helper thread still executes the runner's last
instructions after it has signalled that its part is done, and a model's module may be
freed as soon as its step returns; the support library is never freed.
"""
import ctypes
import threading

import llvmlite.binding as llvm
import llvmlite.ir as ir

from . import threads
from .gemm import BATCHED_GEMM_FN_TYPE, GEMM_EPILOGUE_FN_TYPE, GEMM_FN_TYPE, emit_gemm, gemm_ctypes_argtypes
from . import tuning
from .jit import compile_units, host_target_info
from .rows_product import PACK_FN_TYPE, PACK_NAME, emit_pack
from .unit_memo import library_signature, remembered

GEMM_NAME = "kc_sgemm"
EPILOGUE_GEMM_NAME = "kc_sgemm_epilogue"
BATCHED_GEMM_NAME = "kc_sgemm_batched"
# O2: its kernels are vectorised and unrolled by hand, and O3 ran them no faster (1024^3, W5's
# products: 163-187 GFLOP/s at both levels on the Zen 4 host) while its compilation, the largest
# unit of an empty cache's first step, took 1.16 s against O2's 0.70
SUPPORT_OPT_LEVEL = 2
RUNNER_FN_TYPE = threads.RUNNER_FN_TYPE
_lock = threading.Lock()
_start_lock = threading.Lock()
_library = None
_builder = None  # the thread start_support_library started


def start_support_library():
    """Start building the support library in a thread of its own (once per process), so that
    compiling it (0.7 s with an empty cache: a first step's largest unit) overlaps the
    generation and compilation of a model's kernels; ensure_support_library waits for it.
    The kernels only declare its functions: they need it loaded when they are loaded."""
    global _builder
    with _start_lock:  # (not _lock, which the build holds)
        if _library is not None or _builder is not None:
            return
        _builder = threading.Thread(target=_build_quietly, name="kcompiler-support-library", daemon=True)
        _builder.start()


def _build_quietly():
    try:
        ensure_support_library()
    except Exception:  # noqa: BLE001 - built again by the caller's ensure_support_library, which raises
        pass


def ensure_support_library():
    """Compile the support library once and register its symbols; returns its CompiledModule.
    Its IR is generated only when the cache lacks its object (unit_memo: ~0.15 s of every
    process's first step otherwise)."""
    global _library
    builder = _builder
    if builder is not None and builder is not threading.current_thread():
        builder.join()  # its build failed if _library is still None: built (and raising) here
    with _lock:
        if _library is None:
            blocking = tuning.current()  # the SGEMM's cache blocking is part of the library's identity
            sig = library_signature(f"kcompiler_support kc={blocking.kc} mc={blocking.mc} nc={blocking.nc}",
                                    SUPPORT_OPT_LEVEL, host_target_info())
            unit = remembered(sig, _support_ir, SUPPORT_OPT_LEVEL)
            library = compile_units([(unit, SUPPORT_OPT_LEVEL)], name="kcompiler_support")
            _call_once(library, GEMM_NAME)
            for name in (GEMM_NAME, EPILOGUE_GEMM_NAME, BATCHED_GEMM_NAME, PACK_NAME, threads.RUNNER_NAME):
                llvm.add_symbol(name, library.address(name))
            library.confirm()
            _library = library
    return _library


def _support_ir():
    module = ir.Module(name="kcompiler_support")
    threads.get_parallel_runner(module, pool=True).linkage = ""  # exported; the SGEMMs call it too
    blocking = tuning.current()
    emit_gemm(module, GEMM_NAME, epilogue_name=EPILOGUE_GEMM_NAME, batched_name=BATCHED_GEMM_NAME,
              kc=blocking.kc, mc=blocking.mc, nc=blocking.nc)
    emit_pack(module)
    return str(module)


def _call_once(library, name):
    """Call SGEMM ``name`` on a 1x1 product: the first successful call that
    confirms a library loaded from the disk cache (a bad entry crashes here,
    and its crash marker keeps it from being loaded again)."""
    a, b, c = (ctypes.c_float * 1)(2.0), (ctypes.c_float * 1)(3.0), (ctypes.c_float * 1)(0.0)
    gemm = library.function(name, None, *gemm_ctypes_argtypes())
    gemm(0, 0, 1, 1, 1, 1.0, ctypes.addressof(a), 1, ctypes.addressof(b), 1, 0.0, ctypes.addressof(c), 1)


def _declare(module, name, fnty=GEMM_FN_TYPE):
    start_support_library()
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name=name)
    return fn


def declare_gemm(module):
    """Declare the support library's (multi-threaded) SGEMM in ``module``."""
    return _declare(module, GEMM_NAME)


def declare_epilogue_gemm(module):
    """Declare the support library's SGEMM with an epilogue hook in ``module``."""
    return _declare(module, EPILOGUE_GEMM_NAME, GEMM_EPILOGUE_FN_TYPE)


def declare_batched_gemm(module):
    """Declare the support library's batched SGEMM (``kc_sgemm_batched``) in ``module``."""
    return _declare(module, BATCHED_GEMM_NAME, BATCHED_GEMM_FN_TYPE)


def declare_pack(module):
    """Declare the support library's ``kc_pack_gates`` (rows_product.emit_pack) in ``module``."""
    return _declare(module, PACK_NAME, PACK_FN_TYPE)


def declare_parallel_runner(module):
    """Declare the support library's ``kc_parallel_run`` in ``module`` (for
    ``threads.emit_parallel_call(..., runner=...)``)."""
    return _declare(module, threads.RUNNER_NAME, RUNNER_FN_TYPE)
