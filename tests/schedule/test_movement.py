"""The data-movement and indexing kernels come from their target-neutral descriptions
(kcompiler/schedule/movement.py), rendered through the LLVM backend: each op against its
numpy reference on odd shapes (primes, size-1 axes), out-of-range indices as IndexRangeError
with no access outside a buffer (also in the bounds-checked build), repeated indices in
scatter_add, and the descriptions' text."""
import re

import numpy as np
import pytest

from op_check import assert_close32, build_op_graph, lower, use_bounds_checks
from kcompiler.errors import IndexRangeError
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.schedule.kernel import Loop

RNG = np.random.default_rng(7)


@pytest.fixture(params=[False, True], ids=["plain", "bounds_checked"])
def bounds_check(request, monkeypatch):
    """Run the test's kernels plain and in the bounds-checked build (KCOMPILER_BOUNDS_CHECK=1),
    where an access outside a buffer would be reported instead of an IndexRangeError."""
    if request.param:
        use_bounds_checks(monkeypatch)
    return request.param


def compile_op(op, inputs, attrs):
    """(outputs, reference outputs, the op's kernel description) of a one-op graph."""
    b, _, outs = build_op_graph(op, inputs, attrs)
    b.g.graph["outputs"] = outs
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    compiled, stages = lower(b.g)
    kernels = [n["kernel"] for _, n in stages["scheduled"].nodes(data=True) if n["op"] == op]
    assert len(kernels) == 1, f"{op} is not rendered from a description"
    return compiled.run(feeds), run_reference(b.g, feeds)[0], kernels[0]


def check_exact(op, inputs, attrs):
    got, expected, kernel = compile_op(op, inputs, attrs)
    np.testing.assert_array_equal(got[0], expected[0], err_msg=f"{op} {attrs}")
    assert got[0].dtype == expected[0].dtype
    return kernel


def loop_depth(statements):
    return max((1 + loop_depth(s.body) if isinstance(s, Loop) else 0 for s in statements), default=0)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape,perm", [
    ((7,), (0,)), ((13, 11), (1, 0)), ((7, 1, 5), (2, 0, 1)), ((3, 5, 2, 7), (0, 2, 1, 3)),
    ((1, 5, 1), (2, 1, 0)), ((2, 3, 5), (1, 0, 2)), ((5, 3, 2, 1), (3, 2, 1, 0))])
def test_transpose(shape, perm, bounds_check):
    check_exact("transpose", [normal(*shape)], {"perm": perm})


def test_transpose_of_integers_and_collapsed_loops():
    check_exact("transpose", [RNG.integers(-9, 9, (3, 4, 5)).astype(np.int32)], {"perm": (2, 0, 1)})
    # the identity permutation is one contiguous copy; swapping the outer two of three axes
    # keeps the innermost axis contiguous
    assert loop_depth(check_exact("transpose", [normal(3, 4, 5)], {"perm": (0, 1, 2)}).body) == 1
    assert loop_depth(check_exact("transpose", [normal(3, 4, 5)], {"perm": (1, 0, 2)}).body) == 3


@pytest.mark.parametrize("shape,to_shape", [
    ((1, 3), (4, 3)), ((5, 1), (2, 5, 7)), ((), (3, 2)), ((3,), (2, 3)), ((1, 1), (1, 1)), ((2, 1, 3), (2, 5, 3))])
def test_broadcast_to(shape, to_shape, bounds_check):
    check_exact("broadcast_to", [normal(*shape)], {"shape": to_shape})


@pytest.mark.parametrize("shape,begin,size", [
    ((7, 5, 3), (2, 0, 1), (3, -1, 1)), ((5, 7, 3), (0, 6, 0), (5, 1, 3)), ((1,), (0,), (-1,)),
    ((11, 13), (10, 12), (1, 1)), ((4, 5), (1, 2), (2, -1))])
def test_slice(shape, begin, size, bounds_check):
    check_exact("slice", [normal(*shape)], {"begin": begin, "size": size})


def test_last_time_step_slice_is_one_copy_per_sample():
    kernel = check_exact("slice", [normal(5, 7, 3)], {"begin": (0, 6, 0), "size": (5, 1, 3)})
    assert loop_depth(kernel.body) == 2


@pytest.mark.parametrize("shape,pads,value", [
    ((2, 3), ((1, 2), (0, 1)), 0.0), ((3, 5, 7, 2), ((0, 0), (1, 1), (2, 0), (0, 0)), 1.5),
    ((3, 5), ((0, 0), (0, 3)), -2.0), ((3, 5), ((2, 1), (0, 0)), 0.0), ((3, 5), ((0, 0), (0, 0)), 0.0),
    ((1, 1, 1), ((1, 1), (0, 2), (3, 0)), 4.0), ((2, 3, 5, 7), ((1, 0), (0, 1), (1, 1), (0, 0)), 0.0)])
def test_pad(shape, pads, value, bounds_check):
    check_exact("pad", [normal(*shape)], {"pads": pads, "value": value})


def test_pad_of_integers():
    check_exact("pad", [RNG.integers(-9, 9, (3, 2)).astype(np.int32)], {"pads": ((1, 1), (2, 0)), "value": 0.0})


