"""conv2d and its input gradient by Winograd's F(2x2, 3x3) (codegen/llvm/winograd.py) against
the numpy references: forward and autodiff backward, fused and unfused, with the mode forced
on for geometries ``auto`` would leave to the direct kernels (few channels, small outputs),
odd output sizes (tiles overhanging the edge), edge panels of output channels, several blocks
of tile rows per image, bounds-checked builds, and the choice ``auto`` makes."""
import numpy as np
import pytest

from kcompiler.codegen.llvm import winograd
from kcompiler.ops.conv import conv_geometry
from op_check import assert_close32, check_compiled, use_bounds_checks, use_options

RNG = np.random.default_rng(3)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def attrs(padding):
    return dict(strides=(1, 1), padding=padding, dilation=(1, 1))


# (input shape, output channels, padding): forward, input gradient and kernel gradient
CASES = [
    ((2, 5, 5, 2), 3, "valid"),      # 3x3 output: one tile row and column overhang
    ((1, 6, 7, 3), 5, "same"),       # odd width only
    ((3, 9, 7, 16), 16, "same"),     # channels in whole vectors
    ((2, 8, 8, 20), 40, "same"),     # a full panel of output channels and an edge one
    ((1, 13, 13, 17), 33, "valid"),  # W2's second convolution's sizes, odd channel counts
    ((1, 22, 6, 4), 6, "same"),      # 11 tile rows: more than one block of tile rows
    ((1, 3, 62, 2), 3, "same"),      # 31 tile columns: blocks of one tile row
    ((1, 2, 2, 3), 2, "same"),       # one tile, most of its patch in the padding
]


@pytest.fixture
def counted(monkeypatch):
    """The kernels lowered by Winograd during the test, as "forward", "input gradient" and
    "kernel gradient" (the lowerings run in this process; without the disk cache, whose memo
    would skip them)."""
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    calls = []
    for what, name in [("forward", "lower_winograd_conv2d"), ("input gradient", "lower_winograd_conv2d_backward_input"),
                       ("kernel gradient", "lower_winograd_conv2d_backward_kernel")]:
        def spy(*args, lower=getattr(winograd, name), what=what, **kwargs):
            calls.append(what)
            return lower(*args, **kwargs)
        monkeypatch.setattr(winograd, name, spy)
    return calls


@pytest.mark.parametrize("x_shape,cout,padding", CASES)
def test_forward_and_input_gradient_equal_the_reference(monkeypatch, counted, x_shape, cout, padding):
    use_options(monkeypatch, winograd="on")
    check_compiled("conv2d", [normal(*x_shape), normal(3, 3, x_shape[-1], cout)], attrs(padding))
    assert set(counted) == {"forward", "input gradient", "kernel gradient"}


@pytest.mark.parametrize("x_shape,cout,padding", [CASES[0], CASES[3], CASES[5]])
def test_bounds_checked_builds(monkeypatch, counted, x_shape, cout, padding):
    use_bounds_checks(monkeypatch)
    use_options(monkeypatch, bounds_check=True, winograd="on")
    check_compiled("conv2d", [normal(*x_shape), normal(3, 3, x_shape[-1], cout)], attrs(padding))
    assert counted


def test_off_leaves_every_convolution_to_the_direct_kernels(monkeypatch, counted):
    use_options(monkeypatch, winograd="off")
    check_compiled("conv2d", [normal(1, 13, 13, 32), normal(3, 3, 32, 64)], attrs("valid"))
    assert not counted


def geometry(x_shape, cout, padding="valid"):
    return conv_geometry("conv2d", x_shape, (3, 3, x_shape[-1], cout), attrs(padding))


def test_auto_takes_winograd_where_it_saves_products():
    chosen = lambda *a: winograd.winograd_applies(geometry(*a))  # noqa: E731
    assert chosen((64, 13, 13, 32), 64)            # W2's second convolution: 0.53 of the products
    assert chosen((64, 32, 32, 16), 16, "same")    # ResNet-20's first stage: 0.44
    assert not chosen((64, 28, 28, 1), 32)         # one input channel: the products are too short
    assert not chosen((64, 5, 5, 64), 64)          # W2's third: 3x3 outputs on 2x2 tiles, 0.79
    assert not chosen((64, 13, 13, 8), 64)
    assert not winograd.winograd_applies(conv_geometry("conv2d", (1, 9, 9, 32), (3, 3, 32, 32),
                                                       dict(strides=(2, 2), padding="same", dilation=(1, 1))))
    assert winograd.products_ratio(geometry((1, 10, 10, 16), 16)) == pytest.approx(16 * 16 / (9 * 64))


def test_the_mode_is_validated():
    from kcompiler.options import Options
    with pytest.raises(ValueError, match="winograd must be one of auto, on, off"):
        Options(winograd="sometimes")
    assert Options.from_environment({"KCOMPILER_WINOGRAD": "OFF"}).winograd == "off"


def test_the_dump_names_the_choice():
    from kcompiler.codegen.llvm.backend import BACKEND
    from kcompiler.options import Options
    assert "Winograd F(2x2, 3x3) never" in " ".join(BACKEND.notes(Options(winograd="off")))
    assert "(winograd=auto)" in " ".join(BACKEND.notes(Options()))


def cnn(run_eagerly):
    """3x3 convolutions with biases and ReLU, one pooled: the kernel gradients with their bias
    sums (fused_bias_grad), the input gradients with the ReLU gradient as epilogue, the pooled
    forward keeping its activation in scratch."""
    from kcompiler import keras
    from kcompiler.keras import backend
    backend.clear_session()
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((10, 9, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Conv2D(17, 3, padding="same", activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=run_eagerly,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("fuse", [True, False])
def test_training_equals_the_reference_interpreter(monkeypatch, counted, fuse):
    import kcompiler
    use_options(monkeypatch, winograd="on")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 10, 9, 3)).astype(np.float32), rng.integers(0, 3, 5).astype(np.int32)
    model = cnn(run_eagerly=False)
    program = kcompiler.compile(model, training=True, batch_size=5, fuse=fuse)
    losses = [float(program.train_step(x, y)["loss"]) for _ in range(3)]
    reference = cnn(run_eagerly=True)
    expected = [float(reference.train_on_batch(x, y)) for _ in range(3)]
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        assert_close32(got, want, "weights after three steps")
    assert {"forward", "input gradient", "kernel gradient"} <= set(counted)
