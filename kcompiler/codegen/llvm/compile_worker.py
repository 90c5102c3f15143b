"""A helper process that compiles LLVM units to object code for ``target.compile_units``, so
that a second core compiles while the calling process does too.

Why a process and not a thread: llvmlite serialises every call into LLVM behind one
process-wide lock (``llvmlite.binding.ffi._lib_fn_wrapper``), so threads of one process
cannot compile at the same time (measured: the 30 units of a small CNN training step at O3
took 1.85 s serially and 1.95 s on two threads). The worker is started with
``python -m`` (not multiprocessing, which would re-import the user's ``__main__``).

Protocol over the pipes, every number a little-endian u64:
request ``opt level, n, n bytes of LLVM IR``; reply ``status, n, n bytes``: status 0 and
the object code, or status 1 and LLVM's error message. End of input ends the worker. The
parent gives its (triple, CPU, features) as arguments, so both processes emit code for the
very target that the cache keys name.
"""
import struct
import sys

from . import jit

_U64 = struct.Struct("<Q")


def read_message(stream) -> tuple[int, bytes] | None:
    """(number, bytes) of one message, or None at the end of the stream."""
    head = stream.read(2 * _U64.size)
    if len(head) < 2 * _U64.size:
        return None
    number, n = struct.unpack("<QQ", head)
    body = stream.read(n)
    if len(body) < n:
        return None
    return number, body


def write_message(stream, number: int, body: bytes) -> None:
    stream.write(struct.pack("<QQ", number, len(body)))
    stream.write(body)
    stream.flush()


def main(triple: str, cpu: str, features: str) -> None:
    jit.initialize()
    jit.use_target_info(triple, cpu, features)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while (request := read_message(source)) is not None:
        opt_level, llvm_ir = request
        try:
            obj = jit.compile_to_object(llvm_ir.decode(), opt_level, "worker")
        except RuntimeError as exc:
            write_message(sink, 1, str(exc).encode())
        else:
            write_message(sink, 0, obj)


if __name__ == "__main__":
    main(*sys.argv[1:4])
