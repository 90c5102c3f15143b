"""The CUDA templates of the recurrent ops (kcompiler/codegen/cuda/rnn.py), checked without a GPU:

- every kernel of every case compiles with nvcc for compute_80 and assembles with ptxas for
  sm_80 and sm_90 with no spills, no local memory, within 48 KiB of shared memory (one .cu);
- the same source, emulated on the CPU (one g++ library for the module), equals the numpy
  references of ``simple_rnn``, ``lstm``, ``gru`` (reset_after both ways) and of their
  ``_grad`` ops, every output of the tuple, on small and odd shapes: batch 1, 3, 5 (a last
  block with fewer rows), time 1 and 7, 5 features, units 1, 4, 13 and 64; go_backwards,
  masks (carrying the previous output or writing zeros), dropout masks shared by the gates
  or one per gate, output in time order, other activations, the cotangents of a layer
  returning the whole sequence or only the final state; the scratch buffer starts as NaN,
  so a kernel reading scratch it did not write fails;
- the shared-memory fallbacks (states and the recurrent kernel read from global memory,
  more elements than threads) run in cases of their own (a zero shared budget, 32 threads);
- the emulation's race detector finds every barrier of the recurrences and of a gradient
  GEMM removed in turn (SharedMemoryRace); AddressSanitizer finds the element guard of the
  recurrence weakened to the block's nominal rows; a sanitized run (ASan + UBSan, in a
  subprocess) of the fallback and per-gate-mask cases is clean.

Skipped where nvcc/ptxas or g++ are missing."""
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from kcompiler.codegen.cuda import rnn as cuda_rnn
from kcompiler.codegen.cuda import rnn_backward, toolchain  # noqa: F401  (registers the _grad templates)
from kcompiler.codegen.cuda.render import TemplateContext, module_source, render_node
from kcompiler.errors import UnsupportedError
from kcompiler.ir.registry import get_op
from kcompiler.ir.types import TensorType
from kcompiler.ops.rnn import GATES
from kcompiler.schedule.kernel import node_buffers
from tests.cuda.sanitized import run_sanitized_script
from op_check import assert_close32
from tests.codegen.test_rnn_kernels import attrs_for, operands
from tests.cuda.test_render_cuda import HAS_CXX, HAS_TOOLKIT, needs_cxx, needs_toolkit

VARIANTS = {"simple_rnn": ("simple_rnn", True), "lstm": ("lstm", True), "gru": ("gru", True),
            "gru_nra": ("gru", False)}     # name -> (op, reset_after)

# id -> (shape and attrs, plan options). Every variant runs each, forward and gradient.
SETTINGS = {
    "b3_t7_u13_other_activations": (dict(batch=3, time=7, units=13, activation="relu",
                                         recurrent_activation="hard_sigmoid"), {}),
    "b1_t1_u1": (dict(batch=1, time=1, units=1), {}),
    "b3_t7_u4_masked_backwards_per_gate_masks": (dict(batch=3, time=7, units=4, masked=True, go_backwards=True,
                                                      dropout="gates"), {}),
    "b3_t7_u64_per_gate_masks_time_order": (dict(batch=3, time=7, units=64, masked=True, dropout="gates",
                                                 go_backwards=True, output_in_time_order=True), {}),
    "b5_t3_u13_shared_masks_zero_output": (dict(batch=5, time=3, units=13, masked=True, dropout=1,
                                                zero_output_for_mask=True, last_only=True), {}),
    "b3_t7_u64_global_32_threads": (dict(batch=3, time=7, units=64, masked=True, dropout="gates", go_backwards=True),
                                    dict(shared_budget=0, max_threads=32)),
}


@dataclass
class Case:
    id: str
    ctx: TemplateContext
    inputs: list
    expected: tuple
    options: dict
    kernel: object = field(default=None, repr=False)

    @property
    def grad(self):
        return self.ctx.node["op"].endswith("_grad")


def make_case(variant, setting, grad, name):
    op, reset_after = VARIANTS[variant]
    shape, options = SETTINGS[setting]
    shape = dict(shape)
    batch, time, units = shape.pop("batch"), shape.pop("time"), shape.pop("units")
    masked, last_only = shape.pop("masked", False), shape.pop("last_only", False)
    dropout = shape.pop("dropout", 0)
    dropout = GATES[op] if dropout == "gates" else dropout
    if op == "simple_rnn":
        shape.pop("recurrent_activation", None)
    seed = list(SETTINGS).index(setting)
    xs = operands(op, batch=batch, time=time, features=5, units=units, reset_after=reset_after, masked=masked,
                  dropout=dropout, seed=seed)
    # weights scaled as Glorot's initialisation scales them: with unit-variance weights and 64
    # units the float32 reference itself is 1e-3 away from float64, past the tolerance
    xs[1], xs[2] = xs[1] / np.float32(np.sqrt(5)), xs[2] / np.float32(np.sqrt(units))
    attrs = attrs_for(op, reset_after, masked, dropout, units=units, **shape)
    in_types = [TensorType(a.shape, str(a.dtype)) for a in xs]
    out_types = get_op(op).shape_rule(in_types, attrs)
    if grad:
        rng = np.random.default_rng(seed + 100)
        cotangents = [rng.standard_normal(t.shape).astype(np.float32) for t in out_types]
        if last_only:  # a layer returning only the final state: no cotangent on the sequence
            cotangents[0][:] = 0
        xs, in_types, op = xs + cotangents, in_types + list(out_types), op + "_grad"
        out_types = get_op(op).shape_rule(in_types, attrs)
    node = {"op": op, "attrs": attrs, "type": tuple(out_types)}
    ctx = TemplateContext(name, node, in_types, list(out_types), {}, node_buffers(node, in_types))
    return Case(f"{variant}-{setting}-{'grad' if grad else 'forward'}", ctx, xs,
                get_op(op).reference(*xs, **attrs), options)


