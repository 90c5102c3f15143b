"""Keeping the cyclic garbage collector's full collections off the objects a process already had.

Importing the compiler and compiling a model allocate tens of thousands of objects, and the
allocations trigger the collector's full collections, each of which also scans every object
the process already had (numpy's, networkx's and llvmlite's modules, the model): one such
collection took 12-18 ms of the 0.33 s from a new process to the end of W2's first train step
with a warm kernel cache, and it finds no garbage there.

At exit the same holds, and more: the interpreter's final collections scan every object left,
to free cycles the operating system is about to reclaim anyway. On 2026-12-05's slower host the
exit took ~65 ms of that warm start's ~0.40 s, and freezing at exit took ~45 ms off it.
"""
import atexit
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


@atexit.register
def _leave_the_heap_to_the_os():
    """Freeze every object when the interpreter exits, so that its final collections scan
    nothing. Runs after the atexit handlers registered after this module's import (the user's).
    Objects are still freed by their reference counts as the modules are torn down (a file held
    by a module's global is flushed and closed as before); only objects in reference cycles at
    exit are left to the operating system, their __del__ not run, which CPython never promises
    for objects alive at exit."""
    gc.freeze()
