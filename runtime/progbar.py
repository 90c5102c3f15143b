"""The tf.keras 2 progress bar, byte for byte.

    1/8 [==>...........................] - ETA: 12s - loss: 2.3017 - accuracy: 0.1182
    8/8 [==============================] - 12s 1s/step - loss: 2.2236 - accuracy: 0.2927 - val_loss: 1.8295
    5/5 - 1s - loss: 0.4729 - accuracy: 0.8462                      (verbose=2: one line when done)

On an interactive terminal each update rewrites the line (backspaces and a carriage
return, padded with spaces over a longer previous line), at most every ``interval``
seconds except the final one. Elsewhere (a pipe, a log file) each shown update starts
a new line instead, as tf.keras does for non-interactive output.

The values given to ``update`` are displayed as they are (the fit loop already passes
running means); names not in ``stateful_metrics`` would be averaged over steps, as
tf.keras's Progbar does.
"""
import os
import sys
import time

import numpy as np


def is_interactive():
    """Whether progress updates can rewrite the current line (a terminal or a notebook)."""
    stdout = sys.stdout
    return bool((hasattr(stdout, "isatty") and stdout.isatty()) or "ipykernel" in sys.modules
                or "PYCHARM_HOSTED" in os.environ)


def format_duration(seconds, unit_name):
    """' 1s/step', ' 12ms/step' or ' 950us/step' (tf.keras's rounding)."""
    if seconds >= 1 or seconds == 0:
        return f" {seconds:.0f}s/{unit_name}"
    if seconds >= 1e-3:
        return f" {seconds * 1e3:.0f}ms/{unit_name}"
    return f" {seconds * 1e6:.0f}us/{unit_name}"


def format_eta(eta):
    if eta > 3600:
        return "%d:%02d:%02d" % (eta // 3600, (eta % 3600) // 60, eta % 60)
    if eta > 60:
        return "%d:%02d" % (eta // 60, eta % 60)
    return "%ds" % eta


class Progbar:
    """tf.keras.utils.Progbar: ``update(current, values, finalize)``, ``add(n, values)``."""

    clock = staticmethod(time.time)  # tests replace it to get deterministic timings

    def __init__(self, target, width=30, verbose=1, interval=0.05, stateful_metrics=None, unit_name="step",
                 dynamic_display=None):
        self.target = target
        self.width = width
        self.verbose = verbose
        self.interval = interval
        self.unit_name = unit_name
        # kept as given when it is a set already (ProgbarLogger passes one that holds every name)
        self.stateful_metrics = stateful_metrics if isinstance(stateful_metrics, set) else set(stateful_metrics or ())
        self._dynamic_display = is_interactive() if dynamic_display is None else dynamic_display
        self._total_width = 0
        self._seen_so_far = 0
        self._values = {}        # name -> [sum of value * steps, steps]
        self._values_order = []
        self._start = self.clock()
        self._last_update = 0
        self._time_after_first_step = None

    def update(self, current, values=None, finalize=None):
        if finalize is None:
            finalize = False if self.target is None else current >= self.target
        for k, v in values or ():
            if k not in self._values:
                self._values_order.append(k)
            if k in self.stateful_metrics:
                self._values[k] = [v, 1]
            else:
                # max(..., 1): a finalizing update at the step already seen still counts once
                base = max(current - self._seen_so_far, 1)
                total = self._values.setdefault(k, [0.0, 0])
                total[0] += v * base
                total[1] += base
        self._seen_so_far = current

        now = self.clock()
        info = " - %.0fs" % (now - self._start)
        if self.verbose == 1:
            if now - self._last_update < self.interval and not finalize:
                return
            prev_total_width = self._total_width
            message = ("\b" * prev_total_width + "\r") if self._dynamic_display else "\n"
            if self.target is not None:
                bar = "%*d/%d [" % (len(str(self.target)), current, self.target)
                prog_width = int(self.width * float(current) / self.target)
                if prog_width > 0:
                    bar += "=" * (prog_width - 1) + (">" if current < self.target else "=")
                bar += "." * (self.width - prog_width) + "]"
            else:
                bar = "%7d/Unknown" % current
            self._total_width = len(bar)
            message += bar
            time_per_unit = self._estimate_step_duration(current, now)
            if self.target is None or finalize:
                info += format_duration(time_per_unit, self.unit_name)
            else:
                info = " - ETA: " + format_eta(time_per_unit * (self.target - current))
            for k in self._values_order:
                avg = self._average(k)
                info += f" - {k}: {avg:.4f}" if abs(avg) > 1e-3 else f" - {k}: {avg:.4e}"
            self._total_width += len(info)
            if prev_total_width > self._total_width:
                info += " " * (prev_total_width - self._total_width)
            if finalize:
                info += "\n"
            self._write(message + info)
        elif self.verbose == 2 and finalize:
            line = "%*d/%d" % (len(str(self.target)), current, self.target) + info
            for k in self._values_order:
                avg = self._average(k)
                line += f" - {k}: {avg:.4f}" if avg > 1e-3 else f" - {k}: {avg:.4e}"
            self._write(line + "\n")
        self._last_update = now

    def add(self, n, values=None):
        self.update(self._seen_so_far + n, values)

    def _average(self, k):
        """The running mean; a metric with several values (F1Score per class) shows their mean,
        as tf.keras's Progbar does."""
        total, count = self._values[k]
        return float(np.mean(np.asarray(total, dtype=np.float64) / max(1, count)))

    def _estimate_step_duration(self, current, now):
        """Seconds per step, leaving out the first (compilation, warm-up) once there are others."""
        if not current:
            return 0
        if self._time_after_first_step is not None and current > 1:
            time_per_unit = (now - self._time_after_first_step) / (current - 1)
        else:
            time_per_unit = (now - self._start) / current
        if current == 1:
            self._time_after_first_step = now
        return time_per_unit

    @staticmethod
    def _write(text):
        sys.stdout.write(text)
        sys.stdout.flush()
