"""Element-wise kernels rendered from their target-neutral descriptions (schedule/elementwise.py,
schedule/scalar.py) against the numpy references: every element-wise op of the registry
(forward and ``_grad``), broadcasting over size-1 and prime dimensions, a fused chain,
dropout's generator, NaN inputs; and the description itself (collapsed loops, inline
constants, locals for shared members, the dump)."""
import numpy as np
import pytest

from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.registry import all_ops
from kcompiler.ir.types import TensorType
from kcompiler.ops.elementwise import UNARY, UNARY_NO_GRAD
from kcompiler.schedule.elementwise import describe_elementwise
from kcompiler.schedule.kernel import Local, Loop, format_kernel
from kcompiler.schedule.scalar import DERIVATIVES, defined
from op_check import assert_close32, build_op_graph, lower
from test_core_ops_inputs import UNARY_INPUTS, away_from_zero

RNG = np.random.default_rng(7)
ELEMENTWISE = sorted(n for n, op in all_ops().items() if op.kind == "elementwise" and n != "fused")


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def positive(*shape):
    return RNG.uniform(0.5, 2.0, shape).astype(np.float32)


def unary_input(name, shape):
    x = UNARY_INPUTS[name]() if name in UNARY_INPUTS else away_from_zero(RNG.standard_normal((3, 4)))
    # the op's domain, at the test's shape
    return np.resize(x, shape).astype(np.float32)


# op -> (inputs, attrs): odd shapes that broadcast (size-1 axes, primes, leading axes).
def cases(name):
    if name in UNARY:
        return [unary_input(name, (7, 13))], dict(UNARY[name])
    if name.endswith("_grad") and name[:-5] in UNARY:
        return [unary_input(name[:-5], (1, 13, 5)), normal(1, 13, 5)], dict(UNARY[name[:-5]])
    if name in UNARY_NO_GRAD:
        return [normal(3, 1, 11) * 3], {}
    if name in ("add", "sub", "mul", "maximum", "minimum"):
        return [normal(3, 1, 5), normal(7, 1)], {}
    if name in ("div", "pow"):
        return [positive(3, 1, 5), positive(7, 1)], {}
    if name in ("pow_grad_base", "pow_grad_exponent"):
        return [normal(5, 3), positive(3), normal(1, 3)], {}
    if name in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
        x = np.round(normal(3, 1, 5))
        return [x, np.round(normal(7, 1))], {}
    if name in ("logical_and", "logical_or"):
        return [RNG.random((3, 1, 5)) > 0.5, RNG.random((7, 1)) > 0.5], {}
    if name == "logical_not":
        return [RNG.random((2, 11)) > 0.5], {}
    if name == "where":
        return [RNG.random((3, 1, 5)) > 0.5, normal(7, 1), normal(5)], {}
    if name == "cast":
        return [normal(11, 2) * 4], {"dtype": "int32"}
    if name == "clip":
        return [normal(7, 3) * 2], {"lo": -1.0, "hi": 1.5}
    if name == "clip_grad":
        return [normal(7, 3) * 2, normal(7, 3)], {"lo": -1.0, "hi": 1.5}
    if name == "bias_add":
        return [normal(2, 3, 7), normal(7)], {}
    if name == "dropout":
        return [normal(13, 7), np.array(5, np.int64)], {"rate": 0.3, "seed": 1234}
    if name in ("gaussian_noise", "gaussian_dropout"):
        return [normal(13, 7), np.array(5, np.int64)], {"stddev": 0.7, "seed": 99}
    if name == "batch_norm_apply":  # x (2, 3, 5, 7), per-channel mean, var (> 0), gamma, beta
        return [normal(2, 3, 5, 7), normal(1, 1, 1, 7), positive(1, 1, 1, 7), normal(7), normal(1, 1, 1, 7)], \
            {"axis": -1, "epsilon": 0.01}
    raise AssertionError(f"no test inputs for element-wise op {name!r}")


