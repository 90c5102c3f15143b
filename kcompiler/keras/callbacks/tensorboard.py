"""keras.callbacks.TensorBoard: event files that TensorBoard reads, written without TensorFlow
by the ``tensorboard`` package's own event-file writer and summary builders (the optional
extra ``tensorboard``: ``pip install 'kcompiler[tensorboard]'``; imported when the callback is
made, an ImportError naming the extra if it is missing).

What is written, with Keras 3's tags, steps and summary kinds (TF2 tensor summaries with the
scalars/histograms/images plugins' metadata, as ``tf.summary`` writes them):

``<log_dir>/train``
  - ``epoch_<name>`` at step = epoch, for the loss and each metric, ``epoch_learning_rate``
    and, with ``write_steps_per_second``, ``epoch_steps_per_second``;
  - with ``update_freq='batch'`` or N: ``batch_<name>`` (and ``batch_steps_per_second``)
    every N training batches at step = the global batch count;
  - with ``histogram_freq=N``: every N-th epoch, ``<weight path>/histogram`` (30 buckets; the
    path as Keras 3 names it, ``sequential/dense/kernel`` in a Sequential model)
    for every weight of every layer, and with ``write_images`` also ``<weight path>/image``
    (the weight drawn as Keras 3 draws it: clipped to [0, 1], at most 3 images);
  - with ``write_graph``: the model's config as ``keras`` (the graph_keras_model plugin:
    TensorBoard's conceptual graph), and after the first training batch the compiled training
    step as the run's graph (tensorboard_graph.py: IR ops as nodes, fused groups as name scopes,
    shapes and dtypes as attributes);
  - with ``profile_batch`` (N, or a range ``(start, stop)`` / ``"start,stop"`` of global batch
    counts): those batches run on a profiling build of the training step, and each writes
    ``kernel_cycles/<kernel>`` (CPU cycles each generated kernel took in that batch, from the
    kernel profiler, ``Program.kernel_cycles``) at step = the global batch count. Keras writes
    a TensorFlow profiler trace instead; this is kcompiler's own per-kernel profile.

``<log_dir>/validation``: the ``val_`` values as ``epoch_<name>`` at step = epoch and, after
each evaluation, ``evaluation_<name>_vs_iterations`` at step = the optimizer's iteration count.

Embeddings (``embeddings_freq``) are not written.
"""
import io
import os
import time

import numpy as np

from .callback import Callback

MAX_IMAGES = 3  # tf.summary.image's max_outputs default, which Keras uses


def _import_tensorboard():
    try:
        from tensorboard.compat.proto import event_pb2  # noqa: F401  (what the writer needs first)
    except ImportError as e:
        raise ImportError("keras.callbacks.TensorBoard writes its event files with the `tensorboard` package: "
                          "install kcompiler's `tensorboard` extra (pip install 'kcompiler[tensorboard]')") from e


