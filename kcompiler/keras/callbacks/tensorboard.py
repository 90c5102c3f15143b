"""keras.callbacks.TensorBoard: scalar summaries in event files that TensorBoard reads,
written without TensorFlow.

An event file is a sequence of TFRecords (length as uint64, masked CRC32C of the length,
the bytes, masked CRC32C of the bytes), each holding one serialized ``Event`` protobuf:
first ``file_version: "brain.Event:2"``, then one ``Summary`` with a ``simple_value`` per
scalar. The few protobuf fields needed are encoded by hand below.

As Keras 3 does: ``<log_dir>/train`` gets ``epoch_<name>`` at step = epoch (with the
learning rate), and with ``update_freq='batch'`` or N also ``batch_<name>`` every N
training batches at step = the global batch count; ``<log_dir>/validation`` gets the
``val_`` values as ``epoch_<name>`` and, after each evaluation, ``evaluation_<name>_vs_iterations``
at step = the optimizer's iteration count. Histograms, images, graphs, embeddings and the
profiler are not written.
"""
import itertools
import os
import socket
import struct
import time

import numpy as np

from .callback import Callback

# ---- CRC32C (Castagnoli), as TFRecord frames use it ----------------------------------------


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data):
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# ---- protobuf: the fields of Event and Summary that scalars use ------------------------------

def _varint(n):
    n &= (1 << 64) - 1  # negative int64s take ten bytes, as protobuf encodes them
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(field, payload):
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time, step=0, file_version=None, scalars=()):
    """Event{wall_time=1 (double), step=2 (int64), file_version=3 (string), summary=5 (Summary)};
    Summary{value=1 (Value)}; Value{tag=1 (string), simple_value=2 (float)}."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step:
        out += _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5)
                                            + struct.pack("<f", float(value)))
                          for tag, value in scalars)
        out += _length_delimited(5, values)
    return out


def _fields(data):
    """Decode one protobuf message into [(field number, wire type, value)]."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            length, i = _read_varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"event file: unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


def _read_varint(data, i):
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def read_events(path):
    """[{'wall_time', 'step', 'file_version'?, 'scalars': {tag: value}}] from an event file,
    checking every record's CRCs."""
    with open(path, "rb") as f:
        data = f.read()
    events, i = [], 0
    while i < len(data):
        header = data[i:i + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[i + 8:i + 12])
        payload = data[i + 12:i + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
        if masked_crc32c(header) != length_crc or masked_crc32c(payload) != payload_crc:
            raise ValueError(f"event file {path}: corrupt record at byte {i}")
        i += 16 + length
        event = {"wall_time": 0.0, "step": 0, "scalars": {}}
        for field, _, value in _fields(payload):
            if field == 1:
                event["wall_time"] = struct.unpack("<d", value)[0]
            elif field == 2:
                event["step"] = value - (1 << 64) if value >= 1 << 63 else value
            elif field == 3:
                event["file_version"] = value.decode()
            elif field == 5:
                for _, _, summary_value in _fields(value):
                    parts = {f: v for f, _, v in _fields(summary_value)}
                    if 2 in parts:
                        event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        events.append(event)
    return events


class EventFileWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``logdir``."""

    _counter = itertools.count()

    def __init__(self, logdir):
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(self._counter)}.v2")
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "wb")
        self._file.write(tfrecord(encode_event(time.time(), file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, values, step):
        """Write {tag: value} as one event at ``step``."""
        if values:
            self._file.write(tfrecord(encode_event(time.time(), step, scalars=list(values.items()))))

    def flush(self):
        self._file.flush()

    def close(self):
        if not self._file.closed:
            self._file.close()


def _scalar(value):
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


class TensorBoard(Callback):
    chief_only = True  # rank 0 writes the event files

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0,
                 embeddings_metadata=None, **kwargs):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = histogram_freq
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = write_steps_per_second
        self.update_freq = 1 if update_freq == "batch" else update_freq
        if self.update_freq != "epoch" and not (isinstance(self.update_freq, int) and self.update_freq > 0):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch', 'batch' or a positive integer, "
                             f"got {update_freq!r}")
        self.profile_batch = profile_batch
        self.embeddings_freq = embeddings_freq
        self.embeddings_metadata = embeddings_metadata
        self._writers = {}
        self._global_train_batch = 0
        self._epoch_start_time = None
        self._epoch_start_iterations = 0

    def set_model(self, model):
        super().set_model(model)
        self._train_dir = os.path.join(self.log_dir, "train")
        self._val_dir = os.path.join(self.log_dir, "validation")
        self._close_writers()

    def _writer(self, which):
        if which not in self._writers:
            self._writers[which] = EventFileWriter(self._train_dir if which == "train" else self._val_dir)
        return self._writers[which]

    def _close_writers(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _iterations(self):
        optimizer = getattr(self.model, "optimizer", None)
        return int(np.asarray(optimizer.iterations)) if optimizer is not None else 0

    def on_train_begin(self, logs=None):
        self._global_train_batch = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1
        if self.write_steps_per_second:
            self._batch_start_time = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch" or self._global_train_batch % self.update_freq:
            return
        values = {f"batch_{k}": _scalar(v) for k, v in (logs or {}).items() if _scalar(v) is not None}
        if self.write_steps_per_second:
            values["batch_steps_per_second"] = 1.0 / max(time.time() - self._batch_start_time, 1e-9)
        self._writer("train").scalars(values, self._global_train_batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start_time = time.time()
        self._epoch_start_iterations = self._iterations()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {f"epoch_{k}": _scalar(v) for k, v in logs.items() if not k.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "learning_rate"):
            train["epoch_learning_rate"] = _scalar(optimizer.learning_rate)
        if self.write_steps_per_second and self._epoch_start_time is not None:
            seconds = max(time.time() - self._epoch_start_time, 1e-9)
            train["epoch_steps_per_second"] = (self._iterations() - self._epoch_start_iterations) / seconds
        self._writer("train").scalars({k: v for k, v in train.items() if v is not None}, epoch)
        val = {f"epoch_{k[4:]}": _scalar(v) for k, v in logs.items() if k.startswith("val_")}
        if val:
            self._writer("validation").scalars({k: v for k, v in val.items() if v is not None}, epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_test_end(self, logs=None):
        if getattr(self.model, "optimizer", None) is None or not logs:
            return
        values = {f"evaluation_{k}_vs_iterations": _scalar(v) for k, v in logs.items()}
        writer = self._writer("validation")
        writer.scalars({k: v for k, v in values.items() if v is not None}, self._iterations())
        writer.flush()

    def on_train_end(self, logs=None):
        self._close_writers()
