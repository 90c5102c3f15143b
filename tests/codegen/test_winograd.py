"""conv2d and both of its gradients by Winograd's F(2x2, 3x3) and F(4x4, 3x3)
(codegen/llvm/winograd.py) against the numpy references: forward and autodiff backward, fused
and unfused, with each algorithm forced for geometries ``auto`` would leave to the direct
kernels (few channels, small outputs), output sizes the tiles overhang, edge panels of output
channels, several blocks of tile rows per image, blocks of several images, bounds-checked
builds, a CNN's training, and the choice ``auto`` makes."""
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
    ((7, 6, 6, 16), 16, "same"),     # blocks of several whole images, the last one short
]


@pytest.fixture
def counted(monkeypatch):
    """The kernels lowered by Winograd during the test, as "forward", "input gradient", "kernel
    gradient" and "both gradients" (fused_conv2d_grads) (the lowerings run in this process;
    without the disk cache, whose memo would skip them)."""
    monkeypatch.setenv("KCOMPILER_NO_CACHE", "1")
    calls = []
    forward, gradients = winograd.lower_winograd_conv2d, winograd.lower_winograd_conv2d_gradients

    def spy_forward(*args, **kwargs):
        calls.append("forward")
        return forward(*args, **kwargs)

    def spy_gradients(*args, input_grad=None, kernel_grad=None, **kwargs):
        calls.append({(True, False): "input gradient", (False, True): "kernel gradient",
                      (True, True): "both gradients"}[input_grad is not None, kernel_grad is not None])
        return gradients(*args, input_grad=input_grad, kernel_grad=kernel_grad, **kwargs)

    monkeypatch.setattr(winograd, "lower_winograd_conv2d", spy_forward)
    monkeypatch.setattr(winograd, "lower_winograd_conv2d_gradients", spy_gradients)
    return calls


@pytest.mark.parametrize("algorithm", ["2x2", "4x4"])
@pytest.mark.parametrize("x_shape,cout,padding", CASES)
def test_forward_and_both_gradients_equal_the_reference(monkeypatch, counted, x_shape, cout, padding, algorithm):
    use_options(monkeypatch, winograd=algorithm)
    check_compiled("conv2d", [normal(*x_shape), normal(3, 3, x_shape[-1], cout)], attrs(padding))
    # fused, the two gradients are one kernel; unfused, one each
    assert set(counted) == {"forward", "input gradient", "kernel gradient", "both gradients"}


@pytest.mark.parametrize("algorithm", ["2x2", "4x4"])
@pytest.mark.parametrize("x_shape,cout,padding", [CASES[0], CASES[3], CASES[5], CASES[8]])
def test_bounds_checked_builds(monkeypatch, counted, x_shape, cout, padding, algorithm):
    use_bounds_checks(monkeypatch)
    use_options(monkeypatch, bounds_check=True, winograd=algorithm)
    check_compiled("conv2d", [normal(*x_shape), normal(3, 3, x_shape[-1], cout)], attrs(padding))
    assert counted


def test_off_leaves_every_convolution_to_the_direct_kernels(monkeypatch, counted):
    # (W2's second convolution, which auto gives F(4x4, 3x3))
    use_options(monkeypatch, winograd="off")
    check_compiled("conv2d", [normal(1, 13, 13, 32), normal(3, 3, 32, 64)], attrs("valid"))
    assert not counted


def geometry(x_shape, cout, padding="valid"):
    return conv_geometry("conv2d", x_shape, (3, 3, x_shape[-1], cout), attrs(padding))


