"""The tools behind the CUDA backend on a machine without a GPU: compile checks with the CUDA
toolkit (nvcc, ptxas) and the CPU emulation of rendered kernels (g++, prelude.h).

``toolkit_root()`` finds the toolkit: ``$CUDA_HOME``, ``$CUDA_PATH``, the root the ``nvcc`` on
the PATH reports (``nvcc -dryrun`` prints ``TOP``; the ``nvcc`` on the PATH may be a wrapper
script outside the toolkit, so its own location says nothing), then ``/usr/local/cuda`` and
``/usr/local/cuda-*``, newest first. A root must hold ``bin/nvcc`` and ``bin/ptxas``.

``compile_check(source)`` compiles one translation unit (a batch of kernels: nvcc costs about
0.6 s per invocation) to PTX for ``compute_80``, then assembles it with ptxas for ``sm_80``
and ``sm_90`` (PTX for compute_90 cannot be assembled for sm_80: target the lowest and
assemble upward) and returns each function's registers, spills and local memory.

``build_emulated(source)`` compiles the same text with g++ (C++20, -O1, no fast-math) into a
shared library and loads it with ctypes; ``emulate(library, kernel, arrays)`` runs a rendered
kernel's launches on numpy arrays through the ``<function>_emulate`` entries the renderer
writes. Libraries are cached by the hash of source and flags in
``$KCOMPILER_CACHE_DIR/cuda-emulation`` (default ``~/.cache/kcompiler``), under the kernel
cache's trust model (docs/kernel-cache.md) in small: the directory is created with mode
0o700 and used only when owned by this user and writable by no one else, and an entry is
loaded only when it is a regular file of this user that no one else may write; otherwise the
library is built in a private temporary directory.

Sanitizers: ``build_emulated(source, sanitize=True)`` adds
``-fsanitize=address,undefined -fno-sanitize-recover=all``. AddressSanitizer's runtime must
be the first library of the process, so such a library loads only into a process started
with ``sanitizer_environment()`` (``LD_PRELOAD`` of g++'s libasan, leak detection off):
tests run the sanitized emulation in a subprocess (numpy's buffers then come from ASan's
malloc, with red zones around them). UBSan alone would need no preload.

A missing tool raises UnsupportedError naming it.
"""
import ctypes
import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import KCompilerError, UnsupportedError

PTX_ARCH = "compute_80"
SASS_ARCHS = ("sm_80", "sm_90")
EMULATION_FLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-x", "c++")
SANITIZER_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")


class CudaToolError(KCompilerError):
    """nvcc, ptxas or g++ rejected generated source; the message holds the tool's output."""


# ---- the CUDA toolkit -------------------------------------------------------------------------------

def _is_toolkit(root):
    return root is not None and all(os.access(Path(root) / "bin" / tool, os.X_OK) for tool in ("nvcc", "ptxas"))


def _root_from_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-E", os.devnull], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    return Path(match.group(1).strip()).resolve() if match else None


def toolkit_root():
    """The CUDA toolkit's root directory (see the module docstring for the search order)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), _root_from_nvcc(), "/usr/local/cuda"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), key=_version_key, reverse=True)
    for root in candidates:
        if root and _is_toolkit(root):
            return Path(root)
    raise UnsupportedError("no CUDA toolkit found (nvcc and ptxas): set CUDA_HOME to the toolkit's root, "
                           "e.g. /usr/local/cuda-13.0")


def _version_key(path):
    return [int(n) for n in re.findall(r"\d+", path)]


def _run(command, what):
    try:
        out = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    except FileNotFoundError:
        raise UnsupportedError(f"{what}: {command[0]} not found") from None
    if out.returncode != 0:
        raise CudaToolError(f"{what} failed (exit {out.returncode}):\n{(out.stderr + out.stdout)[-4000:]}")
    return out.stdout + out.stderr


# ---- compile checks --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one function on one architecture."""
    registers: int
    spill_stores: int
    spill_loads: int
    local_bytes: int       # per-thread local memory: stack frame, lmem
    shared_bytes: int

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads


@dataclass(frozen=True)
class CompileReport:
    ptx: str
    resources: dict        # architecture -> {function name: Resources}

    def problems(self):
        """Every spill and every use of local memory, one line each."""
        return [f"{arch} {name}: {r.spills} bytes spilled, {r.local_bytes} bytes of local memory"
                for arch, functions in self.resources.items() for name, r in sorted(functions.items())
                if r.spills or r.local_bytes]


def compile_check(source):
    """nvcc -ptx for compute_80, then ptxas for sm_80 and sm_90; CompileReport of the source's
    functions. Raises CudaToolError when a tool rejects it."""
    bin_dir = toolkit_root() / "bin"
    with tempfile.TemporaryDirectory(prefix="kcompiler-cuda-") as tmp:
        cu, ptx = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.ptx"
        cu.write_text(source)
        _run([bin_dir / "nvcc", "-ptx", f"-arch={PTX_ARCH}", cu, "-o", ptx], "nvcc -ptx")
        resources = {arch: parse_ptxas(_run([bin_dir / "ptxas", f"-arch={arch}", "-v", ptx, "-o", os.devnull],
                                            f"ptxas -arch={arch}"))
                     for arch in SASS_ARCHS}
        return CompileReport(ptx.read_text(), resources)


