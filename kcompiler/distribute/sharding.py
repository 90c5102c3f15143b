"""Which part of the data each rank takes.

Arrays: every rank draws the same (seeded) shuffle, so every rank knows the global batch;
rank r takes the r-th of ``world`` nearly equal contiguous parts of it (sizes differ by at
most one; a global batch smaller than the number of ranks leaves some ranks empty).
Batch sources indexed by batch (keras.utils.Sequence / PyDataset): rank r takes batches
r, r + world, r + 2 world, ... (``EvenShards``: every rank gets the same number of steps,
a rank with no batch left in the last round an empty one, so no rank waits for a
collective the others never join).
"""


def shard_bounds(n, rank, world):
    """[lo, hi) of rank ``rank``'s part of a global batch of ``n`` samples."""
    base, rest = divmod(n, world)
    lo = rank * base + min(rank, rest)
    return lo, lo + base + (1 if rank < rest else 0)


def shard_batch_indices(num_batches, rank, world):
    """The indices of the batches rank ``rank`` takes from a source of ``num_batches`` batches."""
    return range(rank, num_batches, world)


class ShardedSequence:
    """A Sequence-like batch source (``len`` and ``[i]``) seen by one rank: its batches
    r, r + world, ... (the last steps of an epoch may leave some ranks one batch short)."""

    def __init__(self, sequence, rank, world):
        self.sequence, self.rank, self.world = sequence, rank, world

    def __len__(self):
        return len(shard_batch_indices(len(self.sequence), self.rank, self.world))

    def __getitem__(self, index):
        return self.sequence[shard_batch_indices(len(self.sequence), self.rank, self.world)[index]]

    def on_epoch_end(self):
        hook = getattr(self.sequence, "on_epoch_end", None)
        if hook is not None:
            hook()


class EvenShards(ShardedSequence):
    """ShardedSequence with ceil(batches / world) batches on every rank: in the last round a
    rank whose batch index is past the end gets an empty batch shaped like the round's first
    batch (distribute/step.py runs it as a zero-weight sample with a gradient share of 0)."""

    def __len__(self):
        return -(-len(self.sequence) // self.world)

    def __getitem__(self, index):
        j = self.rank + index * self.world
        if j < len(self.sequence):
            return self.sequence[j]
        return _empty_like(self.sequence[index * self.world])


def _empty_like(batch):
    """The batch's structure (tuples, lists, dicts of arrays) with no samples."""
    import numpy as np
    if isinstance(batch, dict):
        return {k: _empty_like(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_empty_like(v) for v in batch)
    return None if batch is None else np.asarray(batch)[:0]
