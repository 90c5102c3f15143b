"""Block reductions of the CUDA renderer (kcompiler/codegen/cuda/render.py), checked without a GPU:

- reductions over long rows (1, 31, 257, 1000 elements) into few outputs: sum, mean, max, min
  along a row, over everything, over the leading axis (a bias gradient) and a middle axis;
  argmax/argmin with ties and NaN; softmax, log_softmax and their gradients, along the last
  axis and the first; int32 sums and maxima; max and average pooling with windows of 36 and
  49 taps. Emulated on the CPU, they equal the reference
  interpreter with NaN and infinities, and no shared element races (the emulation raises
  SharedMemoryRace); rows shorter than a warp keep one thread per output;
- loops that look like reductions but may not be reordered (a fold by subtraction, a value
  reading its accumulator, a pass storing one element at every iteration or reading what
  another iteration stored, an argmax keeping the last of equal values, an accumulation
  into overlapping elements) stay serial;
- removing any one barrier (KC_SYNC) or index guard (KC_GUARD) from a block reduction or a
  softmax is caught: by the race detector, by a wrong result, by a write past an output, or
  by AddressSanitizer in a subprocess; the unmutated kernels pass the same checks;
- every kernel of these cases compiles with nvcc/ptxas for sm_80 and sm_90, no spills, no
  local memory;
- the training step of a small model with each optimizer (SGD, momentum, Nesterov, Adam,
  amsgrad, AdamW, Adamax, Nadam, Adagrad, Adadelta, RMSprop plain and centred with momentum,
  clipnorm, clipvalue, global_clipnorm) is described except its contractions; its described
  kernels render, compile and, emulated, equal the reference.

Skipped where nvcc/ptxas or g++ are missing."""
import dataclasses
import hashlib
import re

import numpy as np
import pytest

from kcompiler import keras
from kcompiler.codegen.backend import get_backend
from kcompiler.codegen.cuda import toolchain
from kcompiler.codegen.cuda.render import CudaKernel, module_source, render
from kcompiler.ir.graph import operands
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.passes.fusion import fuse_elementwise, fuse_epilogues
from kcompiler.passes.memory_plan import plan_memory
from kcompiler.passes.schedule import schedule_kernels
from kcompiler.passes.simplify import simplify
from kcompiler.pipeline import front_stages
from kcompiler.schedule.kernel import Assign, Buffer, Const, If, Kernel, Load, Local, Store, Var, call, loop
from tests.cuda.sanitized import run_sanitized_script
from op_check import assert_close32
from tests.cuda.test_render_cuda import (HAS_CXX, HAS_TOOLKIT, Case, Prepared, build, check_case, described,
                                         needs_cxx, needs_toolkit, op_case, prepare)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # references at NaN, inf