@pytest.mark.parametrize("shapes,axis", [
    ([(2, 3), (2, 1), (2, 2)], 1), ([(1, 3), (2, 3)], 0), ([(3, 5, 2), (3, 5, 3)], -1),
    ([(2, 1, 3), (2, 4, 3), (2, 2, 3)], 1), ([(7,), (1,), (5,)], 0), ([(3, 1), (3, 1)], 1)])
def test_concatenate(shapes, axis, bounds_check):
    check_exact("concatenate", [normal(*s) for s in shapes], {"axis": axis})


def test_concatenate_of_booleans():
    check_exact("concatenate", [RNG.random((3, 2)) > 0.5, RNG.random((3, 5)) > 0.5], {"axis": 1})


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_gather(id_dtype, bounds_check):
    ids = np.array([[0, 6, 6, 3, 1], [2, 0, 5, 6, 4]], id_dtype)
    check_exact("gather", [normal(7, 3), ids], {})
    check_exact("gather", [normal(1, 1), np.zeros((3,), id_dtype)], {})


@pytest.mark.parametrize("ids,bad", [([1, -3, 9, 2], -3), ([4, 0, 5], 5), ([5], 5), ([2, 3, -1], -1),
                                     ([2**31 - 1, 0], 2**31 - 1)])
def test_gather_out_of_range_raises_with_the_first_bad_id(ids, bad, bounds_check):
    table = normal(5, 3)
    ids = np.array(ids, np.int32)
    b, _, outs = build_op_graph("gather", [table, ids], {})
    b.g.graph["outputs"] = outs
    compiled, _ = lower(b.g)
    message = re.escape(f"gather: id {bad} is outside [0, 5) (input_dim=5)")
    with pytest.raises(IndexRangeError, match=message) as error:
        compiled.run({"x0": table, "x1": ids})
    assert error.value.value == bad


def test_gather_of_int64_ids_beyond_int32():
    ids = np.array([1, 2**40], np.int64)
    b, _, outs = build_op_graph("gather", [normal(5, 3), ids], {})
    b.g.graph["outputs"] = outs
    compiled, _ = lower(b.g)
    with pytest.raises(IndexRangeError) as error:
        compiled.run({"x0": normal(5, 3), "x1": ids})
    assert error.value.value == 2**40


@pytest.mark.parametrize("ids", [[[0, 3], [3, 1]], [[2, 2, 2, 2]], [[4, 0, 4], [0, 4, 4]], [[0]]])
def test_scatter_add_accumulates_repeated_indices(ids, bounds_check):
    ids = np.array(ids, np.int32)
    upd = normal(*ids.shape, 3)
    got, expected, kernel = compile_op("scatter_add", [ids, upd], {"rows": 5})
    assert_close32(got[0], expected[0])
    assert "atomic out0[" in str(kernel)


def test_scatter_add_with_work_enough_for_the_cores_still_adds_every_row():
    """A loop of atomic adds is never split over the cores (its adds are plain on the CPU):
    split, two parts lost updates to the rows both hit (an embedding gradient of batch 256)."""
    ids = np.zeros((64, 400), np.int32)
    ids[:, ::2] = 1
    upd = np.ones((64, 400, 64), np.float32)
    for _ in range(3):
        got, expected, _ = compile_op("scatter_add", [ids, upd], {"rows": 3})
        np.testing.assert_array_equal(got[0], expected[0])


def test_scatter_add_is_gathers_gradient():
    from op_check import check_compiled
    check_compiled("gather", [normal(5, 3), np.array([[0, 4, 4], [2, 4, 0]], np.int32)])


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_check_index(dtype, bounds_check):
    labels = np.array([0, 3, 3, 1, 2], dtype)
    check_exact("check_index", [labels], {"limit": 4, "what": "my_loss"})
    for bad_labels, bad in (([0, 4, 3, -1], 4), ([-2, 0], -2), ([3, 3, 7], 7)):
        b, _, outs = build_op_graph("check_index", [np.array(bad_labels, dtype)], {"limit": 4, "what": "my_loss"})
        b.g.graph["outputs"] = outs
        compiled, _ = lower(b.g)
        with pytest.raises(IndexRangeError, match=re.escape(f"my_loss: label {bad} is outside [0, 4)")):
            compiled.run({"x0": np.array(bad_labels, dtype)})


def test_descriptions_dump_as_text():
    _, _, pad = compile_op("pad", [normal(2, 3, 4)], {"pads": ((0, 0), (1, 1), (0, 2)), "value": 0.0})
    _, _, gather = compile_op("gather", [normal(5, 3), np.array([1, 2], np.int32)], {})
    _, _, concat = compile_op("concatenate", [normal(2, 3), normal(2, 1)], {"axis": 1})
    assert str(pad).startswith("kernel k") and "parallel" in str(pad)
    assert re.search(r"if \(\(o1 >= 1\) && \(o1 < 4\)\):", str(pad))
    assert "fail 1 with cast<int64>(in1[i])" in str(gather)
    assert "in float32 in1[2]" in str(concat)
