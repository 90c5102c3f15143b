"""Op inputs kept away from each op's singular points (shared by reference and kernel tests)."""
import numpy as np

RNG = np.random.default_rng(0)
UNARY_INPUTS = {
    "log": lambda: RNG.uniform(0.5, 2.0, (3, 4)), "sqrt": lambda: RNG.uniform(0.5, 2.0, (3, 4)),
    "rsqrt": lambda: RNG.uniform(0.5, 2.0, (3, 4)), "reciprocal": lambda: RNG.uniform(0.5, 2.0, (3, 4)),
    "log1p": lambda: RNG.uniform(-0.5, 2.0, (3, 4)),
    "relu6": lambda: RNG.uniform(0.2, 5.8, (3, 4)) * RNG.choice([-1, 1], (3, 4)),
    "hard_sigmoid": lambda: RNG.uniform(-2.8, 2.8, (3, 4)),
}


def away_from_zero(x):
    return np.where(np.abs(x) < 0.1, 0.3, x)
