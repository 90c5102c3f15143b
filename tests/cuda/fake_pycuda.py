"""A stand-in for ``pycuda.driver`` that runs on the CPU, so that the PycudaDevice of
kcompiler/codegen/cuda/device.py is exercised on machines without a GPU: every call the
device makes lands here, with the checks a real driver would make or that catch misuse
(each call needs the context current on the calling thread; copies stay inside allocations).
Memory is host memory; a "cubin" is the CUDA C source itself (the tests replace
``cubin.cubin``), loaded as the emulation library and launched through its entries.

Only the calls PycudaDevice makes are defined, with pycuda's signatures (pycuda/driver.py and
its C++ module)."""
import ctypes
import threading
import weakref

import numpy as np

from kcompiler.codegen.cuda import toolchain
from kcompiler.codegen.cuda.render import Launch


class Error(Exception):
    pass


class LogicError(Error):
    pass


_state = threading.local()
CALLS = []          # (call name, bytes) of every copy and launch, in order
_allocations = []   # (address, nbytes) of live allocations


def _current():
    if getattr(_state, "depth", 0) <= 0:
        raise LogicError("no CUDA context is current on this thread")


def _inside(ptr, nbytes):
    if not any(a <= ptr and ptr + nbytes <= a + n for a, n in _allocations):
        raise LogicError(f"{nbytes} bytes at {ptr:#x} are not inside one device allocation")


def init():
    pass


class Context:
    def push(self):
        _state.depth = getattr(_state, "depth", 0) + 1

    @staticmethod
    def pop():
        _current()
        _state.depth -= 1


class Device:
    def __init__(self, ordinal):
        assert ordinal == 0

    @staticmethod
    def count():
        return 1

    def compute_capability(self):
        return (9, 0)

    def name(self):
        return "Fake GPU"

    def retain_primary_context(self):
        return Context()


class Stream:
    def __init__(self):
        _current()

    def synchronize(self):
        _current()


class DeviceAllocation:
    def __init__(self, nbytes):
        self.memory = np.zeros(nbytes, np.uint8)
        entry = (self.memory.ctypes.data, nbytes)
        _allocations.append(entry)
        weakref.finalize(self, _allocations.remove, entry)

    def __int__(self):
        return self.memory.ctypes.data


def mem_alloc(nbytes):
    _current()
    return DeviceAllocation(nbytes)


def pagelocked_zeros(shape, dtype):
    return np.zeros(shape, dtype)


def memcpy_htod_async(dest, src, stream=None):
    _current()
    _inside(int(dest), src.nbytes)
    CALLS.append(("htod", src.nbytes))
    ctypes.memmove(int(dest), src.ctypes.data, src.nbytes)


def memcpy_dtoh_async(dest, src, stream=None):
    _current()
    _inside(int(src), dest.nbytes)
    CALLS.append(("dtoh", dest.nbytes))
    ctypes.memmove(dest.ctypes.data, int(src), dest.nbytes)


def memset_d8_async(dest, data, count, stream=None):
    _current()
    _inside(int(dest), count)
    ctypes.memset(int(dest), data, count)


class Module:
    def __init__(self, library):
        self.library = library

    def get_function(self, name):
        _current()
        getattr(self.library, f"{name}_emulate")  # an unknown name fails as cuModuleGetFunction does
        return Function(self.library, name)


def module_from_buffer(buffer):
    _current()
    return Module(toolchain.build_emulated(bytes(buffer).decode()))


class Function:
    def __init__(self, library, name):
        self.library, self.name, self.arg_format = library, name, None

    def prepare(self, arg_types):
        self.arg_format = arg_types
        return self

    def prepared_async_call(self, grid, block, stream, *args):
        _current()
        if len(args) != len(self.arg_format) or len(grid) != 3 or len(block) != 3:
            raise LogicError(f"{self.name}: {len(args)} arguments for format {self.arg_format!r}, grid {grid}, "
                             f"block {block}")
        CALLS.append(("launch", self.name))
        toolchain.run_launch(self.library, Launch(self.name, grid, block), (ctypes.c_void_p * len(args))(*args))