def render(case):
    """The case's CudaKernel from its registered template: through render_node with the
    default plan, called with the case's plan options otherwise."""
    if case.options:
        return get_op(case.ctx.node["op"]).lowerings["cuda"](case.ctx, **case.options)
    return render_node(case.ctx.node, case.ctx.in_types, {}, case.ctx.name)


CASES = [make_case(v, s, g, f"k{k}") for k, (v, s, g) in
         enumerate((v, s, g) for v in VARIANTS for s in SETTINGS for g in (False, True))]
BY_ID = {c.id: c for c in CASES}


def run(library, case, kernel=None):
    """Emulate the case's kernel on its inputs (outputs start as 7s, the scratch as NaN); the
    outputs."""
    kernel = kernel or case.kernel
    outs = [np.full(t.shape, 7, np.float32) for t in case.ctx.out_types]
    scratch = np.full(kernel.buffers[-1].size, np.nan, np.float32)
    error = toolchain.emulate(library, kernel, outs + [np.ascontiguousarray(x) for x in case.inputs] + [scratch])
    assert int(error["status"]) == 0, f"{case.id}: error record {error}"
    return outs


def check(library, case):
    got = run(library, case)
    assert len(got) == len(case.expected)
    for k, (a, e) in enumerate(zip(got, case.expected)):
        assert_close32(a, e, f"{case.id} output {k}")


@pytest.fixture(scope="module")
def built():
    """Every case rendered into one source; its compile report and its emulation library, made
    at the same time (None where the tool is missing)."""
    for case in CASES:
        case.kernel = render(case)
    source = module_source([c.kernel for c in CASES])
    with ThreadPoolExecutor(2) as pool:
        report = pool.submit(toolchain.compile_check, source) if HAS_TOOLKIT else None
        library = pool.submit(toolchain.build_emulated, source) if HAS_CXX else None
        return report and report.result(), library and library.result()


@pytest.fixture(scope="module")
def library(built):
    if built[1] is None:
        pytest.skip("no g++ for the CUDA emulation")
    return built[1]


# ---- compile checks ----------------------------------------------------------------------------

@needs_toolkit
def test_every_recurrent_kernel_compiles_for_sm80_and_sm90_without_spills(built):
    report = built[0]
    functions = {launch.kernel for c in CASES for launch in c.kernel.launches}
    for arch in toolchain.SASS_ARCHS:
        assert set(report.resources[arch]) == functions, arch
        assert max(r.shared_bytes for r in report.resources[arch].values()) <= 48 * 1024
    assert report.problems() == []


# ---- emulation against the references --------------------------------------------------------

@needs_cxx
@pytest.mark.parametrize("case_id", sorted(BY_ID))
def test_emulated_recurrent_kernel_equals_the_reference(case_id, library):
    check(library, BY_ID[case_id])


def test_the_cases_cover_the_layouts():
    """The settings reach what the plan decides from shapes: several blocks, a last block with
    fewer rows, more elements than threads, states and the recurrent kernel in shared or in
    global memory, in the forward and the backward recurrence."""
    plans = [cuda_rnn.plan(c.ctx.node["op"].removesuffix("_grad"), c.ctx.in_types, c.ctx.attrs, c.grad, **c.options)
             for c in CASES]
    assert any(p.blocks > 1 and p.rows > 1 and p.B % p.rows for p in plans)
    assert any(p.rows * p.U > p.threads for p in plans)
    for key in ("forward_states_shared", "forward_weights_shared", "backward_states_shared",
                "backward_weights_shared"):
        assert {getattr(p, key) for p in plans if p.grad or key.startswith("forward")} == {True, False}, key
    assert {(p.op, p.D) for p in plans if p.D} >= {("lstm", 1), ("lstm", 4), ("gru", 3)}


