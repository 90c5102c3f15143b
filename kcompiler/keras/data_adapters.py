"""The data fit/evaluate/predict take, as batches: one adapter per kind of input.

- ``ArrayAdapter``: arrays in memory (numpy arrays, tensors, nested Python lists; lists or dicts
  of them for several inputs or outputs), sliced into batches (``Batches``), shuffled or not.
- ``GeneratorAdapter``: a Python generator or iterator yielding ``x``, ``(x,)``, ``(x, y)`` or
  ``(x, y, sample_weight)`` batches; one iterator for the whole fit, as in Keras (an epoch ends
  after ``steps_per_epoch`` batches, or when it is exhausted).
- ``SequenceAdapter``: ``keras.utils.Sequence`` (tf.keras 2) and ``keras.utils.PyDataset``
  (Keras 3): ``__len__`` batches, ``__getitem__(i)``, ``on_epoch_end()`` after each epoch.

Every adapter yields ``(step, batch)`` for one epoch from ``epoch()``, a batch being
``(x, y, sample_weight)`` as the user's data hold them (the loops convert and check them), and
knows its number of steps when it can (``steps``; None for a generator without
``steps_per_epoch``). Batches may differ in size: each size gets its own compiled
specialisation, as the last partial batch of arrays does. A data-parallel runner shards the
data by giving each rank the batches ``epoch()`` yields for it.

Prefetching (``workers``, ``use_multiprocessing``, ``max_queue_size``, as tf.keras documents them
for fit; a PyDataset takes them in its constructor, as in Keras 3): with ``workers > 1`` a
Sequence's batches are fetched by a pool of threads, or with ``use_multiprocessing=True`` of
processes forked at each epoch, at most ``max_queue_size`` ahead and delivered in order; a
generator (``workers > 1`` or ``use_multiprocessing``) is run in one background thread that
fills a queue of ``max_queue_size`` (a generator cannot be shared between processes). An
exception raised while fetching a batch is raised again in the caller, with the worker's
traceback attached (a process pool's ``RemoteTraceback``)."""
import concurrent.futures
import math
import multiprocessing
import queue
import threading
import warnings

import numpy as np

from . import backend

_RAN_OUT = ("Your input ran out of data; interrupting training. Make sure that your dataset or generator can "
            "generate at least `steps_per_epoch * epochs` batches.")


class PyDataset:
    """Keras 3's base class for data given batch by batch: subclass it, call
    ``super().__init__(**kwargs)`` and define ``__len__`` (the number of batches),
    ``__getitem__(index)`` (a batch: ``x``, ``(x, y)`` or ``(x, y, sample_weight)``) and
    optionally ``on_epoch_end``. ``workers``/``use_multiprocessing``/``max_queue_size`` say how
    fit prefetches its batches."""

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    @property
    def workers(self):
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self):
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self):
        return getattr(self, "_max_queue_size", 10)

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index)")

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__()")

    @property
    def num_batches(self):
        return len(self)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass


class Sequence(PyDataset):
    """tf.keras 2's ``keras.utils.Sequence``: the same contract as PyDataset; fit's ``workers``,
    ``use_multiprocessing`` and ``max_queue_size`` say how its batches are prefetched."""

    def __init__(self, *args, **kwargs):  # tf.keras 2's Sequence took no arguments
        super().__init__()


def is_sequence(data):
    return isinstance(data, PyDataset) or (
        hasattr(data, "__getitem__") and hasattr(data, "__len__") and hasattr(data, "on_epoch_end")
        and not isinstance(data, (np.ndarray, list, tuple, dict)))


def is_generator(data):
    """A Python generator or iterator (not arrays, lists, dicts or a Sequence)."""
    return hasattr(data, "__next__") and hasattr(data, "__iter__") and not isinstance(data, np.ndarray)


def unpack_batch(batch, what="a batch"):
    """A generator's or Sequence's batch as (x, y, sample_weight): ``x``, ``(x,)``, ``(x, y)`` or
    ``(x, y, sample_weight)``."""
    if isinstance(batch, tuple):
        if not 1 <= len(batch) <= 3:
            raise ValueError(f"{what} must be x, (x,), (x, y) or (x, y, sample_weight); got a tuple of "
                             f"{len(batch)} elements")
        return tuple(batch) + (None,) * (3 - len(batch))
    return batch, None, None


