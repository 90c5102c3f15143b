"""The CUDA templates of conv2d and its two gradients (kcompiler/codegen/cuda/conv.py), checked
without a GPU:

- every template (the three ops over the geometries below, and fused_contraction nodes with a
  conv2d or conv2d_backward_input head that the fusion pass made) compiles with nvcc for
  compute_80 and assembles with ptxas for sm_80 and sm_90 without spills or local memory;
- the same source, emulated on the CPU in its barrier-split form, equals the numpy reference
  (float32 tolerances) on small, odd shapes: 1x1, 3x3 and 5x3 kernels, strides 1 and 2 (and
  a dilation that leaves a stride phase without taps), 'valid' and 'same' padding, dilation 2,
  1/3/5 channels and more than 32 (the wide tiling), batches of 1 and 3, and a kernel
  gradient long enough to split its reduction; every output element is written, nothing after
  the output, and no thread races another on shared memory (the emulation raises
  SharedMemoryRace);
- in a subprocess under AddressSanitizer and UBSan, a selection of them (SANITIZED) runs
  clean, and the forward template with any one of its barriers or index guards removed is
  caught (a race, a wrong value or an out-of-bounds access); each mutant runs in a forked
  child, since a sanitizer report ends the process.

One emulation library for the module (and one sanitized one in the subprocess)."""
import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import pytest

from kcompiler.codegen.cuda import conv as cuda_conv  # registers the templates
from kcompiler.codegen.cuda import toolchain
from kcompiler.codegen.cuda.render import TemplateContext, module_source, render_node
from kcompiler.errors import UnsupportedError
from kcompiler.ir.graph import GraphBuilder, operands
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.ops import conv_reference
from kcompiler.passes.fusion import fuse_elementwise, fuse_epilogues
from kcompiler.passes.memory_plan import plan_memory
from kcompiler.passes.schedule import schedule_kernels
from kcompiler.passes.simplify import simplify
from kcompiler.schedule.kernel import node_buffers
from tests.cuda.sanitized import run_sanitized_script
from op_check import assert_close32, build_op_graph
from tests.cuda.test_render_cuda import needs_cxx, needs_toolkit

RNG = np.random.default_rng(5)
SENTINEL = 7.0      # what the output holds before a kernel runs, and after its end
TAIL = 64           # sentinel elements after each output

# (id, x shape NHWC, kernel shape HWIO, attrs)
GEOMETRIES = [
    ("1x1", (1, 5, 7, 3), (1, 1, 3, 5), dict(strides=(1, 1), padding="valid")),
    ("3x3_same_b3", (3, 7, 6, 5), (3, 3, 5, 3), dict(strides=(1, 1), padding="same")),
    ("5x3_stride2_same_c1", (3, 9, 8, 1), (5, 3, 1, 5), dict(strides=(2, 2), padding="same")),
    ("3x3_dilation2_same", (1, 11, 10, 3), (3, 3, 3, 4), dict(dilation=(2, 2), padding="same")),
    ("1x1_stride2_same", (2, 8, 9, 3), (1, 1, 3, 2), dict(strides=(2, 2), padding="same")),
    ("3x3_stride2_dilation2_valid", (3, 10, 9, 5), (3, 3, 5, 4), dict(strides=(2, 1), dilation=(2, 1))),
    ("3x3_stride2_dilation3_valid", (2, 11, 9, 3), (3, 3, 3, 2), dict(strides=(2, 2), dilation=(3, 1))),
    ("3x3_stride2_valid_wide", (1, 7, 6, 33), (3, 3, 33, 37), dict(strides=(2, 2), padding="valid")),
    ("3x3_split_reduction", (3, 12, 11, 3), (3, 3, 3, 5), dict(strides=(1, 1), padding="valid")),
]
SPLIT = "conv2d_backward_kernel/3x3_split_reduction"
# what the sanitized subprocess runs besides the mutants: stride phases, padding on every side,
# a split reduction, both fused heads
SANITIZED = ("conv2d/5x3_stride2_same_c1", "conv2d_backward_input/5x3_stride2_same_c1",
             "conv2d_backward_input/1x1_stride2_same", SPLIT, "fused/conv2d", "fused/conv2d_backward_input",
             "conv2d/mutation")
CONV_HEADS = frozenset({"conv2d", "conv2d_backward_input"})


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@dataclass
class Case:
    id: str
    kernel: object          # CudaKernel
    inputs: list
    expected: np.ndarray


