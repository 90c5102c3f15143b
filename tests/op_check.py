"""The one helper every op test uses: build a one-op graph, run its numpy reference,
differentiate it with the autodiff pass, and check the VJP against central finite
differences in float64."""
import numpy as np
import pytest

from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.passes.autodiff import gradients


def build_op_graph(op, inputs, attrs, dtype_override=None):
    """Graph: inputs x0..xn -> op -> outputs (one per result). Returns (builder, input ids, output ids)."""
    b = GraphBuilder(name=op)
    ids = [b.input(f"x{i}", TensorType(a.shape, dtype_override if dtype_override and a.dtype.kind == "f"
                                       else str(a.dtype))) for i, a in enumerate(inputs)]
    nid = b.add(op, ids, attrs)
    t = b.type(nid)
    outs = [b.tuple_item(nid, i) for i in range(len(t))] if isinstance(t, tuple) else [nid]
    return b, ids, outs


def run_op(op, inputs, attrs=None):
    b, ids, outs = build_op_graph(op, inputs, attrs or {})
    b.g.graph["outputs"] = outs
    values, _ = run_reference(b.g, {f"x{i}": a for i, a in enumerate(inputs)})
    return values


def vjp_graph(op, inputs, attrs, wrt, dtype_override=None):
    """Graph computing sum_k <out_k, r_k> and its gradient w.r.t. inputs ``wrt`` by the autodiff pass.
    The cotangents r_k are graph inputs named r0, r1, ..."""
    b, ids, outs = build_op_graph(op, inputs, attrs, dtype_override)
    seeds = [b.input(f"r{k}", b.type(o)) for k, o in enumerate(outs)]
    total = None
    for o, r in zip(outs, seeds):
        term = b.op("sum", b.op("mul", o, r), axes=None, keepdims=False)
        total = term if total is None else b.op("add", total, term)
    grads = gradients(b, total, [ids[i] for i in wrt])
    b.g.graph["outputs"] = [total] + [g if g is not None else total for g in grads]
    return b


def check_vjp(op, inputs, attrs=None, wrt=None, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0):
    """Assert that the autodiff gradient of <op(inputs), r> matches central differences (float64)."""
    attrs = attrs or {}
    inputs64 = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in inputs]
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"]
    b = vjp_graph(op, inputs64, attrs, wrt, dtype_override="float64")
    rng = np.random.default_rng(seed)
    outs = run_op(op, inputs64, attrs)
    feeds = {f"x{i}": a for i, a in enumerate(inputs64)}
    feeds.update({f"r{k}": rng.standard_normal(np.shape(o)).astype(np.float64) for k, o in enumerate(outs)})
    values, _ = run_reference(b.g, feeds)
    analytic = values[1:]

    def objective(xs):
        f = dict(feeds)
        f.update({f"x{i}": a for i, a in enumerate(xs)})
        return float(run_reference(b.g, f)[0][0])

    for grad, i in zip(analytic, wrt):
        x = inputs64[i]
        numeric = np.zeros_like(x)
        for j in range(x.size):
            plus = [a.copy() for a in inputs64]
            minus = [a.copy() for a in inputs64]
            plus[i].flat[j] += eps
            minus[i].flat[j] -= eps
            numeric.flat[j] = (objective(plus) - objective(minus)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=rtol, atol=atol * max(1.0, np.abs(numeric).max()),
                                   err_msg=f"{op} gradient w.r.t. operand {i}")


def assert_close32(got, expected, what=""):
    """DESIGN §6 tolerance for float32 kernels: rtol 1e-4, atol 1e-5 * max(1, max|expected|)."""
    expected = np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size and expected.dtype.kind == "f" else 1.0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


# The backend the kernel helpers compile for: the `target` fixture (tests/conftest.py) runs
# each op test once per registered backend.
TARGET = ["cpu"]


def lower(g, fuse=True):
    """(executable, stages) of static graph ``g`` compiled for the current test target."""
    from kcompiler.pipeline import lower_graph
    return lower_graph(g, fuse=fuse, target=TARGET[0])


def run_compiled(g, feeds, fuse=True):
    """Compile static graph ``g`` for the current test target and run it once."""
    compiled, _ = lower(g, fuse=fuse)
    return compiled.run(feeds)


def check_compiled(op, inputs, attrs=None, wrt=None, seed=0):
    """Compiled float32 forward and backward (autodiff VJP graph) of ``op`` equal the
    numpy reference, fused and unfused."""
    attrs = attrs or {}
    inputs = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in inputs]
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"]
    b = vjp_graph(op, inputs, attrs, wrt)
    rng = np.random.default_rng(seed)
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    for nid in b.g.graph["inputs"]:
        name = b.g.nodes[nid]["attrs"]["name"]
        if name.startswith("r"):
            feeds[name] = rng.standard_normal(b.g.nodes[nid]["type"].shape).astype(np.float32)
    # forward outputs too
    fb, _, outs = build_op_graph(op, inputs, attrs)
    fb.g.graph["outputs"] = outs
    expected_fwd, _ = run_reference(fb.g, {f"x{i}": a for i, a in enumerate(inputs)})
    expected_bwd, _ = run_reference(b.g, feeds)
    for fuse in (True, False):
        got_fwd = run_compiled(fb.g, {f"x{i}": a for i, a in enumerate(inputs)}, fuse=fuse)
        for k, (g_, e_) in enumerate(zip(got_fwd, expected_fwd)):
            assert_close32(g_, e_, f"{op} forward output {k} (fuse={fuse})")
        got_bwd = run_compiled(b.g, feeds, fuse=fuse)
        # output 0, <out, r>, sums products of both signs: its float32 rounding scales with the
        # sum of their magnitudes, not with the (possibly cancelled, near-zero) result
        terms = sum(float(np.abs(np.asarray(o, np.float64) * feeds[f"r{k}"]).sum()) for k, o in enumerate(expected_fwd))
        np.testing.assert_allclose(got_bwd[0], expected_bwd[0], rtol=1e-4, atol=1e-5 * max(1.0, terms),
                                   err_msg=f"{op} backward output 0 = <out, r> (fuse={fuse})")
        for k, (g_, e_) in list(enumerate(zip(got_bwd, expected_bwd)))[1:]:
            assert_close32(g_, e_, f"{op} backward output {k} (fuse={fuse}; grads of {wrt})")


def use_options(monkeypatch, **changes):
    """Compile with the default options changed (e.g. bounds_check=True) for the rest of the
    test: the defaults are read from the environment once, so tests change the object."""
    from kcompiler import options
    monkeypatch.setattr(options, "_defaults", [options.default_options().replace(**changes)])


def use_bounds_checks(monkeypatch):
    """Compile bounds-checked builds (KCOMPILER_BOUNDS_CHECK=1) for the rest of the test; skipped
    on target 'cuda', which has none (its kernels are checked by running their emulation under
    AddressSanitizer: tests/cuda)."""
    if TARGET[0] == "cuda":
        pytest.skip("bounds-checked builds exist for target='cpu' only")
    use_options(monkeypatch, bounds_check=True)
