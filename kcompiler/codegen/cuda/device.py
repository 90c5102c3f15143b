"""The device the CUDA executable runs on, behind one small interface with two implementations,
so that the one runtime (executable.py) is what CI tests:

    PycudaDevice    a real GPU through pycuda.driver: one context (the device's primary
                    context), one stream, memory from mem_alloc, asynchronous copies on the
                    stream, modules loaded from cubins (cubin.py), prepared launches
    EmulatedDevice  the CPU: device memory is host memory (numpy), a module is the emulation
                    library g++ builds from the same source (toolchain.build_emulated), a
                    launch runs its ``<function>_emulate`` entry (toolchain.run_launch), and
                    device pointers are host addresses

What the executable asks of a device:

    alloc(nbytes) -> DeviceBuffer         device memory (``.ptr``), freed with the object
    host_array(shape, dtype)              host memory for transfers (page-locked on a GPU)
    upload(ptr, host) / download(host, ptr)   copies, asynchronous on the stream
    zero(ptr, nbytes)                     an asynchronous memset
    load(source) -> module                the translation unit, compiled and loaded
    launcher(module, launch, pointers)    a callable that enqueues one launch with those
                                          parameters (all pointers)
    synchronize()                         wait until the stream is idle
    activate()                            a context manager making the device usable from the
                                          calling thread (pycuda: push its context)

Which device ``target='cuda'`` uses is decided once per compilation by the options: the
emulation only when ``Options.cuda_emulation`` is set (tests; ``KCOMPILER_CUDA_EMULATION=1``),
never as a fallback. Without pycuda, without the driver library or without a GPU,
``get_device`` raises one UnsupportedError that says which is missing and how to get it.
pycuda is imported here only, and only when a real device is asked for.
"""
import contextlib
import ctypes
import threading

import numpy as np

from ...errors import UnsupportedError
from ...options import Options
from . import toolchain

INSTALL_PYCUDA = ("install it with pip install 'kcompiler[cuda]' (pycuda builds from source against the CUDA "
                  "toolkit); on a machine without a package registry, build its wheels elsewhere with "
                  "scripts/build-cuda-wheels and install them with pip install --no-index --find-links wheels/ pycuda")


class DeviceBuffer:
    """``nbytes`` of device memory at address ``ptr``; ``keep`` owns it (freed when dropped)."""
    __slots__ = ("ptr", "nbytes", "keep")

    def __init__(self, ptr, nbytes, keep):
        self.ptr, self.nbytes, self.keep = int(ptr), nbytes, keep


class EmulatedDevice:
    """The CPU emulation of a device (see the module docstring)."""
    name = "the CUDA emulation on the CPU"

    def __init__(self):
        toolchain.compiler()  # raises UnsupportedError without g++

    def alloc(self, nbytes, align=256):
        raw = np.zeros(nbytes + align, dtype=np.uint8)  # cudaMalloc aligns to 256 bytes
        offset = (-raw.ctypes.data) % align
        return DeviceBuffer(raw.ctypes.data + offset, nbytes, raw)

    def host_array(self, shape, dtype):
        return np.zeros(shape, dtype)

    def upload(self, ptr, host):
        ctypes.memmove(ptr, host.ctypes.data, host.nbytes)

    def download(self, host, ptr):
        ctypes.memmove(host.ctypes.data, ptr, host.nbytes)

    def zero(self, ptr, nbytes):
        ctypes.memset(ptr, 0, nbytes)

    def load(self, source):
        return toolchain.build_emulated(source)

    def launcher(self, module, launch, pointers):
        args = (ctypes.c_void_p * len(pointers))(*pointers)
        return lambda: toolchain.run_launch(module, launch, args)

    def synchronize(self):
        pass

    def activate(self):
        return contextlib.nullcontext()


