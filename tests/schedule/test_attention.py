"""attention and attention_grad rendered from their kernel descriptions (schedule/attention.py)
against the numpy references, forward and backward, fused and unfused, on every registered
target; each op is one kernel; a large score stays finite (the online softmax rescales)."""
import numpy as np
import pytest

from op_check import check_compiled, run_compiled, build_op_graph, assert_close32
from kcompiler.ir.interpreter_reference import run_reference
from tests.ops.test_attention_ops import ATTENTION_CASES, FULLY_MASKED_CASES, attention_inputs


@pytest.mark.parametrize("case", ATTENTION_CASES + FULLY_MASKED_CASES +
                         [(2, 7, 9, 3, 5, 4, {"scale": 0.3, "causal": True}, True),
                          # depths that are multiples of the dot products' partial sums
                          (1, 5, 6, 2, 16, 24, {"scale": 0.25}, True),
                          # blocks of 4 query rows (two of them) and of 2
                          (2, 8, 5, 2, 16, 8, {"scale": 0.25, "causal": True}, True),
                          (1, 6, 7, 1, 3, 2, {"scale": 0.5}, "row")])
def test_attention_and_its_gradient(case):
    *sizes, attrs, masked = case
    check_compiled("attention", attention_inputs(*sizes, masked), attrs, wrt=[0, 1, 2])


def test_large_scores_do_not_overflow():
    q, k, v = attention_inputs(1, 3, 6, 1, 2, 2, False)
    q, k = (q * 30).astype(np.float32), (k * 30).astype(np.float32)   # scores of several hundred
    inputs = [q, k, v.astype(np.float32)]
    b, _, outs = build_op_graph("attention", inputs, {"scale": 1.0})
    b.g.graph["outputs"] = outs
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    got = run_compiled(b.g, feeds)
    expected, _ = run_reference(b.g, feeds)
    assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
    for g, e in zip(got, expected):
        assert_close32(g, e)
