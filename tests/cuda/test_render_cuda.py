"""The CUDA renderer of kernel descriptions (kcompiler/codegen/cuda/), checked without a GPU:

- every described kernel of the training programs of W1–W6 and of the seed models compiles
  with nvcc to PTX for compute_80 and assembles with ptxas for sm_80 and sm_90, with no
  spills and no local memory (one .cu per model); the check reports local memory and
  rejects bad source;
- the same CUDA C, built with g++ over the prelude's host definitions and run on the CPU
  (threads one after another), equals the numpy reference for every op family: every
  element-wise op, fused chains with dropout, reductions (softmax, argmax), data movement
  (gather with an out-of-range id, scatter_add with repeated ids), pooling and its gradients,
  on small and odd shapes; each kernel runs on the reference's values of its operands;
- the emulation can fail: an element-wise kernel without its index guard writes past its
  output (a sentinel catches it, and AddressSanitizer in a subprocess);
- a sanitized build (ASan + UBSan, in a subprocess that preloads the runtime) of movement,
  pooling and reduction kernels runs clean.

Skipped where nvcc/ptxas or g++ are missing."""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

from kcompiler.codegen.backend import get_backend
from kcompiler.codegen.cuda import toolchain
from kcompiler.codegen.cuda.render import module_source, render, render_node
from kcompiler.errors import UnsupportedError
from kcompiler.ir.graph import GraphBuilder, inline_constants, operands
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.passes.fusion import fuse_elementwise, fuse_epilogues
from kcompiler.passes.memory_plan import plan_memory
from kcompiler.passes.schedule import schedule_kernels
from kcompiler.passes.simplify import simplify
from kcompiler.pipeline import front_stages
from tests.cuda.sanitized import run_sanitized_script
from op_check import assert_close32, build_op_graph
from tests.schedule.test_elementwise import ELEMENTWISE
from tests.schedule.test_elementwise import cases as elementwise_inputs
from tests.schedule.test_pool import CASES as POOL_CASES
from tests.schedule.test_pool import OPS as POOL_OPS
from tests.schedule.test_pool import op_inputs as pool_inputs

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # references at NaN, inf, log(0)

RNG = np.random.default_rng(11)


def _available(check):
    try:
        check()
        return True
    except UnsupportedError:
        return False


HAS_TOOLKIT = _available(toolchain.toolkit_root)
HAS_CXX = _available(toolchain.compiler)
needs_toolkit = pytest.mark.skipif(not HAS_TOOLKIT, reason="no CUDA toolkit (nvcc, ptxas)")
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no g++ for the CUDA emulation")


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def scheduled(g, fuse):
    """The target-neutral back half of kcompiler/pipeline.py: simplify, fuse, plan, schedule."""
    g = simplify(g)
    if fuse:
        g = fuse_epilogues(fuse_elementwise(g), heads=frozenset())
    return schedule_kernels(plan_memory(g))


def described(g):
    return [nid for nid in g.graph["plan"]["order"] if "kernel" in g.nodes[nid]]


# ---- (a) nvcc + ptxas over the kernels of the test models -------------------------------------------

def _workloads():
    from benchmarks.workloads import WORKLOADS
    return {name: (w.build, False) for name, w in sorted(WORKLOADS.items())}


def _seed_models():
    from examples.seed_models import ALL

    def build(make):
        model = make()
        model.compile(optimizer="adam", loss="mse")
        return model
    return {make.__name__: (lambda make=make: build(make), True) for make in ALL}


MODELS = {**_workloads(), **_seed_models()}   # name -> (build, labels shaped like the predictions)