class Batches:
    """Batch indices for array data, as Keras 3's epoch iterator yields them: in order, or
    reshuffled at each pass over the data; with ``steps_per_epoch`` a pass may span epochs,
    and an epoch ends early (with Keras's warning) when the data run out."""

    def __init__(self, n, batch_size, shuffle=False, steps_per_epoch=None):
        if n == 0:
            raise ValueError("no data: the input arrays have 0 samples")
        self.n, self.batch_size, self.shuffle = n, int(batch_size), shuffle
        self.num_batches = math.ceil(n / self.batch_size)
        self.steps_per_epoch = steps_per_epoch
        self.steps = steps_per_epoch or self.num_batches
        self._order = None  # this pass's batches
        self._next = 0

    def _new_pass(self):
        starts = range(0, self.n, self.batch_size)
        if self.shuffle == "batch":
            perm = backend.rng().permutation(self.num_batches)
            self._order = [slice(starts[i], starts[i] + self.batch_size) for i in perm]
        elif self.shuffle:
            perm = backend.rng().permutation(self.n)
            self._order = [perm[s:s + self.batch_size] for s in starts]
        else:
            self._order = [slice(s, s + self.batch_size) for s in starts]
        self._next = 0

    def epoch(self):
        """Yields (step, index) for one epoch."""
        if self._order is None or self.steps_per_epoch is None:
            self._new_pass()
        for step in range(self.steps):
            if self._next >= self.num_batches:
                if self.steps_per_epoch:
                    warnings.warn(_RAN_OUT, stacklevel=3)
                break
            index = self._order[self._next]
            self._next += 1
            yield step, index
        if self._next >= self.num_batches:
            self._order = None


def take(data, index):
    """Rows ``index`` of ``data``: an array, None, or a list of arrays (or None)."""
    if data is None:
        return None
    if isinstance(data, list):
        return [None if a is None else a[index] for a in data]
    return data[index]


def batch_size_of(index, n):
    """The number of samples a batch index selects."""
    if isinstance(index, slice):
        return len(range(*index.indices(n)))
    return len(index)


class ArrayAdapter:
    """Arrays already converted by the loop: ``xs`` (a list, one per input), ``y`` (an array, a
    list of one per labelled output, or None) and ``sample_weight`` (an array or None)."""

    converted = True
    presharded = False  # under data-parallel training: the batches are this rank's own (loops.py)

    def __init__(self, xs, y, sample_weight, batch_size, shuffle=False, steps_per_epoch=None):
        self.xs, self.y, self.sample_weight = xs, y, sample_weight
        self.n = len(xs[0])
        self.batches = Batches(self.n, batch_size, shuffle, steps_per_epoch)
        self.steps = self.batches.steps

    def epoch(self):
        for step, index in self.batches.epoch():
            yield step, (take(self.xs, index), take(self.y, index), take(self.sample_weight, index))

    def on_epoch_end(self):
        pass