RNG = np.random.default_rng(23)
LENGTHS = (1, 31, 257, 1000)
SOFTMAX_FAMILY = ("softmax", "log_softmax", "softmax_grad", "log_softmax_grad")


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def specials_in_rows(x):
    """Row 0 holds a NaN, row 1 +inf and -inf, row 2 a -inf; the others are finite."""
    x = x.copy()
    n = x.shape[-1]
    x[0, n // 2] = np.nan
    x[1, 0], x[1, -1] = np.inf, -np.inf
    x[2, n // 3] = -np.inf
    return x


def ties_and_nans(rows, n):
    """Few distinct values (ties), two NaNs in row 0, a row of -inf, a row with -inf first."""
    x = np.round(normal(rows, n))
    x[0, n // 2], x[0, -1] = np.nan, np.nan
    x[1] = -np.inf
    x[2, 0] = -np.inf
    return x


def reduce_case(op, x, axes, block):
    return op_case("reduce", f"{op}{x.shape}{axes}{x.dtype}", op, [x], {"axes": axes, "keepdims": False}), block


def row_case(op, inputs, axis, block):
    return op_case("reduce", f"{op}{inputs[0].shape}{axis}", op, inputs, {"axis": axis}), block


def long_row_cases():
    """(case, whether its kernel is a block reduction) for rows of every length."""
    cases = []
    for n in LENGTHS:
        long = n >= 32
        for op in ("sum", "mean", "max", "min"):
            cases.append(reduce_case(op, specials_in_rows(normal(4, n)), (1,), long))
        for op in ("sum", "max"):
            cases.append(reduce_case(op, normal(n), None, long))
        # the leading axis (a bias gradient): fill, column reduction, scale
        cases.append(reduce_case("mean", normal(n, 33), (0,), n > 1))
        cases.append(reduce_case("min", specials_in_rows(normal(n, 5).T).T.copy(), (0,), n > 1))
        cases.append(reduce_case("sum", normal(2, n, 5), (1,), long))  # a middle axis
        cases.append(row_case("argmax", [ties_and_nans(4, n)], -1, long))
        cases.append(row_case("argmin", [ties_and_nans(3, n).T.copy()], 0, long))
        for op in SOFTMAX_FAMILY:
            x = specials_in_rows(normal(4, n) * 4) if op == "softmax" else normal(3, n) * 4
            cases.append(row_case(op, [x] + ([normal(*x.shape)] if op.endswith("_grad") else []), -1, long))
        cases.append(row_case("softmax", [normal(n, 3)], 0, long))
    ints = RNG.integers(-1000, 1000, (3, 257)).astype(np.int32)
    cases += [reduce_case("sum", ints, (1,), True), reduce_case("max", ints.T.copy(), (0,), True)]
    # pooling windows of 36 and 49 taps: fill, accumulate over the taps (a block per window), scale
    images = normal(1, 8, 6, 5)
    images[0, 3, 2, 1] = np.nan
    cases.append((op_case("pool", "max_pool2d_6x6", "max_pool2d", [images],
                          {"pool": (6, 6), "strides": (2, 6), "padding": "valid"}), True))
    cases.append((op_case("pool", "avg_pool2d_7x7", "avg_pool2d", [normal(2, 7, 7, 3)],
                          {"pool": (7, 7), "strides": (7, 7), "padding": "valid"}), True))
    return cases


@pytest.fixture(scope="module")
def long_rows():
    if not HAS_CXX:
        pytest.skip("no g++ for the CUDA emulation")
    cases = long_row_cases()
    prepared = build(prepare([c for c, _ in cases], "r"))
    return list(zip(prepared, [block for _, block in cases]))


@needs_cxx
def test_long_rows_equal_the_reference_without_races(long_rows):
    for p, _ in long_rows:
        check_case(p)  # emulate() raises SharedMemoryRace on a race


@needs_cxx
def test_the_form_follows_the_extents(long_rows):
    for p, block in long_rows:
        (kernel,) = p.kernels.values()
        assert any(launch.barriers for launch in kernel.launches) == block, p.case.id
    launches = {p.case.id: next(iter(p.kernels.values())).launches for p, _ in long_rows}
    softmax = launches["softmax(4, 1000)-1"]
    assert [(l.blocks, l.threads) for l in softmax] == [((4, 1, 1), (256, 1, 1))]  # a block per row
    assert launches["sum(1000,)Nonefloat32"][0].blocks == (1, 1, 1)
    fill, columns, scale = launches["mean(1000, 33)(0,)float32"]    # 33 columns: two tiles of 32
    assert (columns.blocks, columns.threads, columns.barriers) == ((2, 1, 1), (32, 8, 1), True)
    assert not fill.barriers and not scale.barriers
    assert launches["min(257, 5)(0,)float32"][-1].threads == (8, 32, 1)
    assert launches["sum(2, 257, 5)(1,)float32"][1].blocks == (2, 1, 1)  # one block per outer index


# ---- what is not a reorderable fold stays serial ------------------------------------------------------

def _not_reorderable():
    """Descriptions whose loops look like reductions but are not safe to deal out over threads."""
    o, r, i, j = Var("o"), Var("r"), Var("i"), Var("j")
    acc, best, best_at = Var("acc", "float32"), Var("best", "float32"), Var("best_at")
    x = Load("in0", o * 64 + r, "float32")
    buffers = (Buffer("out0", "float32", 3 * 64, True), Buffer("in0", "float32", 3 * 64, False))

    def row(*statements):
        return (loop("o", 3, statements, parallel=True),)
    bodies = {
        "a fold by subtraction": row(Local(acc, Const(0.0, "float32")),
                                     loop("r", 64, [Assign(acc, call("sub", acc, x))]), Store("out0", o, acc)),
        "a fold of a value reading the accumulator": row(
            Local(acc, Const(1.0, "float32")), loop("r", 64, [Assign(acc, call("add", acc, call("mul", acc, x)))]),
            Store("out0", o, acc)),
        "a pass storing one element at every iteration": row(
            Local(acc, Const(0.0, "float32")), loop("r", 64, [Assign(acc, call("add", acc, x))]),
            loop("r", 64, [Store("out0", o, call("add", x, acc))])),
        "a pass reading what another iteration stored": row(
            loop("r", 64, [Store("out0", o * 64 + r, x)]), Local(acc, Const(0.0, "float32")),
            loop("r", 64, [Assign(acc, call("add", acc, Load("out0", o * 64 + call("sub", Const(63, "int64"), r), "float32")))]),
            Store("out0", o * 64, acc)),
        "an argmax keeping the last of equal values": row(
            Local(best, Const(float("-inf"), "float32")), Local(best_at, Const(0, "int64")),
            loop("r", 64, [If(call("ge", x, best), (Assign(best, x), Assign(best_at, r)))]),
            Store("out0", o, call("cast", best_at, dtype="float32"))),
        "an accumulation into overlapping columns": (
            loop("r", 8, [loop("i", 4, [loop("j", 4, [
                Store("out0", i + j, call("add", Load("out0", i + j, "float32"),
                                          Load("in0", r * 16 + i * 4 + j, "float32")))])])]),),
    }
    return {what: Kernel("k", buffers, body) for what, body in bodies.items()}


def test_folds_that_cannot_be_reordered_stay_serial():
    kernels = _not_reorderable()
    for what, kernel in kernels.items():
        rendered = render(kernel)
        assert not any(l.barriers for l in rendered.launches), what
        assert "KC_SYNC" not in rendered.source, what
    # the same loops with a fold that may be reordered: a block reduction
    (row,) = kernels["a fold by subtraction"].body
    local, fold, store = row.body
    (assign,) = fold.body
    added = dataclasses.replace(fold, body=(Assign(assign.var, call("add", *assign.value.args)),))
    summed = dataclasses.replace(kernels["a fold by subtraction"],
                                 body=(dataclasses.replace(row, body=(local, added, store)),))
    assert [l.barriers for l in render(summed).launches] == [True]


# ---- removing a barrier or a guard is caught --------------------------------------------------------

def mutation_cases():
    """Block reductions and softmaxes whose barriers and guards each matter: rows, columns in
    tiles with threads past the last column, an argmax pair, every softmax pass."""
    rng = np.random.default_rng(5)
    x = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    cases = [op_case("reduce", "sum_rows", "sum", [x(3, 257)], {"axes": (1,), "keepdims": False}),
             op_case("reduce", "max_rows", "max", [specials_in_rows(x(4, 100))], {"axes": (1,), "keepdims": False}),
             op_case("reduce", "sum_columns", "sum", [x(70, 37)], {"axes": (0,), "keepdims": False}),
             op_case("reduce", "max_middle", "max", [x(2, 40, 5)], {"axes": (1,), "keepdims": False}),
             op_case("reduce", "argmax", "argmax", [np.round(x(3, 90))], {"axis": 1}),
             op_case("reduce", "argmin_columns", "argmin", [np.round(x(50, 3))], {"axis": 0})]
    for op in SOFTMAX_FAMILY:
        cases.append(op_case("reduce", op, op, [x(3, 77) * 4] + ([x(3, 77)] if op.endswith("_grad") else []),
                             {"axis": -1}))
    return cases


def mutations(kernel):
    """(what, CudaKernel) for ``kernel`` with each KC_SYNC and each KC_GUARD removed in turn
    (a guard becomes always true), renamed so that all can share a library."""
    source = kernel.source
    spots = [(m, ";") for m in re.finditer(r"KC_SYNC;", source)]
    spots += [(m, "(true || ") for m in re.finditer(r"KC_GUARD\(", source)]
    out = []
    for k, (m, replacement) in enumerate(sorted(spots, key=lambda s: s[0].start())):
        name = f"{kernel.name}_m{k}"
        line = source.count("\n", 0, m.start())
        what = f"{kernel.name} line {line + 1}: {source.splitlines()[line].strip()}"
        mutated = (source[:m.start()] + replacement + source[m.end():]).replace(kernel.name, name)
        launches = tuple(dataclasses.replace(l, kernel=l.kernel.replace(kernel.name, name)) for l in kernel.launches)
        out.append((what, CudaKernel(name, mutated, launches, kernel.buffers)))
    return out


PAD = 64  # elements past each buffer: a guard removed reads and writes there, not past the array


def verdict(p, nid, kernel, library):
    """How the in-process checks catch ``kernel`` (node ``nid``'s kernel or a mutant): 'race',
    'wrong result', 'write past the output', or None."""
    _, _, values = run_reference(p.graph, p.case.feeds, keep_all=True)
    want = np.asarray(values[nid])
    out = np.full(want.size + PAD, 7, want.dtype)
    ins = []
    for u, b in zip(operands(p.graph, nid), kernel.buffers[1:]):
        fill = np.nan if np.dtype(b.dtype).kind == "f" else 7
        ins.append(np.concatenate([np.asarray(values[u], b.dtype).reshape(-1), np.full(PAD, fill, b.dtype)]))
    try:
        toolchain.emulate(library, kernel, [out] + ins)
    except toolchain.SharedMemoryRace:
        return "race"
    got = out[:want.size].reshape(want.shape)
    try:
        if want.dtype.kind == "f":
            assert_close32(got, want)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        else:
            np.testing.assert_array_equal(got, want)
    except AssertionError:
        return "wrong result"
    return "write past the output" if (out[want.size:] != 7).any() else None


SANITIZED_MUTANT = """
import sys
from tests.cuda import test_reduce_cuda as t
t.run_mutant_sanitized(sys.argv[1], int(sys.argv[2]))
print("clean")
"""


def run_mutant_sanitized(case_id, mutation):
    """(In a process with the sanitizer runtime) run mutation ``mutation`` (-1: none) of
    ``case_id``'s kernel, built with ASan and UBSan (one library for the kernel and all its
    mutations), on buffers of exactly its sizes."""
    from tests.cuda.test_render_cuda import run_node
    (p,) = prepare([c for c in mutation_cases() if c.id == case_id], "z")
    (nid, kernel), = p.kernels.items()
    variants = [kernel] + [mutant for _, mutant in mutations(kernel)]
    p.kernels[nid] = variants[mutation + 1]
    p.library = toolchain.build_emulated(module_source(variants), sanitize=True)
    _, _, values = run_reference(p.graph, p.case.feeds, keep_all=True)
    run_node(p, nid, values)


def sanitized(case_id, mutation):
    return run_sanitized_script(SANITIZED_MUTANT, case_id, mutation)


@needs_cxx
def test_removing_any_barrier_or_guard_of_a_block_reduction_is_caught():
    prepared = prepare(mutation_cases(), "m")
    variants = []     # (prepared, node, what, kernel); what None: the kernel as rendered
    for p in prepared:
        (nid, kernel), = p.kernels.items()
        assert any(l.barriers for l in kernel.launches), p.case.id
        variants.append((p, nid, None, kernel))
        variants += [(p, nid, what, mutant) for what, mutant in mutations(kernel)]
    library = toolchain.build_emulated(module_source([v[3] for v in variants]))
    caught, missed = {}, []
    for p, nid, what, kernel in variants:
        how = verdict(p, nid, kernel, library)
        if what is None:
            assert how is None, f"{p.case.id} as rendered: {how}"
        elif how is None:
            missed.append((p, what))
        else:
            caught[what] = how
    for p, what in missed:  # guards whose removal only reads out of bounds: AddressSanitizer sees it
        (kernel,) = p.kernels.values()
        index = [w for w, _ in mutations(kernel)].index(what)
        run = sanitized(p.case.id, index)
        assert run.returncode != 0 and "AddressSanitizer" in run.stderr, f"not caught: {what}\n{run.stderr[-2000:]}"
        caught[what] = "AddressSanitizer"
    assert len(caught) == len(variants) - len(prepared)
    assert sum("KC_SYNC" in what for what in caught) >= 2 * len(prepared)   # before and inside each tree
    assert sum("KC_GUARD" in what for what in caught) >= len(prepared)       # at least the tree's
    assert "AddressSanitizer" in caught.values() and "race" in caught.values()
    # the one rendered kernel that ASan had to check runs clean under it
    column = next(p for p in prepared if p.case.id == "sum_columns")
    run = sanitized(column.case.id, -1)
    assert run.returncode == 0 and "clean" in run.stdout, run.stderr[-2000:]


# ---- compile checks -------------------------------------------------------------------------------

@needs_toolkit
def test_every_block_reduction_compiles_for_sm80_and_sm90_without_spills():
    kernels = [k for p in prepare([c for c, _ in long_row_cases()] + mutation_cases(), "c")
               for k in p.kernels.values()]
    report = toolchain.compile_check(module_source(kernels))
    assert report.problems() == []
    functions = {launch.kernel for k in kernels for launch in k.launches if launch.barriers}
    assert len(functions) > 40
    for arch in toolchain.SASS_ARCHS:
        assert functions <= set(report.resources[arch])
        assert all(report.resources[arch][f].shared_bytes > 0 for f in functions if "argm" in f), arch


# ---- optimizer updates --------------------------------------------------------------------------

def optimizers():
    O = keras.optimizers
    return {"sgd": O.SGD(0.1), "momentum": O.SGD(0.1, momentum=0.9),
            "nesterov": O.SGD(0.1, momentum=0.9, nesterov=True), "adam": O.Adam(), "amsgrad": O.Adam(amsgrad=True),
            "adamw": O.AdamW(), "adamax": O.Adamax(), "nadam": O.Nadam(), "adagrad": O.Adagrad(),
            "adadelta": O.Adadelta(), "rmsprop": O.RMSprop(), "rmsprop_centred": O.RMSprop(momentum=0.9, centered=True),
            "clipnorm": O.SGD(0.1, clipnorm=1.0), "clipvalue": O.Adam(clipvalue=0.5),
            "global_clipnorm": O.Adam(global_clipnorm=1.0)}


CONTRACTIONS = {"matmul", "fused_contraction"}


def training_step(optimizer):
    """The scheduled training step of a small MLP with ``optimizer``, and feeds for it."""
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=optimizer, loss="mse")
    stages = front_stages(model, training=True, batch_size=2)
    g = simplify(next(reversed(stages.values())))
    g = fuse_epilogues(fuse_elementwise(g), heads=get_backend("cpu").capabilities().epilogue_heads)
    g = schedule_kernels(plan_memory(g))
    feeds = {g.nodes[n]["attrs"]["name"]: normal(*g.nodes[n]["type"].shape) for n in g.graph["inputs"]}
    return g, feeds


@needs_cxx
def test_every_optimizer_update_is_described_and_its_kernels_equal_the_reference():
    prepared, unique = [], {}
    for name, optimizer in optimizers().items():
        g, feeds = training_step(optimizer)
        plain = [g.nodes[n]["op"] for n in g.graph["plan"]["order"]
                 if "kernel" not in g.nodes[n] and g.nodes[n]["op"] not in ("input", "variable", "constant")]
        assert set(plain) <= CONTRACTIONS, f"{name}: not described: {sorted(set(plain) - CONTRACTIONS)}"
        kernels = {}
        for nid in described(g):
            k = g.nodes[nid]["kernel"]
            key = "o" + hashlib.sha256(repr((k.buffers, k.body)).encode()).hexdigest()[:16]
            if key not in unique:
                unique[key] = render(k, name=key)
            kernels[nid] = unique[key]
        prepared.append(Prepared(Case("optimizer", name, g, feeds), g, kernels))
    source = module_source(list(unique.values()))
    if HAS_TOOLKIT:
        assert toolchain.compile_check(source).problems() == []
    library = toolchain.build_emulated(source)
    for p in prepared:
        p.library = library
        check_case(p)
