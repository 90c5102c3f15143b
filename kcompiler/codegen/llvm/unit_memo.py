"""What each kernel's unit was, remembered across processes: a warm start skips generating IR.

Generating a kernel's LLVM IR costs more than loading its cached object (a W2 training
step: ~57 kernels, 0.4–1.3 s of llvmlite IR building before the cache is even asked). The
unit's cache key is a hash of that IR, so without the IR there is no key. This memo maps a
*signature* of everything the IR is generated from to the unit's symbol and cache key:

    the generator's own source (every module of kcompiler/codegen/llvm, kcompiler/schedule
    and kcompiler/ops, hashed once per process), llvmlite's version, the host target and the
    number of threads kernels split work into (module.py passes both as ``target``), the
    generation options (kcompiler/options.py), and the node: op, attrs, result types,
    operand types, inline constants, kernel description (for the support library, which
    comes from no node: its name and optimisation level).

A hit gives a jit.LazyUnit: compile_units loads the object by key and generates the IR only
if the object is gone (compile_units then checks that the IR hashes to the remembered key).
Memo records are entries of the kernel cache directory (same trust model, checksums, size
limit: docs/kernel-cache.md), keyed by a hash of the signature.
"""
import hashlib
from functools import cache as once
from pathlib import Path

import llvmlite

from . import cache

_SOURCE_ROOTS = ("codegen/llvm", "schedule", "ops", "ir")


@once
def generator_version():
    """A hash of the source of every module that shapes generated IR."""
    root = Path(__file__).resolve().parents[2]  # the kcompiler package
    h = hashlib.sha256(llvmlite.__version__.encode())
    for sub in _SOURCE_ROOTS:
        for path in sorted((root / sub).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def signature(node, in_types, constants, options, target):
    """The memo key of ``node``'s unit (see the module docstring)."""
    return _hash(repr(target), repr(options), node["op"], repr(sorted(node["attrs"].items())), repr(node["type"]),
                 repr(list(in_types)), repr(sorted(constants.items())), repr(node.get("kernel")))


def library_signature(name, opt_level, target):
    """The memo key of a unit generated from no node: the support library (SGEMM, thread runner)."""
    return _hash("library", name, str(opt_level), repr(target))


def _hash(*parts):
    return hashlib.sha256("\0".join((generator_version(),) + parts).encode()).hexdigest()


def remembered(sig, make, opt_level):
    """A jit.LazyUnit for signature ``sig`` when the memo knows its key, else the IR text of
    ``make()``, remembered under ``sig`` (its symbol: its first ``define``'s name)."""
    from .jit import LazyUnit, cache_key
    memo = UnitMemo.open()
    try:
        known = memo.get(sig)
        if known is not None:
            return LazyUnit(known[1], make)
        text = make()
        memo.put(sig, "-", cache_key(text, opt_level))
        return text
    finally:
        memo.close()


class UnitMemo:
    """The memo, open on the cache directory for one generation (``None`` directory: disabled)."""

    def __init__(self, directory):
        self.directory = directory

    @classmethod
    def open(cls):
        return cls(cache.CacheDir.open() if cache.cache_enabled() else None)

    def close(self):
        if self.directory is not None:
            self.directory.close()

    def get(self, sig):
        """(symbol, cache key) remembered for signature ``sig``, or None."""
        if self.directory is None:
            return None
        payload = self.directory.read_entry(sig)
        if not isinstance(payload, bytes):
            return None
        try:
            symbol, key = payload.decode("ascii").split("\n")
        except (UnicodeDecodeError, ValueError):
            return None
        return symbol, key

    def put(self, sig, symbol, key):
        if self.directory is not None:
            self.directory.write_entry(sig, f"{symbol}\n{key}".encode("ascii"))