class GeneratorAdapter:
    """A Python generator or iterator of batches (see the module docstring)."""

    converted = False
    presharded = False  # under data-parallel training: the batches are this rank's own (loops.py)

    def __init__(self, generator, steps=None, workers=1, use_multiprocessing=False, max_queue_size=10):
        self.steps = steps
        self._source = iter(generator)
        self._prefetch = workers > 1 or use_multiprocessing
        self._queue = None
        self._max_queue_size = max(1, int(max_queue_size))
        self._exhausted = None  # the StopIteration that ended the generator
        self._closed = threading.Event()  # tells the background thread to stop

    def _next_batch(self):
        """The generator's next batch, or a StopIteration instance when it is exhausted."""
        if self._exhausted is not None:
            return self._exhausted
        if not self._prefetch:
            try:
                return next(self._source)
            except StopIteration as stop:
                return stop
        if self._queue is None:  # one thread runs the generator for the whole fit
            self._queue = queue.Queue(self._max_queue_size)
            threading.Thread(target=self._fill, daemon=True, name="kcompiler-generator").start()
        kind, value = self._queue.get()
        if kind == "error":
            raise value
        return value

    def _fill(self):
        while not self._closed.is_set():
            try:
                item = ("batch", next(self._source))
            except StopIteration as stop:
                self._put(("batch", stop))
                return
            except BaseException as e:  # re-raised by the consumer, with this thread's traceback
                self._put(("error", e))
                return
            self._put(item)

    def _put(self, item):
        """Queue ``item``, waiting for room until the adapter is closed (an endless generator's
        thread then ends instead of waiting forever on a full queue)."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def epoch(self):
        step = 0
        while self.steps is None or step < self.steps:
            batch = self._next_batch()
            if isinstance(batch, StopIteration):
                self._exhausted = batch
                if self.steps is not None or step == 0:
                    warnings.warn(_RAN_OUT, stacklevel=3)
                return
            yield step, unpack_batch(batch, "a batch of the generator")
            step += 1

    def on_epoch_end(self):
        pass

    def close(self):
        self._closed.set()


_worker_sequence = None  # in a worker process: the Sequence it was started with


def _start_worker(sequence):
    global _worker_sequence
    _worker_sequence = sequence


def _fetch_in_worker(index):
    return _worker_sequence[index]


class SequenceAdapter:
    """A ``keras.utils.Sequence`` or ``PyDataset`` (see the module docstring)."""

    converted = False
    presharded = False  # under data-parallel training: the batches are this rank's own (loops.py)

    def __init__(self, sequence, steps=None, shuffle=False, workers=1, use_multiprocessing=False,
                 max_queue_size=10):
        if isinstance(sequence, PyDataset) and not isinstance(sequence, Sequence):  # Keras 3: its own settings
            workers, use_multiprocessing = sequence.workers, sequence.use_multiprocessing
            max_queue_size = sequence.max_queue_size
        self.sequence = sequence
        # a dataset that orders its own batches (image_dataset_from_directory's) ignores fit's shuffle, as Keras's
        shuffle = shuffle and not getattr(sequence, "orders_its_own_batches", False)
        num_batches = len(sequence)
        if num_batches == 0:
            raise ValueError(f"{type(sequence).__name__}: len() is 0, there are no batches")
        self.batches = Batches(num_batches, 1, "batch" if shuffle else False, steps)
        self.steps = self.batches.steps
        self._workers = max(1, int(workers or 1))
        self._use_multiprocessing = bool(use_multiprocessing)
        self._max_queue_size = max(1, int(max_queue_size))
        self._pool = None

    def _executor(self):
        """The pool that fetches this epoch's batches and the function it runs, or (None, None).
        Threads share the Sequence and last the whole fit; processes are forked at each epoch
        (as tf.keras 2's OrderedEnqueuer does) and inherit the Sequence as ``on_epoch_end`` left
        it, without pickling it (a class defined in a test or in __main__ works too)."""
        if self._workers == 1 and not self._use_multiprocessing:
            return None, None
        if not self._use_multiprocessing:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self._workers,
                                                                   thread_name_prefix="kcompiler-data")
            return self._pool, self.sequence.__getitem__
        self.close()
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        self._pool = concurrent.futures.ProcessPoolExecutor(self._workers, mp_context=context,
                                                            initializer=_start_worker, initargs=(self.sequence,))
        return self._pool, _fetch_in_worker

    def epoch(self):
        indices = [(step, index.start) for step, index in self.batches.epoch()]
        pool, fetch = self._executor()
        what = f"batch of {type(self.sequence).__name__}"
        if pool is None:
            for step, i in indices:
                yield step, unpack_batch(self.sequence[i], f"{what} {i}")
            return
        pending = []
        ahead = iter(indices)
        for step, i in ahead:  # start max_queue_size fetches, then one more per batch taken
            pending.append((step, i, pool.submit(fetch, i)))
            if len(pending) >= self._max_queue_size:
                break
        try:
            while pending:
                step, i, future = pending.pop(0)
                batch = future.result()  # a worker's exception is raised here
                for next_step, j in ahead:
                    pending.append((next_step, j, pool.submit(fetch, j)))
                    break
                yield step, unpack_batch(batch, f"{what} {i}")
        finally:
            for _, _, future in pending:
                future.cancel()

    def on_epoch_end(self):
        self.sequence.on_epoch_end()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
