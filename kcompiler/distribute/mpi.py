"""The MPI communicator, through mpi4py (the optional extra ``distributed``), imported lazily.

``world()`` is COMM_WORLD. Using it also makes an uncaught exception on any rank abort the
whole job (as ``python -m mpi4py`` does): otherwise the other ranks would wait forever in
their next collective for a rank that is gone. ``mpirun`` then stops every rank and names
the rank that failed; the hook prints the traceback with the rank first.
"""
import sys

_world = []


def mpi():
    """The mpi4py.MPI module; ImportError naming the extra to install when it is missing."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("keras.distribution.DataParallel needs mpi4py and an MPI library: install the "
                          "`distributed` extra (pip install 'kcompiler[distributed]', which brings mpi4py and "
                          "Open MPI), then launch the script with `mpirun -n N python train.py`") from e
    return MPI


def world():
    """MPI.COMM_WORLD, with the abort-on-uncaught-exception hook installed once."""
    if not _world:
        comm = mpi().COMM_WORLD
        if comm.size > 1:
            _abort_on_uncaught_exception(comm)
        _world.append(comm)
    return _world[0]


def _abort_on_uncaught_exception(comm):
    previous = sys.excepthook

    def hook(kind, value, traceback):
        sys.stderr.write(f"kcompiler: rank {comm.rank} of {comm.size} raised an uncaught exception; "
                         "aborting every rank of the job\n")
        previous(kind, value, traceback)
        sys.stderr.flush()
        comm.Abort(1)

    sys.excepthook = hook