def op_case(name, op, geometry_id, inputs, attrs):
    b, ids, (nid,) = build_op_graph(op, inputs, attrs)
    types = [b.g.nodes[u]["type"] for u in ids]
    kernel = render_node(b.g.nodes[nid], types, {}, name, nid)
    return Case(f"{op}/{geometry_id}", kernel, inputs, getattr(conv_reference, op)(*inputs, **attrs))


def op_cases():
    cases = []
    for geometry_id, x_shape, kernel_shape, attrs in GEOMETRIES:
        x, kernel = normal(*x_shape), normal(*kernel_shape)
        dy = normal(*conv_reference.conv2d(x, kernel, **attrs).shape)
        k = len(cases)
        cases += [
            op_case(f"forward{k}", "conv2d", geometry_id, [x, kernel], attrs),
            op_case(f"input_grad{k}", "conv2d_backward_input", geometry_id, [dy, kernel],
                    dict(attrs, input_hw=x_shape[1:3])),
            op_case(f"kernel_grad{k}", "conv2d_backward_kernel", geometry_id, [x, dy],
                    dict(attrs, kernel_shape=kernel_shape))]
    return cases


def mutation_case():
    """conv2d with every kind of index guard ('same' padding on both sides, a partial slice of
    the reduction, fewer rows and columns than a tile) and a NaN that only taps past the
    reduction's end would carry into the result."""
    x, kernel = normal(2, 7, 6, 3), normal(3, 3, 3, 5)
    x[1, 3, 2, 1] = np.nan
    return op_case("mutation", "conv2d", "mutation", [x, kernel], dict(padding="same"))


def fused_graph(head):
    """head -> element-wise consumer: conv2d + bias + relu, or conv2d_backward_input (stride 2) +
    relu_grad of an activation (the backward pass of the layer before)."""
    b = GraphBuilder(name=f"fused_{head}")
    kernel = b.input("kernel", TensorType((3, 3, 5, 4), "float32"))
    if head == "conv2d":
        x = b.input("x", TensorType((3, 7, 6, 5), "float32"))
        bias = b.input("bias", TensorType((4,), "float32"))
        out = b.op("relu", b.op("bias_add", b.op("conv2d", x, kernel, padding="same"), bias))
        feeds = {"x": normal(3, 7, 6, 5), "kernel": normal(3, 3, 5, 4), "bias": normal(4)}
    else:
        dy = b.input("dy", TensorType((3, 4, 3, 4), "float32"))
        h = b.input("h", TensorType((3, 7, 6, 5), "float32"))
        dx = b.op("conv2d_backward_input", dy, kernel, input_hw=(7, 6), strides=(2, 2), padding="same")
        out = b.op("relu_grad", h, dx)
        feeds = {"dy": normal(3, 4, 3, 4), "kernel": normal(3, 3, 5, 4), "h": np.maximum(normal(3, 7, 6, 5), 0)}
    b.g.graph["outputs"] = [out]
    return b.g, feeds


def fused_case(k, head):
    """The fused_contraction node the fusion pass makes of fused_graph(head), through the
    template FUSED_CONV_HEADS gives for its head, on the reference's values of its operands."""
    g, feeds = fused_graph(head)
    g = schedule_kernels(plan_memory(fuse_epilogues(fuse_elementwise(simplify(g)), heads=CONV_HEADS)))
    (nid,) = [n for n in g.graph["plan"]["order"] if g.nodes[n]["op"] == "fused_contraction"]
    node = g.nodes[nid]
    assert node["attrs"]["head"] == head
    _, _, values = run_reference(g, feeds, keep_all=True)
    in_types = [g.nodes[u]["type"] for u in operands(g, nid)]
    ctx = TemplateContext(f"fused{k}", node, in_types, [node["type"]], {}, node_buffers(node, in_types), nid)
    kernel = cuda_conv.FUSED_CONV_HEADS[head](ctx)
    return Case(f"fused/{head}", kernel, [values[u] for u in operands(g, nid)], values[nid])


def all_cases():
    cases = op_cases() + [fused_case(k, head) for k, head in enumerate(sorted(CONV_HEADS))] + [mutation_case()]
    return {c.id: c for c in cases}


