"""Keeping the cyclic garbage collector's full collections off the objects a process already had.

Importing the compiler and compiling a model allocate tens of thousands of objects, and the
allocations trigger the collector's full collections, each of which also scans every object
the process already had (numpy's, networkx's and llvmlite's modules, the model): one such
collection took 12-18 ms of the 0.33 s from a new process to the end of W2's first train step
with a warm kernel cache, and it finds no garbage there.
"""
import gc
from contextlib import contextmanager


@contextmanager
def older_objects_frozen():
    """Within: objects that predate the block are in the permanent generation (gc.freeze), so
    collections scan only what the block allocates. After: they are moved back (gc.unfreeze),
    and nothing escapes collection. A process that froze objects itself (a pre-fork server) is
    left as it is: unfreezing would undo its freeze. Nesting and other threads' blocks are
    harmless: an inner block finds the count non-zero and does nothing."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
