"""Runs a graph on concrete data: the engine behind eager calls.

Until the compiler core lands, eager calls run on the numpy reference interpreter,
and every caller goes through ``run_graph`` so the engine is swapped in one place.
"""
import numpy as np

from kcompiler.ir.interpreter_reference import run_reference

_step = [0]


def run_graph(g, feeds):
    """Run ``g`` with input arrays ``feeds`` (name -> array); returns (outputs, updates)."""
    if "rng_step" in g.graph and "rng_step" not in feeds:
        feeds = dict(feeds, rng_step=np.asarray(_step[0], dtype=np.int64))
        _step[0] += 1
    return run_reference(g, feeds)
