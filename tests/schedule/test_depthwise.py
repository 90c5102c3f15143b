"""depthwise_conv2d and its gradients rendered from their kernel descriptions
(schedule/depthwise.py) against the numpy references, forward and backward, fused and
unfused, on every registered target; each op is one kernel."""
import numpy as np
import pytest

from kcompiler.pipeline import lower_graph
from op_check import build_op_graph, check_compiled
from tests.ops.test_depthwise_ops import DEPTHWISE_CASES, depthwise_inputs

KERNEL_CASES = DEPTHWISE_CASES + [((2, 9, 8, 5), (5, 5, 5, 1), {"padding": "same", "strides": (2, 2)}),
                                  ((1, 4, 4, 7), (1, 1, 7, 2), {})]


@pytest.mark.parametrize("x_shape,k_shape,attrs", KERNEL_CASES)
def test_depthwise_conv2d_and_its_gradients(x_shape, k_shape, attrs):
    check_compiled("depthwise_conv2d", depthwise_inputs(x_shape, k_shape), attrs)


def test_each_op_is_one_described_kernel():
    x, k = depthwise_inputs((1, 5, 5, 2), (3, 3, 2, 1))
    dy = np.ones((1, 5, 5, 2))
    attrs = {"padding": "same"}
    for op, inputs, extra in [("depthwise_conv2d", [x, k], {}),
                              ("depthwise_conv2d_backward_input", [dy, k], {"input_hw": (5, 5)}),
                              ("depthwise_conv2d_backward_kernel", [x, dy], {"kernel_shape": (3, 3, 2, 1)})]:
        b, _, outs = build_op_graph(op, [a.astype(np.float32) for a in inputs], dict(attrs, **extra))
        b.g.graph["outputs"] = outs
        _, stages = lower_graph(b.g, fuse=False)
        scheduled = stages["scheduled"]
        kernels = [scheduled.nodes[n] for n in scheduled.graph["plan"]["order"] if "kernel" in scheduled.nodes[n]]
        assert [n["op"] for n in kernels] == [op]