def test_auto_takes_the_algorithm_with_the_fewest_products_where_it_saves_enough():
    chosen = lambda *a: winograd.winograd_algorithm(geometry(*a))  # noqa: E731
    assert chosen((64, 13, 13, 32), 64) is winograd.F4            # W2's second: 11x11 on 4x4 tiles, 0.30
    assert chosen((64, 5, 5, 64), 64) is None                     # W2's third: F4 one tile, F2 0.79
    assert chosen((64, 6, 6, 64), 64) is winograd.F2              # W3's third: 4 tiles of 2x2 (0.44)
    assert chosen((64, 32, 32, 16), 16, "same") is winograd.F4    # ResNet-20's first stage: 0.25
    assert chosen((64, 8, 8, 16), 16) is winograd.F2              # 6x6 outputs: 0.44 on either: the smaller
    assert chosen((64, 8, 8, 64), 64, "same") is winograd.F2      # ResNet-20's last stage: 4 tiles of 4x4 only
    assert chosen((64, 16, 16, 32), 32, "same") is winograd.F4    # its middle stage: 16 of 4x4
    assert chosen((64, 28, 28, 1), 32) is None                    # one input channel: products too short
    assert chosen((64, 13, 13, 8), 64) is None
    assert chosen((64, 7, 7, 16), 16) is None                     # 5x5 outputs: 0.64 on either
    assert chosen((64, 3, 3, 32), 32) is None                     # one output pixel
    assert winograd.winograd_algorithm(conv_geometry("conv2d", (1, 9, 9, 32), (3, 3, 32, 32),
                                                     dict(strides=(2, 2), padding="same", dilation=(1, 1)))) is None
    assert winograd.products_ratio(geometry((1, 10, 10, 16), 16), winograd.F2) == pytest.approx(16 * 16 / (9 * 64))
    assert winograd.products_ratio(geometry((1, 10, 10, 16), 16), winograd.F4) == pytest.approx(4 * 36 / (9 * 64))


@pytest.mark.parametrize("algorithm", [winograd.F2, winograd.F4])
def test_the_transform_matrices_compute_the_convolution(algorithm):
    # exact arithmetic: A^T [(G g G^T) * (B^T d B)] A is the correlation of d with g
    from fractions import Fraction
    a = algorithm
    rng = np.random.default_rng(1)
    d = [[Fraction(int(v)) for v in row] for row in rng.integers(-9, 9, (a.alpha, a.alpha))]
    g = [[Fraction(int(v)) for v in row] for row in rng.integers(-9, 9, (3, 3))]
    mul = lambda x, y: [[sum(x[i][k] * y[k][j] for k in range(len(y))) for j in range(len(y[0]))]  # noqa: E731
                        for i in range(len(x))]
    t = lambda x: [list(r) for r in zip(*x)]  # noqa: E731
    u, v = mul(mul(a.g, g), t(a.g)), mul(mul(a.bt, d), t(a.bt))
    y = mul(mul(a.at, [[u[i][j] * v[i][j] for j in range(a.alpha)] for i in range(a.alpha)]), t(a.at))
    assert y == [[sum(d[i + p][j + q] * g[p][q] for p in range(3) for q in range(3)) for j in range(a.m)]
                 for i in range(a.m)]


def test_the_mode_is_validated():
    from kcompiler.options import Options
    with pytest.raises(ValueError, match="winograd must be one of auto, off, 2x2, 4x4"):
        Options(winograd="sometimes")
    assert Options.from_environment({"KCOMPILER_WINOGRAD": "OFF"}).winograd == "off"


def test_the_dump_names_the_choice():
    from kcompiler.codegen.llvm.backend import BACKEND
    from kcompiler.options import Options
    assert "Winograd never" in " ".join(BACKEND.notes(Options(winograd="off")))
    assert "(winograd=auto)" in " ".join(BACKEND.notes(Options()))


def test_blocks_of_small_images_span_several_images():
    """Where an image has fewer tiles than a block, a block takes the whole images whose tiles
    fill the forward tile's MR rows best; the kernel gradient takes as many as its depth holds."""
    w2_second = geometry((64, 13, 13, 32), 64)  # 11x11 outputs: 9 tiles of 4x4, 36 of 2x2
    assert winograd._images_per_block(w2_second, winograd.F4, 8) == 4  # 36 tiles: 36 of 40 rows
    assert winograd._images_per_block(w2_second, winograd.F2, 8) == 1  # 36 >= BLOCK_TILES: rows
    assert winograd._images_per_block(geometry((64, 8, 8, 16), 16), winograd.F4, 8) == 2  # 4 tiles
    assert winograd._weight_images_per_block(w2_second, winograd.F4) == 4  # 48 // 9 = 5, to a power of 2
    assert winograd._weight_images_per_block(geometry((64, 32, 32, 16), 16, "same"), winograd.F4) == 1


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


@pytest.mark.parametrize("algorithm", ["2x2", "4x4"])
@pytest.mark.parametrize("fuse", [True, False])
def test_training_equals_the_reference_interpreter(monkeypatch, counted, fuse, algorithm):
    import kcompiler
    use_options(monkeypatch, winograd=algorithm)
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
    if fuse:  # each layer's two gradients (with the ReLU gradient and the bias gradient) in one kernel
        assert {"forward", "both gradients"} <= set(counted) and "input gradient" not in counted
    else:
        assert {"forward", "input gradient", "kernel gradient"} <= set(counted) and "both gradients" not in counted
