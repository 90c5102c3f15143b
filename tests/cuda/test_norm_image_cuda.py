"""The kernel descriptions of layer_norm, layer_norm_grad, upsample_bilinear and its gradient
(schedule/norm.py, schedule/image.py) rendered as CUDA C: they pass nvcc/ptxas for sm_80 and
sm_90 without spills or local memory, and their emulation equals the numpy reference (the
helpers of test_render_cuda.py; the random element-wise ops are among its element-wise cases)."""
import numpy as np
import pytest

from kcompiler.codegen.cuda import toolchain
from kcompiler.codegen.cuda.render import module_source
from tests.cuda.test_render_cuda import build, check_case, needs_cxx, needs_toolkit, op_case, prepare
from tests.ops.test_norm_image_ops import NORM_CASES, norm_inputs

RNG = np.random.default_rng(5)


def cases():
    out = []
    for k, (shape, attrs) in enumerate(NORM_CASES + [((3, 2, 37), {"groups": 1})]):
        inputs = norm_inputs(shape, attrs)
        out.append(op_case("norm", f"layer_norm{k}", "layer_norm", [a.astype(np.float32) for a in inputs], attrs))
        grad_inputs = [inputs[0]] + (inputs[1:2] if attrs.get("scale", True) else []) + [RNG.standard_normal(shape)]
        out.append(op_case("norm", f"layer_norm_grad{k}", "layer_norm_grad",
                           [a.astype(np.float32) for a in grad_inputs], attrs))
    for k, (shape, size) in enumerate([((1, 3, 4, 2), (2, 2)), ((2, 2, 3, 1), (3, 2)), ((1, 1, 1, 3), (2, 4))]):
        x = RNG.standard_normal(shape).astype(np.float32)
        out.append(op_case("image", f"upsample{k}", "upsample_bilinear", [x], {"size": size}))
        dy = RNG.standard_normal((shape[0], shape[1] * size[0], shape[2] * size[1], shape[3])).astype(np.float32)
        out.append(op_case("image", f"upsample_grad{k}", "upsample_bilinear_grad", [dy],
                           {"size": size, "input_hw": shape[1:3]}))
    return out


@pytest.fixture(scope="module")
def prepared():
    return prepare(cases(), "n")


@needs_toolkit
def test_kernels_compile_for_sm80_and_sm90_without_spills(prepared):
    kernels = [k for p in prepared for k in p.kernels.values()]
    report = toolchain.compile_check(module_source(kernels))
    assert report.problems() == []


@needs_cxx
def test_emulated_kernels_equal_the_reference(prepared):
    for p in build(prepared):
        check_case(p)


def test_long_rows_run_as_block_reductions_and_parameter_gradients_as_block_accumulations():
    x, gamma = np.ones((64, 512), np.float32), np.ones(512, np.float32)
    forward, backward = prepare([op_case("norm", "ln", "layer_norm", [x, gamma, gamma]),
                                 op_case("norm", "ln_grad", "layer_norm_grad", [x, gamma, x])], "b")
    (kernel,) = forward.kernels.values()
    assert [(launch.blocks[0], launch.barriers) for launch in kernel.launches] == [(64, True)]  # a block per row
    (kernel,) = backward.kernels.values()
    # rows (dx and the row statistics); zero dgamma, add the rows into it; zero dbeta, add into it
    assert [launch.barriers for launch in kernel.launches] == [True, False, True, False, True]
