"""Caches of compiled specialisations (per batch size, label type, input shapes) and the lock
under which a missing one is made.

``SpecializationCache`` keeps at most ``max_entries`` entries and drops the least recently
used one when a new one comes: each entry holds a compiled engine, so an unbounded cache
grows with every new batch size. A dropped specialisation comes back cheaply when it is
needed again (its object code is in the disk cache). The bound is
``Options.max_specializations`` (``$KCOMPILER_MAX_SPECIALIZATIONS``, default 8).

Thread safety: a lookup that hits takes no lock (single dict operations are atomic in
CPython), so concurrent steps never wait for each other. A miss is traced and compiled
under ``compile_lock``, one process-wide re-entrant lock: the trace builders are global
state (keras/backend.py), and a thread that waited for the lock finds the entry the
other thread made instead of compiling it again (``get_or_make``). An entry evicted
while another thread still runs it stays alive until that run returns (the caller holds
a reference).
"""
import threading
from collections import OrderedDict

import numpy as np

# process-wide caches of eager one-op and gradient graphs: many ops and shapes, not one model's batch sizes
EAGER_GRAPHS_PER_PROCESS = 256

compile_lock = threading.RLock()


def max_specializations():
    """The default bound: ``Options.max_specializations`` ($KCOMPILER_MAX_SPECIALIZATIONS, else 8)."""
    from kcompiler.options import default_options
    return default_options().max_specializations


class SpecializationCache:
    """key -> compiled specialisation, at most ``max_entries`` of them, least recently used
    evicted first.

    ``recent`` is (key, entry) of the entry used last. A step compares its key with it
    before anything else: a run of steps with one batch size then costs no bookkeeping
    (that entry is the most recently used already), only one tuple comparison."""

    def __init__(self, max_entries=None):
        self.max_entries = max_specializations() if max_entries is None else int(max_entries)
        if self.max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries!r}")
        self._entries = OrderedDict()
        self.recent = (object(), None)  # a key nothing equals

    def get_or_make(self, key, make, *args):
        """The entry for ``key``, now the most recently used; on a miss ``make(*args)`` builds
        it, under ``compile_lock`` and only if no other thread made it meanwhile."""
        entries = self._entries
        value = entries.get(key)
        if value is not None:
            try:
                entries.move_to_end(key)
            except KeyError:  # evicted by another thread since: this caller still holds it
                pass
            self.recent = (key, value)
            return value
        with compile_lock:
            value = entries.get(key)
            if value is None:
                value = make(*args)
                self[key] = value
            self.recent = (key, value)
            return value

    def get(self, key, default=None):
        """The entry for ``key`` (now the most recently used), or ``default``."""
        value = self._entries.get(key, default)
        if value is not default:
            try:
                self._entries.move_to_end(key)
            except KeyError:  # evicted by another thread since
                pass
            self.recent = (key, value)
        return value

    def __setitem__(self, key, value):
        with compile_lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            self.recent = (key, value)

    def __len__(self):
        return len(self._entries)

    def values(self):
        return list(self._entries.values())


def unit_weights(cache, n, max_sizes=16):
    """float32 ones of length ``n`` (the sample weights of a batch given none), kept in
    ``cache`` (a dict by length) that is emptied when it would hold more than ``max_sizes``."""
    ones = cache.get(n)
    if ones is None:
        if len(cache) >= max_sizes:
            cache.clear()
        ones = cache[n] = np.ones(n, np.float32)
    return ones
