"""Stateful metrics in CUDA steps (the CPU emulation of the CUDA kernels on machines without a
GPU): the metric math is keras.ops traced into the step, so the CUDA backend runs it like the
CPU's, and fit's History equals Keras's (the fixture of tests/keras/test_metrics_vs_keras.py)."""
import shutil

import numpy as np
import pytest

from keras_fixtures import load
from op_check import use_options
from tests.keras.test_metrics_vs_keras import fit_fixture_model

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ for the CUDA emulation")


def test_auc_precision_topk_iou_r2_f1_in_cuda_steps_match_keras(monkeypatch):
    use_options(monkeypatch, cuda_emulation=True)
    case = load("metrics", "fit_stateful_metrics")
    model = fit_fixture_model(case, target="cuda")
    history = model.fit(case["x"], case["y"], batch_size=16, epochs=2, shuffle=False, verbose=0,
                        validation_data=(case["x_val"], case["y_val"])).history
    assert sorted(history) == sorted(case["spec"]["history_keys"])
    for key in history:
        np.testing.assert_allclose(np.array(history[key], np.float32), case[f"history_{key}"], rtol=1e-3,
                                   atol=1e-5, err_msg=key)
