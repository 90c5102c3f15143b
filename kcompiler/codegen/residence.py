"""Variables whose value a device keeps, and the protocol that keeps host and device coherent.

A variable (keras.Variable) holds its value in a numpy array, which CPU programs read and
write in place. A device backend (CUDA) keeps a copy of it in device memory, its
``DeviceCopy``, which every program of that device reads and its training steps update
without the host: weights and optimizer state stay on the device across steps. The variable
points to it (``variable._device_copy``; None while no device holds it). At any time one side
may be newer than the other:

    device newer   a device step committed an update. The host copy is refreshed (one
                   device->host copy of that variable) before anything reads it on the host:
                   Variable.numpy()/value/np.asarray (so get_weights, save, callbacks), and
                   every CPU step (it reads the host arrays directly).
    host newer     the host value was written: Variable.assign (so set_weights, load_weights,
                   metric resets) or a CPU step's state update. The device copy is refreshed
                   (one host->device copy) before the next device step.

A ``DeviceCopy`` implements ``download()`` and ``upload()`` (blocking copies of the whole
value); the two sets below say which copies are stale on which side. Reads and writes
through ``Variable`` call ``host_read``/``host_written``; a device step calls
``sync_device`` before it runs and ``device_written`` with the copies it updated once it has
committed; a CPU step calls ``sync_host`` (its variables) before and ``host_written_variables``
after, only once some copy exists in the process (``in_use``), so CPU-only programs pay
nothing.

Writing into the array that ``Variable.numpy()`` returns, instead of assigning, is not seen
by the device (as with a Keras variable, whose ``numpy()`` is a copy).
"""
import threading
import weakref

# Weak: a copy whose variable and programs are gone leaves the sets (and frees device memory).
_lock = threading.RLock()
_newer_on_device = weakref.WeakSet()   # copies a device step updated since the host last read them
_newer_on_host = weakref.WeakSet()     # copies whose host value was written since the device last read it
_in_use = [False]


def in_use():
    """Whether any variable of this process has had a device copy."""
    return _in_use[0]


def registered(copy):
    """Record that ``copy`` (just made, equal to its host value) exists."""
    _in_use[0] = True
    return copy


def host_read(copy):
    """The host is about to read ``copy``'s variable: download it if the device is newer."""
    if copy in _newer_on_device:
        with _lock:
            if copy in _newer_on_device:
                copy.download()
                _newer_on_device.discard(copy)


def host_written(copy):
    """``copy``'s variable was written on the host: the device copy is stale."""
    with _lock:
        _newer_on_device.discard(copy)
        _newer_on_host.add(copy)


def host_written_variables(variables):
    """A CPU step wrote ``variables`` (its state updates)."""
    for variable in variables:
        copy = getattr(variable, "_device_copy", None)
        if copy is not None:
            host_written(copy)


def device_written(copies):
    """A device step committed updates of ``copies``: their host values are stale."""
    with _lock:
        _newer_on_device.update(copies)


def sync_host(variables):
    """Before a CPU step that reads ``variables``: their host values current."""
    if _newer_on_device:
        for variable in variables:
            copy = getattr(variable, "_device_copy", None)
            if copy is not None:
                host_read(copy)


def sync_device():
    """Before a device step: every device copy current."""
    if _newer_on_host:
        with _lock:
            for copy in list(_newer_on_host):
                copy.upload()
            _newer_on_host.clear()
