"""layer_norm, layer_norm_grad, upsample_bilinear and its gradient rendered from their kernel
descriptions (schedule/norm.py, schedule/image.py) against the numpy references, forward and
backward, fused and unfused, on odd shapes; each op is one kernel; NaN in a row stays in it."""
import numpy as np
import pytest

from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.pipeline import lower_graph
from op_check import assert_close32, build_op_graph, check_compiled
from tests.ops.test_norm_image_ops import NORM_CASES, UPSAMPLE_CASES, norm_inputs

# odd and prime sizes on top of the VJP cases: long rows, many groups, batch 1
KERNEL_NORM_CASES = NORM_CASES + [((5, 7, 6), {"groups": 3, "positions": 1, "epsilon": 1e-5}), ((1, 37), {}),
                                  ((4, 13, 8), {"groups": 8, "positions": 1}), ((2, 3, 5, 7), {"positions": 1}),
                                  # rows reduced in lanes (kernel.lane_reduction): whole groups of 16, a rest
                                  ((3, 64), {}), ((2, 100), {"epsilon": 1e-5})]


@pytest.mark.parametrize("shape,attrs", KERNEL_NORM_CASES)
def test_layer_norm_and_its_gradient(shape, attrs):
    check_compiled("layer_norm", norm_inputs(shape, attrs), attrs)


@pytest.mark.parametrize("shape,size", UPSAMPLE_CASES + [((2, 5, 3, 3), (2, 3))])
def test_upsample_bilinear_and_its_gradient(shape, size):
    check_compiled("upsample_bilinear", [np.random.default_rng(1).standard_normal(shape)], {"size": size})


def _kernels(op, inputs, attrs):
    b, _, outs = build_op_graph(op, inputs, attrs)
    b.g.graph["outputs"] = outs
    compiled, stages = lower_graph(b.g, fuse=False)
    scheduled = stages["scheduled"]
    return compiled, [scheduled.nodes[n] for n in scheduled.graph["plan"]["order"] if "kernel" in scheduled.nodes[n]]


def test_each_op_is_one_described_kernel():
    x = np.random.default_rng(2).standard_normal((3, 2, 4)).astype(np.float32)
    for op, inputs, attrs in [("layer_norm", [x, np.ones(4, np.float32), np.zeros(4, np.float32)],
                               {"groups": 2, "positions": 1}),
                              ("layer_norm_grad", [x, np.ones(4, np.float32), x], {"groups": 2, "positions": 1}),
                              ("upsample_bilinear", [x.reshape(1, 3, 2, 4)], {"size": (2, 2)}),
                              ("upsample_bilinear_grad", [x.reshape(1, 3, 2, 4)],
                               {"size": (3, 2), "input_hw": (1, 1)})]:
        _, nodes = _kernels(op, inputs, attrs)
        assert [n["op"] for n in nodes] == [op]


def test_a_nan_stays_in_its_row():
    x = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    x[1, 2] = np.nan
    inputs = [x, np.ones(5, np.float32), np.zeros(5, np.float32)]
    compiled, _ = _kernels("layer_norm", inputs, {})
    (got,) = compiled.run({f"x{i}": a for i, a in enumerate(inputs)})
    b, _, outs = build_op_graph("layer_norm", inputs, {})
    b.g.graph["outputs"] = outs
    (expected,) = run_reference(b.g, {f"x{i}": a for i, a in enumerate(inputs)})[0]
    assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2]]).any()
    assert_close32(got[[0, 2]], expected[[0, 2]])