def _scalar(value):
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _profile_range(profile_batch):
    """(start, stop) global batch counts from Keras's forms of ``profile_batch``; (0, 0): off."""
    message = ("TensorBoard: profile_batch must be a non-negative integer or a 2-tuple (or a string "
               f"'start,stop') of positive integers, start <= stop; got {profile_batch!r}")
    value = profile_batch
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(message) from None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        start = stop = int(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        start, stop = (int(v) for v in value)
    else:
        raise ValueError(message)
    if start < 0 or stop < start or (start == 0) != (stop == 0):
        raise ValueError(message)
    return start, stop


def keras_weight_path(model, weight):
    """The weight's path as Keras 3 names it: a Sequential or subclassed model builds its layers
    inside its own name scope ('sequential/dense/kernel'), a functional model does not."""
    if getattr(model, "_is_functional", False):
        return weight.path
    return f"{model.name}/{weight.path}"


def weight_image(weight):
    """A weight as Keras 3 draws it (``_log_weight_as_image``): images (k, h, w, 1) in float,
    or None for shapes it does not draw."""
    w = np.squeeze(np.asarray(weight, dtype=np.float32))
    if w.ndim == 1:  # a bias
        w = w.reshape(1, w.shape[0], 1, 1)
    elif w.ndim == 2:  # a Dense kernel, wide side horizontal
        if w.shape[0] > w.shape[1]:
            w = w.T
        w = w.reshape(1, w.shape[0], w.shape[1], 1)
    elif w.ndim == 3:  # a convolution kernel: one image per output channel
        w = np.transpose(w, (2, 0, 1))
        w = w.reshape(w.shape[0], w.shape[1], w.shape[2], 1)
    if w.ndim != 4 or w.shape[-1] not in (1, 3, 4):
        return None
    return w


def _png(image):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_summary(tag, images):
    """An images-plugin Summary as tf.summary.image writes it: [width, height, PNG...] of at most
    3 images, floats converted as tf.image.convert_image_dtype does (saturating)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.image import metadata
    from tensorboard.util import tensor_util
    pixels = np.clip(images * 255.5, 0, 255).astype(np.uint8)[:MAX_IMAGES]
    height, width = pixels.shape[1:3]
    content = [str(width).encode(), str(height).encode()] + [_png(image) for image in pixels]
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
                      tensor=tensor_util.make_tensor_proto(content, dtype=np.object_))
    return summary


def keras_model_summary(model):
    """The model's JSON config as the ``keras`` summary (graph_keras_model plugin), as Keras writes it."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "graph_keras_model"
    metadata.plugin_data.content = b"1"
    summary = summary_pb2.Summary()
    summary.value.add(tag="keras", metadata=metadata,
                      tensor=tensor_util.make_tensor_proto(model.to_json().encode(), dtype=np.object_))
    return summary


class _Writer:
    """One run's event file (tensorboard's EventFileWriter), summaries written at a step."""

    def __init__(self, logdir):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self._events = EventFileWriter(logdir)

    def summary(self, summary, step):
        from tensorboard.compat.proto import event_pb2
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalars(self, values, step):
        """{tag: number} at ``step``."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        if values:
            summary = summary_pb2.Summary()
            for tag, value in values.items():
                summary.value.extend(scalar_pb(tag, np.float32(value)).value)
            self.summary(summary, step)

    def graph(self, graph_def):
        from tensorboard.compat.proto import event_pb2
        self._events.add_event(event_pb2.Event(wall_time=time.time(), graph_def=graph_def.SerializeToString()))

    def flush(self):
        self._events.flush()

    def close(self):
        self._events.close()


class TensorBoard(Callback):
    chief_only = True  # rank 0 writes the event files

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0,
                 embeddings_metadata=None, **kwargs):
        super().__init__()
        _import_tensorboard()
        self.log_dir = os.fspath(log_dir)
        if not (isinstance(histogram_freq, (int, np.integer)) and histogram_freq >= 0):
            raise ValueError(f"TensorBoard: histogram_freq must be a non-negative integer, got {histogram_freq!r}")
        self.histogram_freq = int(histogram_freq)
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = write_steps_per_second
        self.update_freq = 1 if update_freq == "batch" else update_freq
        if self.update_freq != "epoch" and not (isinstance(self.update_freq, int) and self.update_freq > 0):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch', 'batch' or a positive integer, "
                             f"got {update_freq!r}")
        self.profile_batch = profile_batch
        self._start_batch, self._stop_batch = _profile_range(profile_batch)
        self.embeddings_freq = embeddings_freq
        self.embeddings_metadata = embeddings_metadata
        self._writers = {}
        self._global_train_batch = 0
        self._epoch_start_time = None
        self._epoch_start_iterations = 0
        self._profiling = False
        self._should_write_graph = False

    def set_model(self, model):
        super().set_model(model)
        self._train_dir = os.path.join(self.log_dir, "train")
        self._val_dir = os.path.join(self.log_dir, "validation")
        self._close_writers()
        self._should_write_graph = bool(self.write_graph)
        if self.write_graph and hasattr(model, "to_json"):
            self._writer("train").summary(keras_model_summary(model), 0)

    def _writer(self, which):
        if which not in self._writers:
            self._writers[which] = _Writer(self._train_dir if which == "train" else self._val_dir)
        return self._writers[which]

    def _close_writers(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _iterations(self):
        optimizer = getattr(self.model, "optimizer", None)
        return int(np.asarray(optimizer.iterations)) if optimizer is not None else 0

    def _steps(self):
        from ..steps import model_steps
        return model_steps(self.model)

    # ---- training batches --------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._global_train_batch = 0
        if self._start_batch:
            steps = self._steps()
            if steps.target != "cpu" or getattr(self.model, "run_eagerly", False):
                where = "with run_eagerly=True" if getattr(self.model, "run_eagerly", False) else \
                    f"on target {steps.target!r}"
                raise ValueError(f"TensorBoard: profile_batch={self.profile_batch!r} counts the cycles of the CPU "
                                 f"target's generated kernels; model '{self.model.name}' trains {where}. "
                                 f"Use profile_batch=0 there.")

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1
        if self.write_steps_per_second:
            self._batch_start_time = time.time()
        if self._start_batch and self._global_train_batch == self._start_batch:
            self._steps().profile_training(True)
            self._profiling = True

    def on_train_batch_end(self, batch, logs=None):
        if self._should_write_graph:
            self._write_step_graph()
            self._should_write_graph = False
        if self._profiling:
            self._write_kernel_cycles()
        if self.update_freq == "epoch" or self._global_train_batch % self.update_freq:
            return
        values = {f"batch_{k}": _scalar(v) for k, v in (logs or {}).items() if _scalar(v) is not None}
        if self.write_steps_per_second:
            values["batch_steps_per_second"] = 1.0 / max(time.time() - self._batch_start_time, 1e-9)
        self._writer("train").scalars(values, self._global_train_batch)

    def _write_step_graph(self):
        """The training step as compiled (its first specialisation's final stage) as the run's graph."""
        from .tensorboard_graph import graph_def
        program = self._steps().train_program
        kernels = {k.nodes[0]: k.name for k in program.kernels if len(getattr(k, "nodes", ())) == 1}
        self._writer("train").graph(graph_def(program.graph, kernels))

    def _write_kernel_cycles(self):
        program = self._steps().train_program
        cycles = {f"kernel_cycles/{name}": count for name, count in program.kernel_cycles()}
        self._writer("train").scalars(cycles, self._global_train_batch)
        if self._global_train_batch >= self._stop_batch:
            self._stop_profiling()

    def _stop_profiling(self):
        if self._profiling:
            self._steps().profile_training(False)
            self._profiling = False

    # ---- epochs and evaluations -----------------------------------------------------------------

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
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._write_weights(epoch)
        for writer in self._writers.values():
            writer.flush()

    def _write_weights(self, epoch):
        """Every weight of every layer as ``<path>/histogram`` (and ``<path>/image``), as Keras 3's
        ``_log_weights``."""
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb
        writer = self._writer("train")
        for layer in self.model.layers:
            for weight in layer.weights:
                name = keras_weight_path(self.model, weight).replace(":", "_")
                value = np.asarray(weight.numpy())
                writer.summary(histogram_pb(f"{name}/histogram", value), epoch)
                if self.write_images:
                    images = weight_image(value)
                    if images is not None:
                        writer.summary(image_summary(f"{name}/image", images), epoch)

    def on_test_end(self, logs=None):
        if getattr(self.model, "optimizer", None) is None or not logs:
            return
        values = {f"evaluation_{k}_vs_iterations": _scalar(v) for k, v in logs.items()}
        writer = self._writer("validation")
        writer.scalars({k: v for k, v in values.items() if v is not None}, self._iterations())
        writer.flush()

    def on_train_end(self, logs=None):
        self._stop_profiling()
        self._close_writers()
