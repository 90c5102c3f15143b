"""Compiled CUDA modules for a real GPU: ``cubin(source, arch)`` is the translation unit
compiled by ``nvcc -cubin -arch=<arch>`` (the device's own architecture, e.g. sm_90), through
the kernel cache on disk.

The cache is the CPU backend's (codegen/llvm/cache.py, docs/kernel-cache.md) with its trust
model unchanged: the same directory, only this user's entries in a directory only this user
can write, each entry checksummed together with its own key. The key is the sha256 of the
entry kind, the cache format, the architecture, the toolkit's version (``nvcc --version``)
and the source, so another GPU, another toolkit or another kernel is another entry. A cubin
runs on the GPU, not in this process: a damaged one makes the driver refuse the module, it
cannot crash the interpreter, so no crash markers are kept for them.
"""
import functools
import hashlib
import subprocess
import tempfile
from pathlib import Path

from ..llvm.cache import REFUSED, FORMAT_VERSION, CacheDir, cache_enabled, count
from .toolchain import _run, toolkit_root


@functools.cache
def toolkit_version(root):
    """``nvcc --version`` of the toolkit at ``root`` (part of every cache key)."""
    return subprocess.run([str(Path(root) / "bin" / "nvcc"), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def cache_key(source, arch, root):
    parts = ("cuda-cubin", FORMAT_VERSION, arch, toolkit_version(root), source)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cubin(source, arch):
    """The cubin of ``source`` for ``arch`` (``sm_XY``), from the cache or compiled now."""
    root = toolkit_root()
    key = cache_key(source, arch, root)
    directory = CacheDir.open() if cache_enabled() else None
    try:
        payload = directory.read_entry(key) if directory is not None else None
        if payload is not None and payload is not REFUSED:
            count("hits")
            return payload
        count("misses")
        compiled = _compile(source, arch, root)
        if directory is not None and payload is not REFUSED:  # a refused entry is left alone
            directory.write_entry(key, compiled)
            directory.evict(keep=key)
        return compiled
    finally:
        if directory is not None:
            directory.close()


def _compile(source, arch, root):
    with tempfile.TemporaryDirectory(prefix="kcompiler-cubin-") as tmp:
        cu, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.cubin"
        cu.write_text(source)
        _run([Path(root) / "bin" / "nvcc", "-cubin", f"-arch={arch}", cu, "-o", out], f"nvcc -cubin -arch={arch}")
        return out.read_bytes()