def compile_graph(b, outputs, feeds, fuse=False):
    """Run graph ``b`` compiled; returns (outputs, the scheduled kernels' descriptions)."""
    b.g.graph["outputs"] = outputs
    compiled, stages = lower(b.g, fuse=fuse)
    scheduled = stages["scheduled"]
    kernels = [scheduled.nodes[n]["kernel"] for n in scheduled.graph["plan"]["order"] if "kernel" in scheduled.nodes[n]]
    return compiled.run(feeds), kernels


def reference(b, outputs, feeds):
    b.g.graph["outputs"] = outputs
    return run_reference(b.g, feeds)[0]


def run_op(name, inputs, attrs):
    b, _, outs = build_op_graph(name, inputs, attrs)
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    got, kernels = compile_graph(b, outs, feeds)
    return got, reference(b, outs, feeds), kernels


def test_every_elementwise_op_has_a_scalar_definition_a_reference_and_a_description():
    assert [n for n in ELEMENTWISE if not defined(n)] == []
    assert [n for n in ELEMENTWISE if all_ops()[n].reference is None] == []
    assert [n for n in ELEMENTWISE + ["fused"] if all_ops()[n].describe is None] == []
    assert set(DERIVATIVES) == set(UNARY)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # pow_grad_base's reference at negative bases
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_op_rendered_from_its_description_matches_the_reference(name):
    inputs, attrs = cases(name)
    got, expected, kernels = run_op(name, inputs, attrs)
    assert len(kernels) == 1 and kernels[0].nodes, "the op's kernel comes from its description"
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        if e.dtype.kind == "f":
            assert_close32(g, e, name)
        else:
            np.testing.assert_array_equal(g, e, err_msg=name)


@pytest.mark.parametrize("src, dst", [("float32", "bool"), ("bool", "float32"), ("int32", "float32"),
                                      ("float32", "int64"), ("int64", "int32"), ("bool", "int32")])
def test_cast_between_dtypes(src, dst):
    x = (normal(5, 3) * 4).astype(src) if src != "bool" else RNG.random((5, 3)) > 0.5
    got, expected, _ = run_op("cast", [x], {"dtype": dst})
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("x_shape, y_shape", [((1,), (1,)), ((1, 1), (5,)), ((13,), (7, 1)), ((2, 1, 3), (1, 5, 1)),
                                              ((3, 1, 7), (3, 11, 7)), ((), (2, 3)), ((17, 1, 1), (1,))])
def test_broadcasting_shapes(x_shape, y_shape):
    x, y = normal(*x_shape), normal(*y_shape)
    for name in ("sub", "maximum"):
        got, expected, _ = run_op(name, [x, y], {})
        np.testing.assert_array_equal(got[0], expected[0])
        got, expected, _ = run_op(name, [y, x], {})
        np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(UNARY) + sorted(f"{n}_grad" for n in UNARY) + list(UNARY_NO_GRAD))
def test_nan_and_inf_inputs_give_the_references_nan_and_inf(name):
    x = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.5, np.nan]], np.float32)
    attrs = dict(UNARY.get(name.removesuffix("_grad"), {}))
    inputs = [x, np.array([[1.0, np.nan, 2.0, -1.0, 3.0, np.nan, 0.5, 1.0]], np.float32)] if name.endswith("_grad") \
        else [x]
    got, expected, _ = run_op(name, inputs, attrs)
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(got[0]), test(expected[0]), err_msg=f"{name}: {test.__name__}")
    finite = np.isfinite(expected[0])
    assert_close32(got[0][finite], expected[0][finite], name)