def training_kernels(model, labels_like_predictions, batch_size=2, length=7):
    """Every kernel of ``model``'s training step on the CUDA backend, rendered: descriptions and
    contraction templates, with the backend's fused epilogues (symbolic lengths set to
    ``length``)."""
    def fixed(shape):
        return (batch_size,) + tuple(d or length for d in shape[1:])
    shapes = {name: fixed(t.shape) for name, t in model.input_types()}
    label_type, training = None, True
    if labels_like_predictions:
        shapes["y"] = fixed(model.output_shape)
        label_type = TensorType(shapes["y"], "float32")
        # kcompiler weighs per-sample losses of rank 1 only: a model predicting images or
        # sequences gets its inference program
        training = len(model.output_shape) <= 2
    stages = front_stages(model, training=training, batch_size=batch_size, input_shapes=shapes,
                          label_type=label_type)
    g = simplify(next(reversed(stages.values())))
    g = fuse_epilogues(fuse_elementwise(g), heads=get_backend("cuda").capabilities().epilogue_heads)
    g = schedule_kernels(plan_memory(g))
    return [render_node(g.nodes[nid], [g.nodes[u]["type"] for u in operands(g, nid)], inline_constants(g, nid),
                        f"k{nid}", nid) for nid in g.graph["plan"]["order"]]


@needs_toolkit
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_kernel_of_the_model_compiles_for_sm80_and_sm90_without_spills(model):
    build, labels_like_predictions = MODELS[model]
    kernels = training_kernels(build(), labels_like_predictions)
    assert any(launch.barriers for k in kernels for launch in k.launches)  # templates and block reductions too
    report = toolchain.compile_check(module_source(kernels))
    functions = {launch.kernel for k in kernels for launch in k.launches}
    for arch in toolchain.SASS_ARCHS:
        assert set(report.resources[arch]) == functions, arch
    assert report.problems() == []


LOCAL_ARRAY = """
extern "C" __global__ void dynamic_index(float* out0, const int* in0) {
    float a[256];
    for (int i = 0; i < 256; ++i) a[i] = in0[i];
    out0[threadIdx.x] = a[in0[threadIdx.x]];
}
"""


@needs_toolkit
def test_the_compile_check_reports_local_memory_and_rejects_bad_source():
    report = toolchain.compile_check(LOCAL_ARRAY)
    assert [p.split(":")[0] for p in report.problems()] == ["sm_80 dynamic_index", "sm_90 dynamic_index"]
    assert report.resources["sm_80"]["dynamic_index"].local_bytes == 1024
    with pytest.raises(toolchain.CudaToolError, match="nvcc -ptx failed"):
        toolchain.compile_check(LOCAL_ARRAY.replace("float a[256];", "float a[256]"))


# ---- (b) the emulation against the numpy reference ------------------------------------------------

@dataclass
class Case:
    family: str
    id: str
    graph: object          # with outputs set
    feeds: dict
    fuse: bool = False


def op_case(family, id, op, inputs, attrs=None):
    b, _, outs = build_op_graph(op, inputs, attrs or {})
    b.g.graph["outputs"] = outs
    return Case(family, id, b.g, {f"x{i}": a for i, a in enumerate(inputs)})


def with_specials(x):
    x = x.copy()
    flat = x.reshape(-1)
    flat[3::11], flat[5::13], flat[7::17] = np.nan, np.inf, -np.inf
    return x


def fused_chain():
    b = GraphBuilder(name="chain")
    x = b.input("x", TensorType((3, 7, 5), "float32"))
    bias = b.input("bias", TensorType((5,), "float32"))
    scale = b.input("scale", TensorType((7, 1), "float32"))
    step = b.input("step", TensorType((), "int64"))
    h = b.op("bias_add", x, bias)
    s = b.op("mul", b.op("sigmoid", h), scale)            # h is read twice
    y = b.op("add", b.op("tanh", h), b.op("mul", s, b.scalar(0.5, "float32")))
    d = b.op("dropout", y, step, rate=0.25, seed=99)
    b.g.graph["outputs"] = [d, b.op("tanh_grad", h, d), b.op("maximum", x, b.op("relu", d))]
    feeds = {"x": with_specials(normal(3, 7, 5)), "bias": normal(5), "scale": normal(7, 1),
             "step": np.array(3, np.int64)}
    return Case("elementwise", "fused_chain", b.g, feeds, fuse=True)


