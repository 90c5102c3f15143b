"""One data-parallel training or evaluation step on this rank's shard of a global batch.

``train_step`` feeds the compiled step its shard and a ``StepCollective``, which the
executable calls between the step's two native calls (codegen/llvm/executable.py) with the
region the memory plan reserved: the gradients, each already scaled in the step by this
rank's share of the global batch, then the extra slots laid out as

    [status of rank 0, ..., status of rank N-1, samples, loss * samples, metric_1 * samples, ...]

One in-place ``Allreduce`` (sum) reduces them all. Afterwards the gradients are those of the
global batch's mean loss; a non-zero status of any rank stops every rank before the update
(the failed rank raises its own error, the others name it); the step's loss and metric
outputs are overwritten with their global means (sums over samples / global count), so the
logs of every rank equal those of one process running the global batch.

A rank whose shard is empty (a last global batch smaller than the number of ranks) still takes
part: it runs the step on one sample with a weight of 0 and a gradient share of 0.

Metrics that keep state across batches (Precision, AUC, ...) are traced so that their state's
increments are operands of the same all-reduce (passes/training.py) and their results are
computed after it, from the summed state: those outputs come out global by themselves.

``test_step`` runs the inference-mode step the same way: its all-reduce holds the metric
states' increments and the extra slots.
"""
import numpy as np

from ..errors import KCompilerError
from .sharding import shard_bounds


class DistributedStepError(KCompilerError):
    """The step failed on another rank: no rank applied its update."""


class StepCollective:
    """The call between a split step's two native calls, for one step of one rank. ``outputs``
    are those the first call computed (the loss, batch metrics)."""

    def __init__(self, comm, local_count, global_count):
        self.comm = comm
        self.local_count = local_count
        self.gradient_scale = local_count / global_count

    def __call__(self, region, extras, status, outputs):
        from .mpi import mpi
        world, rank = self.comm.size, self.comm.rank
        if len(extras) < world + 1 + len(outputs):
            raise KCompilerError(f"this step was compiled for fewer ranks than the job's {world}")
        extras[:] = 0.0
        extras[rank] = 1.0 if status else 0.0
        extras[world] = self.local_count
        if not status:
            for i, out in enumerate(outputs):
                extras[world + 1 + i] = float(out) * self.local_count
        self.comm.Allreduce(mpi().IN_PLACE, region, op=mpi().SUM)
        failed = [r for r in range(world) if extras[r] != 0]
        if status:
            return  # the caller raises this rank's own error
        if failed:
            raise DistributedStepError(f"the training step failed on rank{'s' if len(failed) > 1 else ''} "
                                       f"{', '.join(map(str, failed))} of {world} (see that rank's error); "
                                       "no rank updated its weights")
        for i, out in enumerate(outputs):
            out[...] = extras[world + 1 + i] / extras[world]


def _global_count(xs):
    return len(xs[0])


def _part(value, lo, hi):
    """Rows [lo, hi) of an array, or of each array of a list (several outputs' labels/weights)."""
    if value is None:
        return None
    return [None if v is None else v[lo:hi] for v in value] if isinstance(value, (list, tuple)) else value[lo:hi]


def _shard(xs, y, sample_weight, rank, world):
    """(inputs, labels, weights, local count) of this rank's part of a global batch; an empty
    part becomes the first sample with a weight of 0 (local count 0). Labels and weights may
    be lists, one per labelled output."""
    n = _global_count(xs)
    lo, hi = shard_bounds(n, rank, world)
    if hi == lo:
        zero = np.zeros(1, np.float32)
        weights = [zero] * len(y) if isinstance(y, (list, tuple)) else zero
        return [a[:1] for a in xs], _part(y, 0, 1), weights, 0
    return [a[lo:hi] for a in xs], _part(y, lo, hi), _part(sample_weight, lo, hi), hi - lo


def _own_part(comm, xs, y, sample_weight):
    """A batch this rank already holds alone (a Sequence's batch r + k world, a generator's
    batch): (inputs, labels, weights, local count, global count); an empty one becomes one
    zero-weight sample."""
    count = _global_count(xs)
    total = comm.allreduce(count)
    if count:
        return xs, y, sample_weight, count, total
    filler = [np.zeros((1,) + a.shape[1:], a.dtype) for a in xs]
    labels = ([np.zeros((1,) + a.shape[1:], a.dtype) for a in y] if isinstance(y, (list, tuple))
              else np.zeros((1,) + y.shape[1:], y.dtype))
    zero = np.zeros(1, np.float32)
    return filler, labels, [zero] * len(y) if isinstance(y, (list, tuple)) else zero, 0, total


def _parts(comm, xs, y, sample_weight, presharded):
    if presharded:
        return _own_part(comm, xs, y, sample_weight)
    local_xs, local_y, local_w, count = _shard(xs, y, sample_weight, comm.rank, comm.size)
    return local_xs, local_y, local_w, count, _global_count(xs)


def train_step(comm, program, xs, y, sample_weight, presharded=False):
    """One training step of ``program`` on this rank's shard of the global batch (xs, y,
    sample_weight), or, ``presharded``, on this rank's own batch (the global batch is every
    rank's together). Returns (logs, samples in the global batch)."""
    local_xs, local_y, local_w, count, total = _parts(comm, xs, y, sample_weight, presharded)
    collective = StepCollective(comm, count, total)
    return program.train_step(local_xs[0] if len(local_xs) == 1 else local_xs, local_y, local_w,
                              collective=collective), total


def test_step(comm, program, xs, y, sample_weight, presharded=False):
    """Keras's test step over the global batch: each rank's shard (or own batch), its all-reduce
    (the metric states' increments and the loss and metric sums) between the step's two native
    calls. Returns (logs, samples in the global batch)."""
    local_xs, local_y, local_w, count, total = _parts(comm, xs, y, sample_weight, presharded)
    return program.test_step(local_xs[0] if len(local_xs) == 1 else local_xs, local_y, local_w,
                             collective=StepCollective(comm, count, total)), total


def broadcast_variables(comm, variables):
    """Every rank's ``variables`` take rank 0's values (in place: compiled steps hold their buffers)."""
    for var in variables:
        value = np.array(var.numpy(), order="C")  # a copy, 0-d kept
        comm.Bcast(value, root=0)
        var.assign(value)
