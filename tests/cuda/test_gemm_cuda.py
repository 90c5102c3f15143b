"""The CUDA SGEMM template (kcompiler/codegen/cuda/gemm.py), checked without a GPU:

- every kernel compiles for sm_80 and sm_90 with no spills and no local memory, and the
  large tile's PTX has the 128-bit global and shared loads its design relies on;
- emulated (barrier-split form, shared memory race-checked), plain and fused products equal
  the numpy reference on odd shapes (1, 3, 17, 65, 130...), with transposes, batches and
  broadcast batches, with every tile, on 16-byte aligned buffers (float4 loads) and on
  buffers 4 bytes off (scalar loads), writing nothing past the output;
- the checks can fail: the GEMM's source with each KC_SYNC and each KC_GUARD removed in
  turn is caught by the race detector, by wrong or stray results, or by AddressSanitizer
  (a subprocess); a sanitized run (ASan + UBSan) of odd shapes is clean.

Skipped where nvcc/ptxas or g++ are missing."""
import dataclasses
import json
import re

import numpy as np
import pytest

from kcompiler.codegen.cuda import gemm, toolchain
from kcompiler.codegen.cuda.render import TemplateContext, module_source, render_node
from kcompiler.errors import UnsupportedError
from kcompiler.ir.graph import GraphBuilder, inline_constants, operands
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.passes.fusion import fuse_elementwise, fuse_epilogues
from kcompiler.passes.memory_plan import plan_memory
from kcompiler.passes.schedule import schedule_kernels
from kcompiler.passes.simplify import simplify
from kcompiler.schedule.kernel import node_buffers
from tests.cuda.sanitized import run_sanitized_script
from op_check import assert_close32
from tests.cuda.test_render_cuda import HAS_CXX, Case, needs_cxx, needs_toolkit, normal, op_case

LARGE, MEDIUM, SMALL = gemm.TILES
GARBAGE = 7.0          # what an output holds before the kernel runs (its negation: what follows it)


# ---- cases --------------------------------------------------------------------------------------

def matmul_case(id, a_shape, b_shape, transpose_a=False, transpose_b=False):
    return op_case("matmul", id, "matmul", [normal(*a_shape), normal(*b_shape)],
                   {"transpose_a": transpose_a, "transpose_b": transpose_b})


# (id, a, b, transpose_a, transpose_b, tile or None for the template's choice)
MATMULS = [
    ("1x1x1", (1, 1), (1, 1), False, False, None),
    ("3x17x1", (3, 17), (17, 1), False, False, None),
    ("17x64x3", (17, 64), (64, 3), False, False, None),
    ("65x3x130", (65, 3), (3, 130), False, False, None),
    ("37x20x44", (37, 20), (20, 44), False, False, None),              # float4 rows, ragged edges
    ("ta_65x17x64", (17, 65), (17, 64), True, False, None),
    ("tb_64x130x3", (64, 130), (3, 130), False, True, None),
    ("tab_1x130x17", (130, 1), (17, 130), True, True, None),
    ("batch", (2, 17, 3), (2, 3, 65), False, False, None),
    ("broadcast", (3, 1, 5, 17), (2, 17, 4), False, False, None),      # batch (3, 2)
    ("broadcast_b", (5, 17), (2, 3, 17, 4), False, False, None),
    ("rows", (2, 3, 17, 20), (20, 64), False, False, None),            # one GEMM over 102 rows
    ("batch_ta", (2, 20, 17), (20, 9), True, False, None),
    ("large_130x65x17", (130, 17), (17, 65), False, False, LARGE),
    ("large_tab", (12, 132), (68, 12), True, True, LARGE),
    ("large_k8", (3, 130, 8), (8, 129), False, False, LARGE),          # one slice
    ("large_broadcast", (2, 1, 67, 33), (3, 33, 16), False, False, LARGE),
    ("medium_65x130x64", (65, 64), (64, 130), False, False, MEDIUM),
    ("medium_ta", (20, 70), (20, 3), True, False, MEDIUM),
    ("medium_k16_tb", (2, 33, 16), (2, 70, 16), False, True, MEDIUM),
]