def elementwise_cases():
    cases = [op_case("elementwise", name, name, *elementwise_inputs(name)) for name in ELEMENTWISE]
    cases.append(fused_chain())
    for shapes in [((1,), (1,)), ((13,), (7, 1)), ((3, 1, 7), (3, 11, 7)), ((), (2, 3))]:
        cases.append(op_case("elementwise", f"maximum{shapes}", "maximum",
                             [with_specials(normal(*shapes[0])), with_specials(normal(*shapes[1]))]))
    cases.append(op_case("elementwise", "dropout_large", "dropout", [normal(1, 523), np.array(7, np.int64)],
                         {"rate": 0.5, "seed": 2**31 + 5}))
    return cases


def reduction_cases():
    cases = []
    for op in ("sum", "mean", "max", "min"):
        for shape, axes in [((3, 5, 7), (0,)), ((3, 5, 7), (2,)), ((3, 5, 7), (0, 2)), ((13, 1), None),
                            ((1,), (0,)), ((2, 3, 5, 7), (0, 1, 2))]:
            cases.append(op_case("reduce", f"{op}{shape}{axes}", op, [with_specials(normal(*shape))],
                                 {"axes": axes, "keepdims": False}))
        cases.append(op_case("reduce", f"{op}_int", op, [RNG.integers(-50, 50, (5, 7)).astype(np.int32)],
                             {"axes": (1,), "keepdims": False}))
    for op in ("argmax", "argmin"):
        for shape, axis in [((1,), 0), ((7,), 0), ((3, 5, 7), 1), ((3, 5, 7), 2)]:
            x = with_specials(normal(*shape)) if len(shape) > 1 else normal(*shape)
            cases.append(op_case("reduce", f"{op}{shape}{axis}", op, [x], {"axis": axis}))
    for op in ("softmax", "log_softmax", "softmax_grad", "log_softmax_grad"):
        for shape, axis in [((1, 1), -1), ((13, 10), -1), ((3, 5, 7), 1), ((3, 5, 7), 0)]:
            inputs = [normal(*shape) * 4] + ([normal(*shape)] if op.endswith("_grad") else [])
            cases.append(op_case("reduce", f"{op}{shape}{axis}", op, inputs, {"axis": axis}))
    return cases


def movement_cases():
    ids = np.array([[0, 3, 3], [6, 0, 3]], np.int32)
    return [
        op_case("movement", "transpose", "transpose", [normal(3, 5, 2, 7)], {"perm": (0, 2, 1, 3)}),
        op_case("movement", "transpose_1", "transpose", [normal(1, 5, 1)], {"perm": (2, 1, 0)}),
        op_case("movement", "broadcast_to", "broadcast_to", [normal(2, 1, 3)], {"shape": (2, 5, 3)}),
        op_case("movement", "slice", "slice", [normal(7, 5, 3)], {"begin": (2, 0, 1), "size": (3, -1, 1)}),
        op_case("movement", "pad", "pad", [normal(2, 3, 5)], {"pads": ((1, 0), (0, 2), (3, 1)), "value": -1.5}),
        op_case("movement", "concatenate", "concatenate", [normal(3, 2), normal(3, 5), normal(3, 1)], {"axis": 1}),
        op_case("movement", "concatenate_0", "concatenate", [normal(2, 3), normal(1, 3)], {"axis": 0}),
        op_case("movement", "gather", "gather", [normal(7, 3), ids]),
        op_case("movement", "gather_1", "gather", [normal(1, 1), np.zeros((3,), np.int64)]),
        op_case("movement", "scatter_add", "scatter_add", [ids, normal(2, 3, 5)], {"rows": 7}),
        op_case("movement", "scatter_add_same", "scatter_add", [np.full((1, 13), 2, np.int32), normal(1, 13, 3)],
                {"rows": 5}),
        op_case("movement", "check_index", "check_index", [np.array([0, 3, 1], np.int32)],
                {"limit": 4, "what": "labels"}),
    ]