def renamed(kernel, name):
    """``kernel`` renamed ``name``: its functions (named after the kernel) and their launches."""
    launches = tuple(dataclasses.replace(launch, kernel=launch.kernel.replace(kernel.name, name))
                     for launch in kernel.launches)
    return dataclasses.replace(kernel, name=name, source=kernel.source.replace(kernel.name, name), launches=launches)


def run(library, case):
    """The case's kernel emulated on its inputs: its output (raises SharedMemoryRace on a race);
    asserts that nothing after the output was written."""
    expected = case.expected
    out = np.full(expected.size + TAIL, SENTINEL, np.float32)
    error = toolchain.emulate(library, case.kernel, [out] + [np.ascontiguousarray(a) for a in case.inputs])
    assert int(error["status"]) == 0, f"{case.id}: error {error}"
    np.testing.assert_array_equal(out[expected.size:], SENTINEL, err_msg=f"{case.id}: written after the output")
    return out[:expected.size].reshape(expected.shape)


def check(library, case):
    assert_close32(run(library, case), case.expected, case.id)


# ---- mutants: the forward template with one barrier or one index guard removed ----------------------

@dataclass
class Mutant:
    what: str
    case: Case


def _without_guard(source, start):
    """``source`` with the KC_GUARD(...) at ``start`` replaced by (true)."""
    depth, end = 0, start + len("KC_GUARD")
    for end in range(end, len(source)):
        depth += {"(": 1, ")": -1}.get(source[end], 0)
        if depth == 0:
            break
    return source[:start] + "(true)" + source[end + 1:], source[start:end + 1]


def mutants(case):
    found = []
    source = case.kernel.source
    for k, m in enumerate(re.finditer(r"KC_SYNC;", source)):
        found.append((f"barrier {k}", source[:m.start()] + ";" + source[m.end():]))
    for k, m in enumerate(re.finditer(r"KC_GUARD\(", source)):
        mutated, guard = _without_guard(source, m.start())
        found.append((f"guard {k} {guard}", mutated))
    out = []
    for k, (what, mutated) in enumerate(found):
        kernel = renamed(dataclasses.replace(case.kernel, source=mutated), f"mutant{k}")
        out.append(Mutant(what, dataclasses.replace(case, id=f"{case.id} without {what}", kernel=kernel)))
    return out


# how a forked child running a mutant ends (a sanitizer report exits with 1)
CAUGHT_BY = {0: "missed", 1: "sanitizer", 3: "race", 4: "wrong values", 5: "error"}


def mutant_status(library, mutant):
    try:
        check(library, mutant.case)
    except toolchain.SharedMemoryRace:
        return 3
    except AssertionError:
        return 4
    except Exception:  # noqa: BLE001 - reported as "error"
        return 5
    return 0


# ---- the checks ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cases():
    return all_cases()


@pytest.fixture(scope="module")
def library(cases):
    return toolchain.build_emulated(module_source([c.kernel for c in cases.values()]))


# compiled, not emulated: the layers of W2 and of the CIFAR seed model at batch 128, and one
# with more than 2^30 elements (64-bit indices)
MODEL_GEOMETRIES = [
    ("mnist_conv1", (128, 28, 28, 1), (3, 3, 1, 32), {}),
    ("mnist_conv2", (128, 13, 13, 32), (3, 3, 32, 64), {}),
    ("cifar_conv2", (128, 30, 30, 32), (3, 3, 32, 64), dict(strides=(2, 2))),
    ("huge", (64, 512, 512, 64), (3, 3, 64, 64), dict(padding="same")),
]


def model_kernels():
    kernels = []
    for geometry_id, x_shape, kernel_shape, attrs in MODEL_GEOMETRIES:
        x, kernel = (np.broadcast_to(np.float32(0), shape) for shape in (x_shape, kernel_shape))  # no memory
        b, _, (nid,) = build_op_graph("conv2d", (x, kernel), attrs)
        dy = np.broadcast_to(np.float32(0), b.shape(nid))
        for op, inputs, op_attrs in [("conv2d", (x, kernel), attrs),
                                     ("conv2d_backward_input", (dy, kernel), dict(attrs, input_hw=x_shape[1:3])),
                                     ("conv2d_backward_kernel", (x, dy), dict(attrs, kernel_shape=kernel_shape))]:
            b, ids, (nid,) = build_op_graph(op, inputs, op_attrs)
            kernels.append(render_node(b.g.nodes[nid], [b.g.nodes[u]["type"] for u in ids], {},
                                       f"{geometry_id}_{op}", nid))
    return kernels