def dense(id, x_shape, units, epilogue, tile=None, transpose_b=False, extra=()):
    """x @ w + bias, then ``epilogue(builder, h, *extra inputs)`` -> the graph's outputs;
    ``extra``: (name, shape) of more inputs."""
    b = GraphBuilder(name=id)
    k = x_shape[-1]
    w_shape = (units, k) if transpose_b else (k, units)
    x = b.input("x", TensorType(x_shape))
    w = b.input("w", TensorType(w_shape))
    bias = b.input("bias", TensorType((units,)))
    h = b.op("bias_add", b.op("matmul", x, w, transpose_a=False, transpose_b=transpose_b), bias)
    b.g.graph["outputs"] = epilogue(b, h, *(b.input(name, TensorType(shape)) for name, shape in extra))
    feeds = {"x": normal(*x_shape), "w": normal(*w_shape), "bias": normal(units),
             **{name: normal(*shape) for name, shape in extra}}
    return Case("fused", id, b.g, feeds, fuse=True), tile


def relu_grad_case():
    """The backward product dy @ w^T with the activation's gradient as its epilogue."""
    b = GraphBuilder(name="relu_grad")
    dy = b.input("dy", TensorType((17, 5)))
    w = b.input("w", TensorType((20, 5)))
    y = b.input("y", TensorType((17, 20)))
    b.g.graph["outputs"] = [b.op("relu_grad", y, b.op("matmul", dy, w, transpose_a=False, transpose_b=True))]
    feeds = {"dy": normal(17, 5), "w": normal(20, 5), "y": np.maximum(normal(17, 20), 0)}
    return Case("fused", "relu_grad", b.g, feeds, fuse=True), None


def two_outputs(b, h):
    r = b.op("relu", h)
    return [r, b.op("mul", b.op("sigmoid", h), r)]


FUSED = [
    dense("bias_relu", (37, 20), 44, lambda b, h: [b.op("relu", h)]),
    dense("bias_relu_rows", (2, 3, 7), 65, lambda b, h: [b.op("relu", h)], MEDIUM),
    dense("tanh_scalar", (5, 7), 3, lambda b, h: [b.op("mul", b.op("tanh", h), b.scalar(2.0))], LARGE),
    dense("two_outputs", (17, 13), 9, lambda b, h: two_outputs(b, h), transpose_b=True),
    dense("residual", (3, 130), 130, lambda b, h, r: [b.op("add", h, r)], extra=[("r", (3, 130))]),
    relu_grad_case(),
]


def scheduled(g):
    """simplify, fuse (matmul heads take epilogues, as the CUDA backend will declare), plan,
    schedule: the target-neutral back half of kcompiler/pipeline.py."""
    g = fuse_epilogues(fuse_elementwise(simplify(g)), heads=frozenset({"matmul"}))
    return schedule_kernels(plan_memory(g))


def template_kernel(g, nid, name, tile=None):
    """The CudaKernel of GEMM node ``nid``: the registered template's (render_node), or with
    ``tile`` forced."""
    node = g.nodes[nid]
    in_types = [g.nodes[u]["type"] for u in operands(g, nid)]
    if tile is None:
        return render_node(node, in_types, inline_constants(g, nid), name, nid)
    out_types = list(node["type"]) if isinstance(node["type"], tuple) else [node["type"]]
    ctx = TemplateContext(name, node, in_types, out_types, inline_constants(g, nid), node_buffers(node, in_types), nid)
    return (gemm.matmul if node["op"] == "matmul" else gemm.fused_matmul)(ctx, tile)


@dataclasses.dataclass
class Gemm:
    """One GEMM node of a case's scheduled graph, rendered, with its operands and results
    from the reference interpreter."""
    id: str
    kernel: object
    inputs: list
    expected: list