def pool_cases():
    cases = []
    for op in POOL_OPS:
        for k, (shape, attrs) in enumerate(POOL_CASES + [((1, 13, 11, 3), dict(pool=(5, 4), strides=(3, 5),
                                                                                 padding="same"))]):
            x = normal(*shape)
            if op.startswith("max") and k < 3:
                x = with_specials(np.round(x))   # ties, NaN, infinities
            inputs, op_attrs = pool_inputs(op, x, attrs)
            cases.append(op_case("pool", f"{op}{shape}{k}", op, inputs, op_attrs))
    return cases


FAMILIES = {"elementwise": elementwise_cases, "reduce": reduction_cases, "movement": movement_cases,
            "pool": pool_cases}


@dataclass
class Prepared:
    case: Case
    graph: object                   # scheduled
    kernels: dict                   # node id -> CudaKernel
    library: object = None


def prepare(cases, prefix):
    prepared = []
    for k, case in enumerate(cases):
        g = scheduled(case.graph, case.fuse)
        kernels = {nid: render(g.nodes[nid]["kernel"], name=f"{prefix}{k}_{g.nodes[nid]['kernel'].name}")
                   for nid in described(g)}
        prepared.append(Prepared(case, g, kernels))
    return prepared


def build(prepared, sanitize=False):
    library = toolchain.build_emulated(module_source([k for p in prepared for k in p.kernels.values()]), sanitize)
    for p in prepared:
        p.library = library
    return prepared


@pytest.fixture(scope="module")
def emulated():
    """Every family's cases rendered, one library per family (built two at a time)."""
    if not HAS_CXX:
        pytest.skip("no g++ for the CUDA emulation")
    prepared = {family: prepare(make(), family[0]) for family, make in FAMILIES.items()}
    with ThreadPoolExecutor(2) as pool:
        built = dict(zip(prepared, pool.map(build, prepared.values())))
    return {(family, p.case.id): p for family, ps in built.items() for p in ps}


def run_node(p, nid, values):
    """Run node ``nid``'s kernel on the values of its operands; (outputs, error record)."""
    g, kernel = p.graph, p.kernels[nid]
    out_types = g.nodes[nid]["type"] if isinstance(g.nodes[nid]["type"], tuple) else (g.nodes[nid]["type"],)
    outs = [np.full(t.shape, 7, t.dtype) for t in out_types]   # garbage where a kernel forgets to write
    ins = [np.ascontiguousarray(values[u], dtype=b.dtype)
           for u, b in zip(operands(g, nid), kernel.buffers[len(outs):])]
    error = toolchain.emulate(p.library, kernel, outs + ins)
    return outs, error


def check_case(p):
    _, _, values = run_reference(p.graph, p.case.feeds, keep_all=True)
    assert p.kernels, f"{p.case.id}: nothing described"
    for nid, kernel in p.kernels.items():
        got, error = run_node(p, nid, values)
        assert int(error["status"]) == 0, f"{p.case.id} {kernel.name}: error {error}"
        want = values[nid] if isinstance(values[nid], tuple) else (values[nid],)
        for a, e in zip(got, want):
            e = np.asarray(e)
            what = f"{p.case.id}: {kernel.name}"
            assert a.dtype == e.dtype, what
            if e.dtype.kind == "f":
                assert_close32(a, e, what)
                np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=what)
            else:
                np.testing.assert_array_equal(a, e, err_msg=what)



@needs_cxx
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_emulated_kernels_equal_the_reference(family, emulated):
    cases = [p for (f, _), p in emulated.items() if f == family]
    assert cases
    for p in cases:
        check_case(p)