class PycudaDevice:
    """GPU 0 through pycuda.driver (see the module docstring); made by ``get_device``."""

    def __init__(self, driver):
        self.driver = driver
        gpu = driver.Device(0)
        self.arch = "sm_%d%d" % gpu.compute_capability()
        self.name = f"{gpu.name()} ({self.arch})"
        self.context = gpu.retain_primary_context()
        with self.activate():
            self.stream = driver.Stream()

    @contextlib.contextmanager
    def activate(self):
        self.context.push()
        try:
            yield
        finally:
            self.driver.Context.pop()

    def alloc(self, nbytes):
        allocation = self.driver.mem_alloc(max(nbytes, 1))
        return DeviceBuffer(int(allocation), nbytes, allocation)

    def host_array(self, shape, dtype):
        return self.driver.pagelocked_zeros(shape, dtype)

    def upload(self, ptr, host):
        if host.nbytes:
            self.driver.memcpy_htod_async(ptr, host, self.stream)

    def download(self, host, ptr):
        if host.nbytes:
            self.driver.memcpy_dtoh_async(host, ptr, self.stream)

    def zero(self, ptr, nbytes):
        self.driver.memset_d8_async(ptr, 0, nbytes, self.stream)

    def load(self, source):
        from .cubin import cubin
        return self.driver.module_from_buffer(cubin(source, self.arch))

    def launcher(self, module, launch, pointers):
        function = module.get_function(launch.kernel)
        function.prepare("P" * len(pointers))
        blocks, threads, stream = tuple(launch.blocks), tuple(launch.threads), self.stream
        return lambda: function.prepared_async_call(blocks, threads, stream, *pointers)

    def synchronize(self):
        self.stream.synchronize()


_lock = threading.Lock()
_devices = {}   # "emulated" | "gpu" -> the device, or the UnsupportedError met making it


def get_device(options):
    """The device of a compilation with ``options``: the emulation when ``options.cuda_emulation``,
    else the GPU (one per process, made on first use)."""
    kind = "emulated" if options.cuda_emulation else "gpu"
    made = _devices.get(kind)
    if made is None:
        with _lock:
            made = _devices.get(kind)
            if made is None:
                try:
                    made = EmulatedDevice() if kind == "emulated" else PycudaDevice(_driver())
                except UnsupportedError as e:
                    made = e
                _devices[kind] = made
    if isinstance(made, UnsupportedError):
        raise UnsupportedError(str(made))
    return made


def gpu_problem():
    """None when a GPU is usable through pycuda, else the UnsupportedError saying what is missing."""
    try:
        get_device(Options(cuda_emulation=False))
    except UnsupportedError as e:
        return e
    return None


def _driver():
    """pycuda.driver, initialised, with at least one GPU; else one UnsupportedError naming what
    is missing (pycuda, the driver library, a GPU) and how to get it."""
    try:
        import pycuda  # noqa: F401
    except ImportError:
        raise UnsupportedError(f"target='cuda' needs pycuda, which is not installed: {INSTALL_PYCUDA}. "
                               "(Tests run the CUDA kernels on the CPU with KCOMPILER_CUDA_EMULATION=1.)") from None
    try:
        import pycuda.driver as driver
    except ImportError as e:
        if "libcuda" in str(e):
            raise UnsupportedError(f"target='cuda' needs the NVIDIA driver library libcuda.so.1, which was not found "
                                   f"({e}): install the NVIDIA GPU driver (the CUDA toolkit alone does not provide "
                                   "it), or compile with target='cpu'") from None
        raise UnsupportedError(f"target='cuda': pycuda is installed but pycuda.driver does not import ({e}); "
                               f"reinstall it: {INSTALL_PYCUDA}") from None
    try:
        driver.init()
        count = driver.Device.count()
    except driver.Error as e:
        raise UnsupportedError(f"target='cuda': the NVIDIA driver found no usable GPU (cuInit: {e}); check "
                               "nvidia-smi, or compile with target='cpu'") from None
    if count == 0:
        raise UnsupportedError("target='cuda': the NVIDIA driver is installed but reports no GPU; check nvidia-smi, "
                               "or compile with target='cpu'")
    return driver
