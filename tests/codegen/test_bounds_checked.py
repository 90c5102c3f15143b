"""The kernel tests once more under a bounds-checked build of the generated code
(KCOMPILER_BOUNDS_CHECK=1): every buffer access checks its index and a violation is
reported as an error instead of touching memory. The results must be unchanged."""
import numpy as np
import pytest

from op_check import build_op_graph, check_compiled, run_compiled, use_options
from kcompiler.errors import KCompilerError

RNG = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def bounds_checked(monkeypatch):
    use_options(monkeypatch, bounds_check=True)


CASES = [
    ("tanh", [RNG.standard_normal((3, 5))], {}),
    ("add", [RNG.standard_normal((2, 3, 4)), RNG.standard_normal((3, 1))], {}),
    ("matmul", [RNG.standard_normal((2, 5, 4)), RNG.standard_normal((4, 3))], {}),
    ("sum", [RNG.standard_normal((3, 4, 5))], {"axes": (0, 2), "keepdims": True}),
    ("softmax", [RNG.standard_normal((3, 4))], {"axis": 0}),
    ("transpose", [RNG.standard_normal((2, 3, 4))], {"perm": (1, 2, 0)}),
    ("concatenate", [RNG.standard_normal((2, 3)), RNG.standard_normal((2, 2))], {"axis": 1}),
    ("slice", [RNG.standard_normal((4, 5))], {"begin": (1, 1), "size": (3, 2)}),
    ("pad", [RNG.standard_normal((2, 3))], {"pads": ((1, 2), (0, 1)), "value": 0.0}),
    ("broadcast_to", [RNG.standard_normal((1, 3))], {"shape": (4, 3)}),
    ("conv2d", [RNG.standard_normal((2, 6, 5, 3)), RNG.standard_normal((3, 2, 3, 4))],
     {"strides": (2, 1), "padding": "same", "dilation": (1, 1)}),
    ("max_pool2d", [RNG.standard_normal((2, 5, 5, 3))], {"pool": (2, 2), "strides": (2, 2), "padding": "same"}),
    ("avg_pool2d", [RNG.standard_normal((2, 5, 5, 3))], {"pool": (3, 3), "strides": (1, 1), "padding": "same"}),
]


@pytest.mark.parametrize("op,inputs,attrs", CASES, ids=[c[0] for c in CASES])
def test_kernels_stay_in_bounds(op, inputs, attrs):
    check_compiled(op, inputs, attrs)


def test_gather_with_a_bad_index_reports_instead_of_reading():
    table = RNG.standard_normal((4, 3)).astype(np.float32)
    idx = np.array([1, 9], np.int32)
    b, _, outs = build_op_graph("gather", [table, idx], {})
    b.g.graph["outputs"] = outs
    with pytest.raises(KCompilerError, match=r"gather: id 9 is outside \[0, 4\) \(input_dim=4\)"):
        run_compiled(b.g, {"x0": table, "x1": idx})


def test_the_checked_build_catches_an_out_of_bounds_kernel(monkeypatch):
    """A deliberately broken kernel description (reads one element past its input) is reported."""
    from kcompiler.ir.registry import get_op
    from kcompiler.schedule.kernel import Buffer, Kernel, Load, Store, Var, loop

    def off_by_one(node, in_types, name):
        n, i = int(np.prod(in_types[0].shape)), Var("i")
        return Kernel(name, (Buffer("out0", "float32", n, True), Buffer("in0", "float32", n, False)),
                      (loop("i", n, [Store("out0", i, Load("in0", i + 1, "float32"))]),))

    monkeypatch.setattr(get_op("transpose"), "describe", off_by_one)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    b, _, outs = build_op_graph("transpose", [x], {"perm": (0, 1)})
    b.g.graph["outputs"] = outs
    with pytest.raises(KCompilerError, match="indexed outside a buffer"):
        run_compiled(b.g, {"x0": x})