@needs_toolkit
def test_every_template_compiles_for_sm80_and_sm90_without_spills(cases):
    kernels = [c.kernel for c in cases.values()] + model_kernels()
    assert sum("long long k0" in k.source for k in kernels) == 3  # the huge layer's
    report = toolchain.compile_check(module_source(kernels))
    functions = {launch.kernel for k in kernels for launch in k.launches}
    for arch in toolchain.SASS_ARCHS:
        assert set(report.resources[arch]) == functions, arch
    assert report.problems() == []


@needs_cxx
def test_emulated_convolutions_equal_the_reference(cases, library):
    for case in cases.values():
        check(library, case)


@needs_cxx
def test_fused_epilogues_are_applied_where_the_product_is_stored(cases, library):
    for head in CONV_HEADS:
        case = cases[f"fused/{head}"]
        assert "_epilogue(KC_MINE(acc)[i][j], col, flat" in case.kernel.source
        check(library, case)


def test_the_kernel_gradient_splits_a_long_reduction_and_adds_the_splits_atomically(cases):
    split = cases[SPLIT].kernel
    zero, gemm = split.launches
    assert zero.extent == 3 * 3 * 3 * 5 and gemm.blocks[2] == 2 and gemm.barriers
    assert "atomicAdd(&out0[flat]" in split.source
    short = cases["conv2d_backward_kernel/3x3_same_b3"].kernel
    assert len(short.launches) == 1 and short.launches[0].blocks[2] == 1 and "atomicAdd" not in short.source


def test_the_input_gradient_runs_one_stride_phase_per_block_layer(cases):
    for geometry_id, _, _, attrs in GEOMETRIES:
        (launch,) = cases[f"conv2d_backward_input/{geometry_id}"].kernel.launches
        strides = attrs.get("strides", (1, 1))
        assert launch.blocks[2] == strides[0] * strides[1], geometry_id


def test_a_float64_convolution_is_refused_with_its_op_named():
    b, ids, (nid,) = build_op_graph("conv2d", [np.zeros((1, 3, 3, 1)), np.zeros((1, 1, 1, 1))], {})
    with pytest.raises(UnsupportedError, match="conv2d: the CUDA template computes float32 only"):
        render_node(b.g.nodes[nid], [b.g.nodes[u]["type"] for u in ids], {}, "f64", nid)


SANITIZED_RUN = """
import os
from kcompiler.codegen.cuda import toolchain
from kcompiler.codegen.cuda.render import module_source
from tests.cuda import test_conv_cuda as t
every = t.all_cases()
cases = [every[id] for id in t.SANITIZED]
mutants = t.mutants(every["conv2d/mutation"])
library = toolchain.build_emulated(module_source([c.kernel for c in cases] + [m.case.kernel for m in mutants]),
                                   sanitize=True)
for case in cases:
    t.check(library, case)
print("clean", flush=True)
for m in mutants:
    pid = os.fork()
    if pid == 0:
        os._exit(t.mutant_status(library, m))
    _, status = os.waitpid(pid, 0)
    print(f"mutant {os.waitstatus_to_exitcode(status)} {m.what}", flush=True)
"""


@pytest.fixture(scope="module")
def sanitized():
    """The sanitized subprocess's output: 'clean' after every case, then one line per mutant."""
    return run_sanitized_script(SANITIZED_RUN, timeout=600)


@needs_cxx
def test_sanitized_emulation_of_every_convolution_is_clean(sanitized):
    assert sanitized.returncode == 0 and "clean" in sanitized.stdout, (sanitized.stdout + sanitized.stderr)[-3000:]


@needs_cxx
def test_removing_any_barrier_or_index_guard_of_the_forward_template_is_caught(sanitized, cases):
    lines = [line.split(" ", 2)[1:] for line in sanitized.stdout.splitlines() if line.startswith("mutant ")]
    source = cases["conv2d/mutation"].kernel.source
    # two barriers; guards: A (row, reduction, four padding sides), B (column, reduction), store (row, column)
    assert (source.count("KC_SYNC;"), source.count("KC_GUARD(")) == (2, 10)
    assert len(lines) == 12, sanitized.stdout
    caught = [(what, CAUGHT_BY.get(int(code), f"exit {code}")) for code, what in lines]
    assert all(how in ("sanitizer", "race", "wrong values") for _, how in caught), caught
    assert all(how == "race" for what, how in caught if what.startswith("barrier")), caught
