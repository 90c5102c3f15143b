"""attention and attention_grad: the reference against softmax(q k^T) v written out per head,
masks (explicit, causal, both, a fully masked row), shape errors, and the VJP of both results
(o and lse) against float64 finite differences."""
import numpy as np
import pytest

from kcompiler.errors import ShapeError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.types import TensorType
from op_check import check_vjp, run_op

RNG = np.random.default_rng(11)

# (B, T, S, H, D, Dv, attrs, mask): self and cross attention, causal with T != S, a mask
# (True: every row keeps a key; "row": row 1 fully masked), mask and causal together. The VJP
# cases keep a key in every row: a fully masked row's lse is about -1e9, whose float64 finite
# differences are noise
ATTENTION_CASES = [
    (2, 3, 3, 2, 4, 4, {"scale": 0.5}, False),
    (1, 4, 5, 1, 3, 2, {"scale": 0.7}, False),
    (1, 4, 3, 2, 2, 3, {"scale": 0.6, "causal": True}, False),
    (2, 3, 4, 2, 3, 2, {"scale": 0.4}, True),
    (1, 4, 4, 1, 2, 2, {"scale": 1.0, "causal": True}, True),
]
FULLY_MASKED_CASES = [(2, 3, 4, 2, 3, 2, {"scale": 0.4}, "row"),
                      (1, 4, 4, 1, 2, 2, {"scale": 1.0, "causal": True}, "row")]


def attention_inputs(batch, t_len, s_len, heads, depth, value_depth, masked):
    inputs = [RNG.standard_normal((batch, t_len, heads, depth)), RNG.standard_normal((batch, s_len, heads, depth)),
              RNG.standard_normal((batch, s_len, heads, value_depth))]
    if masked:
        mask = (RNG.random((batch, t_len, s_len)) > 0.4).astype(np.float64)
        mask[:, :, 0] = 1.0
        if masked == "row":
            mask[0, 1] = 0.0   # a fully masked row: uniform weights, as Keras
        inputs.append(mask)
    return inputs


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_vjp(case):
    *sizes, attrs, masked = case
    inputs = attention_inputs(*sizes, masked)
    check_vjp("attention", inputs, attrs, wrt=[0, 1, 2])


@pytest.mark.parametrize("case", ATTENTION_CASES + FULLY_MASKED_CASES)
def test_attention_is_softmax_of_scores_times_values(case):
    *sizes, attrs, masked = case
    inputs = attention_inputs(*sizes, masked)
    o, lse = run_op("attention", inputs, attrs)
    q, k, v = inputs[:3]
    t_len, s_len = q.shape[1], k.shape[1]
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            z = q[b, :, h] @ k[b, :, h].T * attrs["scale"]
            keep = np.ones((t_len, s_len), bool)
            if masked:
                keep &= inputs[3][b] != 0
            if attrs.get("causal"):
                keep &= np.arange(s_len)[None, :] <= np.arange(t_len)[:, None]
            z = np.where(keep, z, -1e9)
            p = np.exp(z - z.max(axis=1, keepdims=True))
            np.testing.assert_allclose(lse[b, h], np.log(p.sum(axis=1)) + z.max(axis=1), rtol=1e-12)
            p /= p.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(o[b, :, h], p @ v[b, :, h], rtol=1e-10, atol=1e-12)
    if masked == "row":
        np.testing.assert_allclose(o[0, 1], v[0].mean(axis=0), rtol=1e-10)  # the fully masked row


def _shape_of(op, shapes, attrs=None):
    b = GraphBuilder(name="t")
    ids = [b.input(f"x{i}", TensorType(s, "float32")) for i, s in enumerate(shapes)]
    return [t.shape for t in b.type(b.add(op, ids, attrs or {}))]


def test_shape_rules_and_errors():
    assert _shape_of("attention", [(None, 5, 2, 4), (None, 7, 2, 4), (None, 7, 2, 3)]) == \
        [(None, 5, 2, 3), (None, 2, 5)]
    with pytest.raises(ShapeError, match="k .* must be"):
        _shape_of("attention", [(1, 5, 2, 4), (1, 7, 2, 3), (1, 7, 2, 3)])
    with pytest.raises(ShapeError, match="the mask must be"):
        _shape_of("attention", [(1, 5, 2, 4), (1, 7, 2, 4), (1, 7, 2, 3), (1, 5, 5)])
    with pytest.raises(ShapeError, match="expects operands"):
        _shape_of("attention", [(1, 5, 2, 4), (1, 7, 2, 4)])