def test_fused_chain_with_shared_members_broadcasting_an_inline_constant_and_dropout():
    b = GraphBuilder(name="chain")
    x = b.input("x", TensorType((3, 7, 5), "float32"))
    bias = b.input("bias", TensorType((5,), "float32"))
    scale = b.input("scale", TensorType((7, 1), "float32"))
    step = b.input("step", TensorType((), "int64"))
    h = b.op("bias_add", x, bias)
    t = b.op("tanh", h)
    s = b.op("mul", b.op("sigmoid", h), scale)            # h is read twice
    y = b.op("add", t, b.op("mul", s, b.scalar(0.5, "float32")))
    d = b.op("dropout", y, step, rate=0.25, seed=99)
    g = b.op("tanh_grad", h, d)
    feeds = {"x": normal(3, 7, 5), "bias": normal(5), "scale": normal(7, 1), "step": np.array(3, np.int64)}
    got, kernels = compile_graph(b, [d, g], feeds, fuse=True)
    expected = reference(b, [d, g], feeds)
    for a, e in zip(got, expected):
        assert_close32(a, e, "fused chain")
    fused = [k for k in kernels if k.name.endswith("_fused")]
    assert len(fused) == 1, [k.name for k in kernels]
    text = str(fused[0])
    assert "0.5" in text and "dropout(" in text, text      # the constant is inlined, the flat index passed
    body, loops = fused[0].body, []
    while isinstance(body[0], Loop):
        loops.append(body[0])
        body = body[0].body
    assert [lp.extent for lp in loops] == [3, 7, 5] and all(lp.parallel for lp in loops)
    assert any(isinstance(s, Local) for s in body), "a member read by several others is computed once"


def test_dims_collapse_so_the_innermost_loop_is_long_and_contiguous():
    def extents(out_shape, in_shapes):
        node = {"op": "add" if len(in_shapes) == 2 else "relu", "attrs": {},
                "type": TensorType(out_shape, "float32")}
        k = describe_elementwise(node, [TensorType(s, "float32") for s in in_shapes], "k", {})
        out, body = [], k.body
        while body and isinstance(body[0], Loop):
            out.append(body[0].extent)
            body = body[0].body
        return out

    assert extents((64, 26, 26, 32), [(64, 26, 26, 32), (32,)]) == [64 * 26 * 26, 32]
    assert extents((256, 1024), [(256, 1024), (256, 1024)]) == [256 * 1024]
    assert extents((3, 7, 5), [(3, 7, 5), (7, 1)]) == [3, 7, 5]
    assert extents((4, 1, 6), [(4, 1, 6)]) == [24]
    assert extents((), [()]) == []


def test_description_dump():
    node = {"op": "mul", "attrs": {}, "type": TensorType((3, 5), "float32")}
    in_types = [TensorType((3, 5), "float32"), TensorType((), "float32")]
    k = describe_elementwise(node, in_types, "k1_mul", {1: 2.0})
    assert format_kernel(k) == (
        "kernel k1_mul(out float32 out0[15], in float32 in0[15], in float32 in1[1]):\n"
        "  for d0 in 0..15 parallel:\n"
        "    out0[d0] = (in0[d0] * 2.0)")
    node = {"op": "fused", "type": (TensorType((2, 3), "float32"), TensorType((2, 3), "bool")),
            "attrs": {"body": [{"op": "relu", "attrs": {}, "args": [["in", 0]]},
                               {"op": "greater", "attrs": {}, "args": [["m", 0], ["in", 1]]}],
                      "outputs": [0, 1]}}
    k = describe_elementwise(node, [TensorType((2, 3), "float32"), TensorType((3,), "float32")], "k2_fused", {})
    assert format_kernel(k) == (
        "kernel k2_fused(out float32 out0[6], out bool out1[6], in float32 in0[6], in float32 in1[3]):\n"
        "  for d0 in 0..2 parallel:\n"
        "    for d1 in 0..3 parallel:\n"
        "      float32 m0 = relu(in0[((d0 * 3) + d1)])\n"
        "      out0[((d0 * 3) + d1)] = m0\n"
        "      out1[((d0 * 3) + d1)] = greater(m0, in1[d1])")