def prepare(cases, prefix):
    gemms = []
    for k, (case, tile) in enumerate(cases):
        g = scheduled(case.graph)
        _, _, values = run_reference(g, case.feeds, keep_all=True)
        (nid,) = [n for n in g.graph["plan"]["order"] if g.nodes[n]["op"] in ("matmul", "fused_contraction")]
        if case.fuse:
            assert g.nodes[nid]["op"] == "fused_contraction", case.id
        expected = [np.asarray(e) for e in (values[nid] if isinstance(values[nid], tuple) else (values[nid],))]
        inputs = [np.asarray(values[u]) for u in operands(g, nid)]
        kernel = template_kernel(g, nid, f"{prefix}{k}", tile)
        assert len(kernel.buffers) == len(expected) + len(inputs), case.id
        gemms.append(Gemm(case.id, kernel, inputs, expected))
    return gemms


def all_cases():
    return [(matmul_case(id, a, b, ta, tb), tile) for id, a, b, ta, tb, tile in MATMULS] + FUSED


# ---- running an emulated GEMM ------------------------------------------------------------------

def placed(values, misalign, room):
    """A float32 copy of ``values`` starting ``4 * misalign`` bytes past a 16-byte boundary and
    ``room`` elements after it, at the end of their allocation: (the copy, those elements)."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    for _ in range(64):   # allocate until the address fits
        for skip in range(4):
            memory = np.empty(skip + flat.size + room, np.float32)
            if (memory.ctypes.data + 4 * skip) % 16 == 4 * misalign:
                memory[skip:skip + flat.size] = flat
                return memory[skip:skip + flat.size], memory[skip + flat.size:]
    raise AssertionError("no allocation at the wanted alignment")


def stray_room(shape):
    """Elements after a buffer that a GEMM without its guards could touch: up to a tile
    (at most 128 rows and columns) past the matrix."""
    return 128 * (shape[-1] + 1) if shape else 128


def run_gemm(library, kernel, inputs, expected, misalign=0, exact=False):
    """Run ``kernel`` (a Gemm's, or a mutant of it) from ``library`` with every buffer
    ``misalign`` floats off a 16-byte boundary. Outputs start as GARBAGE; with ``exact`` every
    buffer ends its allocation (AddressSanitizer sees any access past it), otherwise room
    follows: -GARBAGE after the outputs, NaN after the inputs. Returns (outputs, the
    elements after them)."""
    outs = [placed(np.full(e.shape, GARBAGE), misalign, 0 if exact else stray_room(e.shape)) for e in expected]
    for _, after in outs:
        after[:] = -GARBAGE
    ins = []
    for x in inputs:
        copy, after = placed(x, misalign, 0 if exact else stray_room(x.shape))
        after[:] = np.nan    # a value read past an operand spoils the product it reaches
        ins.append(copy)
    error = toolchain.emulate(library, kernel, [o for o, _ in outs] + ins)
    assert int(error["status"]) == 0, error
    return [o for o, _ in outs], [after for _, after in outs]


def check(library, g, kernel=None, misalign=0, exact=False):
    """``g``'s kernel (or ``kernel``, a mutant) equals the reference and writes nothing else."""
    outs, after = run_gemm(library, kernel or g.kernel, g.inputs, g.expected, misalign, exact)
    for got, want, rest in zip(outs, g.expected, after):
        assert_close32(got.reshape(want.shape), want, f"{g.id} (misaligned {misalign})")
        np.testing.assert_array_equal(rest, -GARBAGE, err_msg=f"{g.id}: written past the output")


# ---- (a) compile checks ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemms():
    return prepare(all_cases(), "gemm_case")


@needs_toolkit
def test_every_gemm_compiles_for_sm80_and_sm90_without_spills(gemms):
    report = toolchain.compile_check(module_source([g.kernel for g in gemms]))
    for arch in toolchain.SASS_ARCHS:
        assert set(report.resources[arch]) == {g.kernel.name for g in gemms}, arch
    assert report.problems() == []
    # the large tile's loads are the 128-bit loads its design counts on: a float4 of each
    # operand from global memory a step; per k, two fragments of each operand from shared
    # memory for 64 FMAs
    (large,) = [g.kernel.name for g in gemms if g.id == "large_tab"]
    ptx = report.ptx.split(f".entry {large}(")[1].split(".entry")[0]
    assert ptx.count("ld.global.nc.v4.f32") == 2
    assert ptx.count("ld.shared.v4.f32") == LARGE.bk * (LARGE.rm + LARGE.rn) // 4
    assert ptx.count("fma.rn.f32") == LARGE.bk * LARGE.rm * LARGE.rn


# ---- (b) emulation against the reference ------------------------------------------------------------

@pytest.fixture(scope="module")
def library(gemms):
    if not HAS_CXX:
        pytest.skip("no g++ for the CUDA emulation")
    return toolchain.build_emulated(module_source([g.kernel for g in gemms]))


@needs_cxx
@pytest.mark.parametrize("misalign", [0, 1], ids=["float4_loads", "scalar_loads"])
def test_emulated_gemms_equal_the_reference(gemms, library, misalign):
    for g in gemms:
        check(library, g, misalign=misalign)


def test_the_tile_follows_the_shapes():
    def tile_of(a, b):
        return gemm.choose_tile(gemm.product(TensorType(a), TensorType(b), (a[-2], b[-1]), {}))
    assert tile_of((4096, 4096), (4096, 4096)) == LARGE
    assert tile_of((1024, 64), (64, 1024)) == MEDIUM          # 64 large tiles would leave SMs idle
    assert tile_of((37, 20), (20, 44)) == SMALL
    p = gemm.product(TensorType((3, 1, 5, 17)), TensorType((2, 17, 4)), (3, 2, 5, 4), {})
    assert (p.batch, p.m, p.n, p.k) == (6, 5, 4, 17)
    assert p.a.offset == "batch / 2 * 85LL" and p.b.offset == "(batch % 2) * 68LL"


def test_unsupported_gemms_raise_clear_errors():
    with pytest.raises(UnsupportedError, match="float32 operands only, got float64"):
        gemm.product(TensorType((3, 4), "float64"), TensorType((4, 5), "float64"), (3, 5), {})
    ctx = TemplateContext("f", {"op": "fused_contraction", "attrs": {"head": "conv3d"}, "layer": "c1"}, [], [], {}, ())
    with pytest.raises(UnsupportedError, match="no CUDA kernel for a fused conv3d \\(c1\\)"):
        gemm.fused_contraction(ctx)


# ---- (c) the checks can fail: each barrier and each guard removed in turn -----------------------------

def _guard_spans(source):
    """(start, end) of every ``KC_GUARD(...)`` in ``source``."""
    spans = []
    for match in re.finditer(r"KC_GUARD\(", source):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        spans.append((match.start(), i))
    return spans


def mutants(kernel):
    """(description, kernel) for the GEMM with each KC_SYNC and each KC_GUARD of its own
    function removed in turn (a guard becomes ``true``); each mutant renamed so all of them
    build into one library."""
    source = kernel.source
    body = source.index(f"void KC_GEMM_BOUNDS")      # the prelude helpers and epilogue come before
    edits = [(m.start(), m.end(), "", f"KC_SYNC #{k}") for k, m in enumerate(re.finditer(r"KC_SYNC", source))
             if m.start() > body]
    edits += [(s, e, "true", source[s:e]) for s, e in _guard_spans(source) if s > body]
    out = []
    for k, (start, end, replacement, what) in enumerate(edits):
        name = f"{kernel.name}_mutant{k}"
        text = re.sub(rf"\b{kernel.name}(?![0-9])", name, source[:start] + replacement + source[end:])
        launch = dataclasses.replace(kernel.launches[0], kernel=name)
        out.append((f"{kernel.name} without {what}", dataclasses.replace(kernel, name=name, source=text,
                                                                        launches=(launch,))))
    return out


# The GEMMs mutated: every tile, both layouts of each operand (k along the rows, or down the
# columns), float4 and scalar paths (rows a multiple of 4 floats, run aligned and misaligned),
# a batch, ragged edges everywhere, several slices, and a fused epilogue.
MUTATED = [
    (matmul_case("plain", (2, 37, 20), (2, 20, 44)), SMALL),
    (matmul_case("transposed", (12, 132), (68, 12), True, True), LARGE),
    dense("fused", (37, 20), 44, lambda b, h: [b.op("relu", h)], MEDIUM),
]


def mutation_set():
    """(Gemm, [(description, mutant kernel)]) for each of MUTATED."""
    return [(g, mutants(g.kernel)) for g in prepare(MUTATED, "gemm_mutated")]


def caught_in_process(library, g, mutant):
    """How the in-process checks catch ``mutant`` (None if they do not)."""
    for misalign in (0, 1):
        try:
            check(library, g, mutant, misalign)
        except toolchain.SharedMemoryRace:
            return "race"
        except AssertionError:
            return "wrong results"
    return None


# The GEMMs of the sanitized run: every tile, every layout, batches, epilogues.
SANITIZED = {"1x1x1", "tab_1x130x17", "broadcast", "rows", "large_tab", "medium_k16_tb", "two_outputs"}

SANITIZED_RUN = """
import json, os, sys, tempfile
from kcompiler.codegen.cuda import toolchain
from tests.cuda import test_gemm_cuda as t
names = json.loads(sys.argv[1])
if names is None:              # the GEMMs of odd shapes: clean
    gemms = t.prepare([c for c in t.all_cases() if c[0].id in t.SANITIZED], "gemm_sanitized")
    library = toolchain.build_emulated(t.module_source([g.kernel for g in gemms]), sanitize=True)
    for g in gemms:
        for misalign in (0, 1):
            t.check(library, g, misalign=misalign, exact=True)
    print(json.dumps("clean"))
    sys.exit(0)
mutants = [(g, m) for g, ms in t.mutation_set() for what, m in ms if what in names]
library = toolchain.build_emulated(t.module_source([m for _, m in mutants]), sanitize=True)
caught = {}
for g, mutant in mutants:      # each in a child process: the sanitizers stop at the first error
    with tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:
            os.dup2(log.fileno(), 2)
            for misalign in (0, 1):
                t.run_gemm(library, mutant, g.inputs, g.expected, misalign, exact=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        log.seek(0)
        report = log.read().decode(errors="replace")
    caught[mutant.name] = status != 0 and ("ERROR: AddressSanitizer" in report or "runtime error" in report)
print(json.dumps(caught))
"""


def run_sanitized(names):
    """SANITIZED_RUN in a subprocess that preloads the sanitizers' runtime: the sanitized
    GEMMs of odd shapes (``names`` None: answers "clean"), or the mutants ``names`` (answers
    {mutant's function: whether a sanitizer stopped it})."""
    out = run_sanitized_script(SANITIZED_RUN, json.dumps(names), timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_cxx
def test_removing_any_barrier_or_guard_of_the_gemm_is_caught():
    mutation = mutation_set()
    library = toolchain.build_emulated(module_source([m for _, ms in mutation for _, m in ms]))
    for _, ms in mutation:
        assert sum("KC_SYNC" in what for what, _ in ms) == 1
        assert sum("KC_GUARD" in what for what, _ in ms) == 10   # row and column: 2 loads x 2 paths, the store
    how = {what: caught_in_process(library, g, m) for g, ms in mutation for what, m in ms}
    assert all(how[what] == "race" for what in how if "KC_SYNC" in what), how
    names = {what: m.name for _, ms in mutation for what, m in ms}
    survivors = [what for what in how if how[what] is None]
    by_sanitizers = run_sanitized(survivors) if survivors else {}
    missed = [what for what in survivors if not by_sanitizers[names[what]]]
    assert missed == [], f"mutants no check catches: {missed}"


@needs_cxx
def test_sanitized_emulation_of_odd_gemms_is_clean():
    assert run_sanitized(None) == "clean"