def test_float64_and_empty_sequences_are_refused_with_clear_errors():
    xs = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in operands("lstm", units=2)]
    with pytest.raises(UnsupportedError, match="lstm on CUDA: float32 only"):
        cuda_rnn.plan("lstm", [TensorType(x.shape, str(x.dtype)) for x in xs], {"units": 2}, False)
    xs = operands("gru", time=0, units=2)
    with pytest.raises(UnsupportedError, match=r"gru_grad on CUDA: x of shape \(2, 0, 3\) is empty"):
        cuda_rnn.plan("gru", [TensorType(x.shape, str(x.dtype)) for x in xs], {"units": 2}, True)


# ---- the checks can fail -----------------------------------------------------------------------

# every kind of region, everything in shared memory, per-gate k segments in dx
MUTATED = "gru_nra-b3_t7_u4_masked_backwards_per_gate_masks-grad"


def mutant(kernel, suffix, k, edit):
    """(the text of function ``<name>_<suffix>`` changed by ``edit(text)`` and renamed
    ``<name>_<suffix>_m<k>``, with its emulation entry; the kernel with that launch running
    it). The unchanged functions stay the original's."""
    function = f"{kernel.name}_{suffix}"
    start = kernel.source.index(f'extern "C" __global__ void {function}(')
    end = kernel.source.index("#endif", start) + len("#endif\n")
    text = edit(kernel.source[start:end])
    text = re.sub(rf"\b{function}(?=\(|,|_emulate)", f"{function}_m{k}", text)
    launches = tuple(replace(launch, kernel=f"{function}_m{k}") if launch.kernel == function else launch
                     for launch in kernel.launches)
    return text, replace(kernel, launches=launches)


def without_barrier(n):
    """An edit removing the n-th KC_SYNC of a function."""
    def edit(text):
        position = -1
        for _ in range(n + 1):
            position = text.index("KC_SYNC;", position + 1)
        return text[:position] + "/* barrier removed */" + text[position + len("KC_SYNC;"):]
    return edit


@needs_cxx
def test_removing_any_barrier_of_the_recurrences_or_a_gemm_is_a_race():
    case = BY_ID[MUTATED]
    kernel = render(case)
    sites = []
    for suffix in ("record", "backward", "dx", "dkernel"):
        start = kernel.source.index(f"void {kernel.name}_{suffix}(")
        body = kernel.source[start:kernel.source.index("\n}\n", start)]
        sites += [(suffix, n) for n in range(body.count("KC_SYNC;"))]
    assert len(sites) == 3 + 3 + 2 + 2  # record: init, z and r, step; backward: 3 per step; GEMMs: 2
    mutants = [mutant(kernel, suffix, k, without_barrier(n)) for k, (suffix, n) in enumerate(sites)]
    library = toolchain.build_emulated(module_source([kernel]) + "".join(text for text, _ in mutants))
    run(library, case, kernel)  # the original does not race
    for (suffix, _), (_, changed) in zip(sites, mutants):
        with pytest.raises(toolchain.SharedMemoryRace, match=f"_{suffix}_m"):
            run(library, case, changed)


# The sanitized runs: one library (built by the first subprocess, loaded from the cache by the
# second) with the fallbacks, per-gate masks and a last block with fewer rows, and that last
# case's forward recurrence with its element guard weakened to the block's nominal rows.
SANITIZED = ("gru_nra-b3_t7_u64_global_32_threads-grad", "lstm-b3_t7_u64_per_gate_masks_time_order-grad",
             "lstm-b5_t3_u13_shared_masks_zero_output-forward")


def sanitized_library():
    cases = [BY_ID[i] for i in SANITIZED]
    kernels = [render(c) for c in cases]
    p = cuda_rnn.plan("lstm", cases[-1].ctx.in_types, cases[-1].ctx.attrs, False)
    assert p.B % p.rows  # the last block has fewer rows than the others
    text, unguarded = mutant(kernels[-1], "forward", 0,
                             lambda text: text.replace("KC_GUARD(e < n)", f"(e < {p.rows * p.U})"))
    library = toolchain.build_emulated(module_source(kernels) + text, sanitize=True)
    return library, cases, kernels, unguarded


SANITIZED_RUN = """
import sys
from tests.cuda import test_rnn_cuda as t
library, cases, kernels, unguarded = t.sanitized_library()
if sys.argv[1] == "unguarded":
    t.run(library, cases[-1], unguarded)
else:
    for c, k in zip(cases, kernels):
        c.kernel = k
        t.check(library, c)
print("clean")
"""


def run_sanitized(mode):
    return run_sanitized_script(SANITIZED_RUN, mode)


@needs_cxx
def test_address_sanitizer_catches_the_element_guard_of_the_recurrence_weakened():
    out = run_sanitized("unguarded")
    assert out.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in out.stderr, out.stderr[-3000:]


@needs_cxx
def test_sanitized_emulation_of_the_fallbacks_and_per_gate_masks_is_clean():
    out = run_sanitized("clean")
    assert out.returncode == 0 and "clean" in out.stdout, (out.stdout + out.stderr)[-3000:]