def parse_ptxas(text):
    """{entry function: Resources} from ``ptxas -v`` output."""
    functions = {}
    for block in re.split(r"Compiling entry function '", text)[1:]:
        name = block.split("'", 1)[0]

        def number(pattern):
            m = re.search(pattern, block)
            return int(m.group(1)) if m else 0
        local = max(number(r"(\d+) bytes stack frame"), number(r"(\d+) bytes lmem"),
                    number(r"(\d+) bytes cumulative stack size"))
        functions[name] = Resources(number(r"Used (\d+) registers"), number(r"(\d+) bytes spill stores"),
                                    number(r"(\d+) bytes spill loads"), local, number(r"(\d+) bytes smem"))
    return functions


# ---- emulation on the CPU --------------------------------------------------------------------------

def compiler():
    """The C++ compiler of the emulation (g++: the sanitizer runtimes are its own)."""
    cxx = shutil.which("g++")
    if cxx is None:
        raise UnsupportedError("the CUDA emulation needs a C++20 compiler: g++ not found on the PATH")
    return cxx


def _libasan():
    path = _run([compiler(), "-print-file-name=libasan.so"], "g++ -print-file-name").strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        raise UnsupportedError("g++ has no AddressSanitizer runtime (libasan.so)")
    return path


def sanitizer_environment():
    """The environment variables a process needs to load sanitized emulation libraries."""
    return {"LD_PRELOAD": _libasan(), "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


def sanitizer_loaded():
    """Whether AddressSanitizer's runtime is loaded in this process (sanitized builds load)."""
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _cache_dir():
    root = Path(os.environ.get("KCOMPILER_CACHE_DIR") or Path.home() / ".cache" / "kcompiler")
    path = root / "cuda-emulation"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        warnings.warn(f"{path} is not a directory only this user may write (owner {st.st_uid}, mode "
                      f"{stat.S_IMODE(st.st_mode):o}): emulation libraries are built in a temporary directory")
        return None
    return path


def _trusted(path):
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def build_emulated(source, sanitize=False):
    """The rendered ``source`` built with g++ for the CPU, loaded as a ctypes library."""
    if sanitize and not sanitizer_loaded():
        raise UnsupportedError("a sanitized emulation library loads only into a process started with "
                               "sanitizer_environment() (LD_PRELOAD of libasan)")
    cxx = compiler()
    flags = EMULATION_FLAGS + (SANITIZER_FLAGS if sanitize else ())
    key = hashlib.sha256("\0".join((cxx, *flags, source)).encode()).hexdigest()
    directory = _cache_dir()
    if directory is not None and _trusted(directory / f"{key}.so"):
        return ctypes.CDLL(str(directory / f"{key}.so"))
    directory = directory or Path(tempfile.mkdtemp(prefix="kcompiler-emulation-"))
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".cu", dir=directory) as cu:
            cu.write(source)
            cu.flush()
            _run([cxx, *flags, cu.name, "-o", tmp], "g++ (CUDA emulation)")
        os.replace(tmp, directory / f"{key}.so")  # atomic: a concurrent builder writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ctypes.CDLL(str(directory / f"{key}.so"))


ERROR_RECORD = np.dtype([("status", np.int32), ("node", np.int32), ("value", np.int64)])


def emulate(library, kernel, arrays, error=None):
    """Run CudaKernel ``kernel``'s launches, in order, from ``library`` (build_emulated) on the
    contiguous numpy ``arrays`` (one per buffer, in the kernel's order) and the error record
    ``error`` (a fresh one by default: ``np.zeros((), ERROR_RECORD)``). Returns the record."""
    if len(arrays) != len(kernel.buffers):
        raise ValueError(f"{kernel.name} takes {len(kernel.buffers)} buffers, got {len(arrays)}")
    for a, b in zip(arrays, kernel.buffers):
        if a.dtype != np.dtype(b.dtype) or a.size < b.size or not a.flags.c_contiguous:
            raise ValueError(f"{kernel.name}: buffer {b.name} needs {b.size} contiguous {b.dtype} elements")
    error = np.zeros((), ERROR_RECORD) if error is None else error
    args = (ctypes.c_void_p * (len(arrays) + 1))(*[a.ctypes.data for a in arrays], error.ctypes.data)
    for launch in kernel.launches:
        run_launch(library, launch, args)
    return error


class SharedMemoryRace(KCompilerError):
    """The emulation saw threads of a block touch one shared element with no barrier between
    (prelude.h, kc_shared): the kernel races on a GPU."""


def run_launch(library, launch, args):
    """One launch of ``library``'s emulation of ``launch.kernel`` on parameter table ``args``
    (a ctypes array of pointers); raises SharedMemoryRace when its threads raced."""
    entry = getattr(library, f"{launch.kernel}_emulate")
    entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    entry.restype = None
    dims = ctypes.c_uint * 3
    entry(dims(*launch.blocks), dims(*launch.threads), args)
    races = library.kc_emulation_races
    races.restype = ctypes.c_longlong
    message = ctypes.create_string_buffer(256)
    count = races(message, 256)
    if count:
        raise SharedMemoryRace(f"{launch.kernel}: {count} shared-memory races; the first: "
                               f"{message.value.decode()}")
