"""Building blocks of CUDA templates written in the barrier-split form (prelude.h): ``Code``
(lines of C with indentation), ``function`` (an ``extern "C" __global__`` function over a
kernel's buffers, with its emulation entry) and ``Gemm``, a tiled shared-memory GEMM whose
operands, scaling and store are C expressions, for the GEMMs around a template's main loop
(the recurrent kernels' input projection and weight gradients).

``Gemm``: TILE x TILE outputs per block of TILE x TILE threads, one output per thread;
TILE-deep slices of both operands staged in shared tiles padded by one column (no bank
conflicts when a tile is written transposed), each loaded with consecutive threads along
the operand's contiguous index (coalesced). Columns come in segments (a block's columns
never straddle two, so an operand may depend on the segment: a gate's dropout mask) and
the reduction in k segments, each scaled by ``post`` before it is added (a per-gate mask
on dx). Correct for any sizes (guards on every edge); not tuned: two shared-memory loads
per multiply-add.
"""
from contextlib import contextmanager
from dataclasses import dataclass

from .render import Launch, emulation_entry, parameters

TILE = 16


class Code:
    """Lines of C with indentation: ``with code.block("for (...)"):``."""

    def __init__(self):
        self.lines, self.depth = [], 0

    def __call__(self, *lines):
        for line in lines:
            self.lines.append("    " * self.depth + line)

    @contextmanager
    def block(self, head):
        self(head + " {")
        self.depth += 1
        yield
        self.depth -= 1
        self("}")

    def text(self):
        return "\n".join(self.lines)


def function(name, buffers, body):
    """An ``extern "C" __global__`` function with the kernel's parameters, in the barrier-split
    form, and its emulation entry."""
    return "\n".join([f'extern "C" __global__ void {name}({parameters(buffers)}) {{', body, "}",
                      emulation_entry(name, buffers, barriers=True)])


@dataclass
class Gemm:
    """out[row, col] = sum over k segments ks of post(row, col, ks) * sum_k A(row, k) B(k, col),
    rows in [0, M); columns in ``col_segments`` segments of ``width`` (``cseg`` is a column's
    segment: a block's columns never straddle two, so A may depend on it, e.g. a gate's
    dropout mask); k in ``k_segments`` of ``depth``. ``a(row, k)``, ``b(k, col)``, ``post``
    are C expressions (strings) over the C variables ``row`` (long long), ``k`` and ``col``
    (global, int), ``cseg`` and ``kseg``; ``store`` a C statement over ``row``, ``col`` and
    ``value``. ``a_rows_fastest``/``b_k_fastest``: the operand is contiguous along rows / k
    (the tile is then loaded with consecutive threads along that index: coalesced)."""
    M: int
    col_segments: int
    width: int
    k_segments: int
    depth: int
    a: str
    b: str
    store: str
    post: str = None
    a_rows_fastest: bool = False
    b_k_fastest: bool = False

    @property
    def col_tiles(self):
        return -(-self.width // TILE)

    def launch(self, name):
        return Launch(name, (-(-self.M // TILE), self.col_segments * self.col_tiles, 1), (TILE, TILE, 1),
                      barriers=True)

    def source(self, name, buffers):
        c = Code()
        c.depth = 1
        c(f"KC_SHARED(float, a_tile, [{TILE}][{TILE + 1}]);",
          f"KC_SHARED(float, b_tile, [{TILE}][{TILE + 1}]);",
          "KC_PER_THREAD(float, acc, [2]);  // [0]: this k segment's sum, [1]: the total",
          f"const long long row0 = (long long)blockIdx.x * {TILE};",
          f"const int cseg = blockIdx.y / {self.col_tiles}, col_in0 = blockIdx.y % {self.col_tiles} * {TILE};")
        c("KC_THREADS { KC_MINE(acc)[1] = 0.0f; }")
        with c.block(f"for (int kseg = 0; kseg < {self.k_segments}; ++kseg)"):
            c("KC_THREADS { KC_MINE(acc)[0] = 0.0f; }")
            with c.block(f"for (int k0 = 0; k0 < {self.depth}; k0 += {TILE})"):
                with c.block("KC_THREADS"):
                    i, kk = ("threadIdx.x", "threadIdx.y") if self.a_rows_fastest else ("threadIdx.y", "threadIdx.x")
                    c(f"const long long row = row0 + {i};",
                      f"const int k = kseg * {self.depth} + k0 + {kk};",
                      f"a_tile[{i}][{kk}] = KC_GUARD(row < {self.M} && k0 + {kk} < {self.depth}) ? {self.a} : 0.0f;")
                    kk, n = ("threadIdx.x", "threadIdx.y") if self.b_k_fastest else ("threadIdx.y", "threadIdx.x")
                    with c.block(""):
                        c(f"const int k = kseg * {self.depth} + k0 + {kk};",
                          f"const int col = cseg * {self.width} + col_in0 + {n};",
                          f"b_tile[{kk}][{n}] = KC_GUARD(k0 + {kk} < {self.depth} && col_in0 + {n} < {self.width})"
                          f" ? {self.b} : 0.0f;")
                c("KC_SYNC;")
                with c.block("KC_THREADS"):
                    c("float sum = KC_MINE(acc)[0];",
                      f"for (int kk = 0; kk < {TILE}; ++kk) sum += a_tile[threadIdx.y][kk] * b_tile[kk][threadIdx.x];",
                      "KC_MINE(acc)[0] = sum;")
                c("KC_SYNC;")
            with c.block("KC_THREADS"):
                if self.post is None:
                    c("KC_MINE(acc)[1] += KC_MINE(acc)[0];")
                else:
                    c("const long long row = row0 + threadIdx.y;",
                      f"const int col = cseg * {self.width} + col_in0 + threadIdx.x;",
                      f"if (KC_GUARD(row < {self.M} && col_in0 + threadIdx.x < {self.width})) "
                      f"KC_MINE(acc)[1] += ({self.post}) * KC_MINE(acc)[0];")
        with c.block("KC_THREADS"):
            c("const long long row = row0 + threadIdx.y;",
              f"const int col = cseg * {self.width} + col_in0 + threadIdx.x;",
              "const float value = KC_MINE(acc)[1];",
              f"if (KC_GUARD(row < {self.M} && col_in0 + threadIdx.x < {self.width})) {{ {self.store} }}")
        return function(name, buffers, c.text())
