"""Runs a static graph on concrete data: the engine behind eager calls.

Graphs are compiled to generated kernels on first use and the compiled form is
kept on the graph, so a layer or op called again with the same shapes reuses it.
A graph using an op that has no CPU kernel yet runs on the numpy reference
interpreter instead, and the graph's notes say so (it is never reported as compiled).
``use_reference(True)`` forces the reference interpreter (what run_eagerly=True uses).
Several threads may run one graph at once; it is compiled once, under ``compile_lock``.
"""
import numpy as np

from kcompiler.errors import UnsupportedError
from kcompiler.ir.interpreter_reference import run_reference

from .specializations import compile_lock

_step = [0]
_force_reference = [False]


def next_step():
    """The next value of the eager dropout counter."""
    _step[0] += 1
    return np.asarray(_step[0] - 1, dtype=np.int64)


def use_reference(flag):
    _force_reference[0] = bool(flag)


def _compiled(g):
    entry = g.graph.get("_compiled")
    if entry is None:
        with compile_lock:
            entry = g.graph.get("_compiled")  # compiled by another thread while this one waited
            if entry is None:
                from kcompiler.pipeline import lower_graph
                try:
                    entry, _ = lower_graph(g)
                except UnsupportedError as e:
                    entry = "reference"
                    g.graph.setdefault("notes", []).append(f"runs on the reference interpreter: {e}")
                g.graph["_compiled"] = entry
    return entry


def run_graph(g, feeds):
    """Run ``g`` with input arrays ``feeds`` (name -> array); returns (outputs, updates).
    Compiled graphs write their state updates into the variables themselves (updates = {})."""
    if "rng_step" in g.graph and "rng_step" not in feeds:
        feeds = dict(feeds, rng_step=np.asarray(_step[0], dtype=np.int64))
        _step[0] += 1
    if _force_reference[0]:
        return run_reference(g, feeds)
    compiled = _compiled(g)
    if compiled == "reference":
        return run_reference(g, feeds)
    return compiled.run(feeds), {}