@needs_cxx
def test_gather_with_an_id_out_of_range_records_the_first_error(emulated):
    p = emulated[("movement", "gather")]
    (nid,) = p.kernels
    table, ids = normal(7, 3), np.array([[1, 9, 2], [-4, 6, 0]], np.int32)
    (out,), error = run_node(p, nid, {u: v for u, v in zip(operands(p.graph, nid), (table, ids))})
    assert (int(error["status"]), int(error["node"]), int(error["value"])) == (1, nid, 9)
    rows = out.reshape(6, 3)
    good = np.array([0, 2, 4, 5])
    np.testing.assert_array_equal(rows[good], table[ids.reshape(-1)[good]])
    np.testing.assert_array_equal(rows[[1, 3]], 0)      # a bad id gets a zero row, never a read


@needs_cxx
def test_scatter_add_and_pool_gradients_split_into_ordered_launches(emulated):
    scatter = emulated[("movement", "scatter_add")]
    (kernel,) = scatter.kernels.values()
    assert [launch.extent for launch in kernel.launches] == [7 * 5, 6]  # zero fill, then the adds
    assert "atomicAdd(&out0[" in kernel.source
    for p in (p for (f, _), p in emulated.items() if f == "pool"):
        for k in p.kernels.values():
            assert len(k.launches) == 1  # the image loop holds zero and accumulate: one thread each


# ---- (c) the checks can fail ---------------------------------------------------------------------

GUARD = "thread_index < {extent}; thread_index +="
NO_GUARD = "thread_index < (long long)gridDim.x * blockDim.x; thread_index +="


def unguarded(kernel):
    """The kernel's source with its index guard replaced by 'every launched thread, once'."""
    (launch,) = kernel.launches
    guard = GUARD.format(extent=launch.extent)
    assert kernel.source.count(guard) == 1
    return kernel.source.replace(guard, NO_GUARD)


@needs_cxx
def test_an_elementwise_kernel_without_its_index_guard_is_caught(emulated):
    p = emulated[("elementwise", "relu")]
    (nid,) = p.kernels
    kernel = p.kernels[nid]
    x = normal(*p.graph.nodes[nid]["type"].shape)
    n = x.size
    assert kernel.launches[0].thread_count > n  # threads beyond the end exist
    for source, caught in ((kernel.source, False), (unguarded(kernel), True)):
        library = toolchain.build_emulated(module_source([]) + source)
        out = np.full(n + 512, -3.0, np.float32)              # a sentinel past the end
        inp = np.concatenate([x.reshape(-1), np.ones(512, np.float32)])
        toolchain.emulate(library, kernel, [out, inp])
        np.testing.assert_array_equal(out[:n], np.maximum(x.reshape(-1), 0))
        assert bool((out[n:] != -3.0).any()) == caught


SANITIZED_RUN = """
import sys
import numpy as np
from kcompiler.codegen.backend import get_backend
from kcompiler.codegen.cuda import toolchain
from tests.cuda import test_render_cuda as t
mode = sys.argv[1]
if mode == "unguarded":
    p = t.prepare([t.op_case("elementwise", "relu", "relu", [t.normal(37)])], "u")[0]
    (kernel,) = p.kernels.values()
    library = toolchain.build_emulated(t.module_source([]) + t.unguarded(kernel), sanitize=True)
    toolchain.emulate(library, kernel, [np.zeros(37, np.float32), t.normal(37)])
else:
    cases = t.movement_cases() + [c for c in t.pool_cases() if "grad" in c.id][::3] + t.reduction_cases()[::5]
    for p in t.build(t.prepare(cases, "s"), sanitize=True):
        t.check_case(p)
print("clean")
"""


def run_sanitized(mode):
    return run_sanitized_script(SANITIZED_RUN, mode)


@needs_cxx
def test_address_sanitizer_catches_the_missing_index_guard():
    out = run_sanitized("unguarded")
    assert out.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in out.stderr, out.stderr[-3000:]


@needs_cxx
def test_sanitized_emulation_of_movement_pooling_and_reductions_is_clean():
    out = run_sanitized("families")
    assert out.returncode == 0 and "clean" in out.stdout, (out.stdout + out.stderr)[-3000:]
