"""The reference architectures of examples/ (Transformer classifier, MobileNet-style
classifier, U-Net, 1-D convnet) train 20 compiled steps to Keras 3's trajectory: each step's
loss and the weights after the last step, from the same initial weights and data (fixtures:
tests/fixtures/keras/architectures/, made by tests/fixtures/make_attention_fixtures.py with the
same build functions), on every target; on 'cuda' (emulated without a GPU) the two models
with the new ops: attention and the depthwise convolution."""
import importlib

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.keras import backend
from keras_fixtures import cases, indexed, load
from tests.test_training_vs_keras import make_optimizer

KIND = "architectures"
# (the emulated CUDA step of the U-Net alone takes about a minute here)
CPU_ONLY = ("unet_segmenter", "conv1d_text_classifier")


@pytest.mark.parametrize("name", cases(KIND))
def test_twenty_steps_follow_keras(name, target):
    if target == "cuda" and name in CPU_ONLY:
        pytest.skip("its layers' CUDA kernels are checked in tests/cuda; the emulated steps' time goes to the new ops")
    case = load(KIND, name)
    spec = case["spec"]
    backend.clear_session()
    model = importlib.import_module(f"examples.{spec['module']}").build_model(keras, **spec["build"])
    model.set_weights(indexed(case, "w_init"))
    model.compile(optimizer=make_optimizer(spec["compile"]["optimizer"]), loss=spec["compile"]["loss"])
    bs = spec["batch_size"]
    program = kcompiler.compile(model, training=True, batch_size=bs, target=target)
    x, y = case["x"], case["y"]
    losses = [program.train_step(x[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs])["loss"] for i in range(20)]
    np.testing.assert_allclose(losses, case["losses"], rtol=1e-3, atol=1e-5)
    assert np.abs(case["losses"] - case["losses"][0]).max() > 0.05   # the trajectory really moves
    for k, (got, expected) in enumerate(zip(model.get_weights(), indexed(case, "w_final"))):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4, err_msg=f"weight {k}")
