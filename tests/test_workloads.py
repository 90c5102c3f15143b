"""The shared workloads W1–W6 (benchmarks/workloads.py) compile and train on generated kernels
exactly as the reference interpreter runs them (small batches: the models are the real ones)."""
import numpy as np
import pytest

from benchmarks.workloads import WORKLOADS


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_trains_like_the_reference(name):
    w = WORKLOADS[name]
    compiled, reference = w.build(), w.build()
    reference.set_weights(compiled.get_weights())
    reference.compile(optimizer=w.optimizer(), loss=w.loss(), run_eagerly=True)
    x, y = w.data(batch_size=3)
    for _ in range(2):
        got, want = compiled.train_on_batch(x, y), reference.train_on_batch(x, y)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max(initial=0))))
