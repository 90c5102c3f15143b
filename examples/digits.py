"""Real handwritten digits for the demo: scikit-learn's 1,797 8x8 scans (they ship inside the
installed package, no download), resized to MNIST's 28x28 by bilinear interpolation and
scaled to [0, 1], as (x_train, y_train), (x_test, y_test)."""
import numpy as np


def _resize(images, size):
    """Bilinear resize of (n, h, w) images to (n, size, size) — data preparation only."""
    n, h, w = images.shape
    def coords(src, dst):
        c = (np.arange(dst) + 0.5) * src / dst - 0.5
        c = np.clip(c, 0, src - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, c - lo
    ylo, yhi, wy = coords(h, size)
    xlo, xhi, wx = coords(w, size)
    top = images[:, ylo][:, :, xlo] * (1 - wx) + images[:, ylo][:, :, xhi] * wx
    bottom = images[:, yhi][:, :, xlo] * (1 - wx) + images[:, yhi][:, :, xhi] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def load_data(test_fraction=0.2, seed=0):
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = _resize(digits.images.astype(np.float32) / 16.0, 28)[..., None].astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_test = int(len(x) * test_fraction)
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])
