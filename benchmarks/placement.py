"""How far apart the host has put this machine's first two CPUs, measured: the round trip of one
cache line bounced between a thread pinned to each, in nanoseconds.

Why the comparison runner asks: the 2-vCPU VM this project is measured on is moved around by
its host. Most of the time its two vCPUs share a cache complex and a line crosses from one to
the other and back in ~100-140 ns; for minutes at a time they do not, and it takes ~380-440 ns.
Each CPU computes as fast in both placements (two single-threaded SGEMMs, one per CPU, at the
same time: 105 GFLOP/s each either way), but whatever two threads hand each other slows down:
W6's training step (its recurrent kernels split the batch over both cores) takes 1.65 ms in the
near placement and 3.5-3.7 ms in the far one, in the same process, switching back and forth with
the round trip (benchmarks/placement.py's probe between W6's windows, 8 processes: every 3.5 ms
window saw 380-440 ns, every 1.7 ms window 120-140 ns). This was the "slow mode" of the earlier
comparison runs. The runner waits for the near placement before each timed window, for every
framework alike, and records the round trip before and after each window.

The probe is JIT-compiled with llvmlite, so it runs in kcompiler's environment only: the runner
serves it over a Unix socket (``Server``) to the workers of every framework (common.py's
``PlacementProbe``, standard library only).

    python benchmarks/placement.py [rounds]    # prints a few round trips
"""
import ctypes
import os
import socket
import sys
import threading
import time

_lock = threading.Lock()
_function = None


def _pingpong():
    """``void pingpong(i32* flag, i64 n, i32 role)``: role r waits until the flag holds 2i+r,
    then stores 2i+r+1, for i in 0..n-1 (no ``pause``: the wait is the measurement)."""
    global _function
    with _lock:
        if _function is None:
            import llvmlite.binding as llvm
            import llvmlite.ir as ir
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            i32, i64 = ir.IntType(32), ir.IntType(64)
            module = ir.Module(name="placement")
            fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i32.as_pointer(), i64, i32]), name="pingpong")
            flag, n, role = fn.args
            entry, loop, spin, got, done = (fn.append_basic_block(name) for name in ("entry", "loop", "spin", "got",
                                                                                     "done"))
            b = ir.IRBuilder(entry)
            b.branch(loop)
            b.position_at_end(loop)
            i = b.phi(i64)
            i.add_incoming(ir.Constant(i64, 0), entry)
            b.cbranch(b.icmp_signed("<", i, n), spin, done)
            b.position_at_end(spin)
            want = b.add(b.trunc(b.mul(i, ir.Constant(i64, 2)), i32), role)
            b.cbranch(b.icmp_unsigned("==", b.load_atomic(flag, "acquire", 4), want), got, spin)
            b.position_at_end(got)
            b.store_atomic(b.add(want, ir.Constant(i32, 1)), flag, "release", 4)
            i.add_incoming(b.add(i, ir.Constant(i64, 1)), got)
            b.branch(loop)
            b.position_at_end(done)
            b.ret_void()
            engine = llvm.create_mcjit_compiler(llvm.parse_assembly(str(module)),
                                                llvm.Target.from_default_triple().create_target_machine(opt=2))
            engine.finalize_object()
            function = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32)(
                engine.get_function_address("pingpong"))
            function.engine = engine  # keeps the code alive
            _function = function
    return _function


def round_trip_ns(bounces=5000, repeats=3):
    """The fastest of ``repeats`` measurements of the round trip (ns) between the first two CPUs
    this process may use; None on a machine with one."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        return None
    pingpong = _pingpong()
    flag = (ctypes.c_int32 * 16)()  # one cache line

    def bounce(cpu, role):
        os.sched_setaffinity(0, {cpu})  # this thread only
        pingpong(ctypes.addressof(flag), bounces, role)

    best = float("inf")
    for _ in range(repeats):
        flag[0] = 0
        threads = [threading.Thread(target=bounce, args=(cpu, role)) for role, cpu in enumerate(cpus)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = min(best, (time.perf_counter() - start) / bounces * 1e9)
    return best


class Server:
    """Answers ``round_trip_ns()`` on a Unix socket at ``path``, one line per request, from a
    daemon thread of this process (the runner's, idle while its workers run)."""

    def __init__(self, path):
        _pingpong()  # compiled before the first worker asks
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self._accept, daemon=True, name="placement-probe").start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn):
        with conn, conn.makefile("rw") as stream:
            for _ in stream:
                ns = round_trip_ns()
                stream.write(f"{ns if ns is not None else -1:.1f}\n")
                stream.flush()

    def close(self):
        self.sock.close()


if __name__ == "__main__":
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        print(f"{round_trip_ns():.0f} ns")
