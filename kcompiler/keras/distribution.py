"""keras.distribution: data-parallel training across processes (Keras 3's names).

    from kcompiler import keras
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    model = ...; model.compile(...); model.fit(x, y, batch_size=64)   # under: mpirun -n 2 python train.py

or, as with tf.distribute, ``with keras.distribution.DataParallel().scope():`` around building
and compiling the model (``compile`` remembers the distribution in effect). Every rank runs the
unchanged script. ``fit``'s ``batch_size`` is the global batch: each rank computes the forward
and backward of its shard (kcompiler/distribute/), the gradients are summed with one
all-reduce inside the step, and every rank applies the same update. The initial weights (and
the optimizer's state) are broadcast from rank 0 when the model's steps are made (the first
fit, evaluate or train_on_batch after compile), and the random generator's state when the
distribution is set, so that every rank draws the same shuffles. Losses and metrics in the logs are global; evaluation is sharded the same way;
``predict`` runs whole on every rank. The progress bar and the callbacks that write files
(``chief_only``: ModelCheckpoint, TensorBoard) act on rank 0 only.

Metrics that keep state across batches (Precision, AUC, ...) sum their state over the ranks
inside the step. Not supported under DataParallel (a clear error at compile or fit):
``run_eagerly=True``, the CUDA target. The moving
statistics of BatchNormalization are averaged over the ranks (equal to one process's only
where the shards' statistics combine linearly); dropout masks are drawn per shard.

Needs the optional extra ``distributed`` (mpi4py and an MPI library); without it
``DataParallel()`` raises ImportError naming it.
"""
import contextlib

_current = [None]


class DataParallel:
    """Data parallelism over the ranks of the MPI job this process belongs to (``devices`` is
    accepted for Keras 3's signature: one rank is one device here)."""

    def __init__(self, devices=None):
        from ..distribute.mpi import world
        self.comm = world()
        self.devices = devices

    @property
    def rank(self):
        return self.comm.rank

    @property
    def world_size(self):
        return self.comm.size

    @property
    def is_chief(self):
        return self.comm.rank == 0

    @contextlib.contextmanager
    def scope(self):
        """This distribution for the models compiled inside the block."""
        previous = _current[0]
        set_distribution(self)
        try:
            yield self
        finally:
            _current[0] = previous

    def check_model(self, model):
        """Raises for what a data-parallel step does not support."""
        if getattr(model, "run_eagerly", False):
            raise NotImplementedError(f"model '{model.name}': run_eagerly=True is not supported under "
                                      "keras.distribution.DataParallel")
        if getattr(model, "compile_target", "cpu") != "cpu":
            raise NotImplementedError(f"model '{model.name}': keras.distribution.DataParallel runs on the CPU "
                                      f"target only, got target={model.compile_target!r} (docs/distributed.md)")

    def broadcast_weights(self, model):
        """Rank 0's weights and optimizer state on every rank."""
        from ..distribute.step import broadcast_variables
        optimizer = getattr(model, "optimizer", None)
        broadcast_variables(self.comm, list(model.weights) + (list(optimizer.variables) if optimizer else []))

    def train_step(self, program, xs, y, sample_weight, presharded=False):
        """The step's logs; ``last_global_count``: the samples of its global batch."""
        from ..distribute.step import train_step
        logs, self.last_global_count = train_step(self.comm, program, xs, y, sample_weight, presharded)
        return logs

    def test_step(self, program, xs, y, sample_weight, presharded=False):
        from ..distribute.step import test_step
        logs, self.last_global_count = test_step(self.comm, program, xs, y, sample_weight, presharded)
        return logs

    def shard_source(self, data):
        """A Sequence/PyDataset as this rank sees it: batches rank, rank + world, ... (equal
        step counts on every rank; sharding.EvenShards)."""
        from ..distribute.sharding import EvenShards
        return EvenShards(data, self.rank, self.world_size)

    def __repr__(self):
        return f"<DataParallel rank {self.rank} of {self.world_size}>"


def set_distribution(value):
    """Make ``value`` (a DataParallel, or None) the distribution of the models compiled and
    trained from now on. Every rank takes rank 0's random generator state, so that the seeded
    shuffles agree."""
    if value is not None and not isinstance(value, DataParallel):
        raise TypeError(f"set_distribution expects a keras.distribution.DataParallel or None, got {value!r}")
    if value is not None and value.world_size > 1:
        from . import backend
        state = value.comm.bcast(backend.rng().bit_generator.state, root=0)
        backend.rng().bit_generator.state = state
    _current[0] = value


def distribution():
    """The distribution set by set_distribution (or the enclosing scope), or None."""
    return _current[0]


def model_distribution(model):
    """The distribution a model trains under: the one it was compiled in, else the current one."""
    return getattr(model, "compile_distribution", None) or _current[0]


def list_devices(device_type=None):
    """Keras 3's device list: one entry per rank of the job (``cpu:<rank>``)."""
    from ..distribute.mpi import world
    return [f"cpu:{r}" for r in range(world().size)]


def is_chief():
    """Whether this process prints and writes files: rank 0 of the MPI job once a DataParallel
    was made (whether or not it is still current: a scope may have ended), else always."""
    from ..distribute.mpi import _world
    return not _world or _world[0].rank == 0
