"""Core layers (Dense, Activation, Flatten, Reshape, Dropout, Embedding, merges,
BatchNormalization) run eagerly on the fixtures' weights and inputs equal real Keras."""
import numpy as np
import pytest

from keras_fixtures import cases, indexed, load, make_layer

CORE = {"Dense", "Activation", "Flatten", "Reshape", "Dropout", "Embedding", "Concatenate", "Add",
        "BatchNormalization"}


def assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("name", cases("layers", CORE))
def test_layer_forward_matches_keras(name):
    case = load("layers", name)
    spec = case["spec"]
    layer = make_layer(spec)
    xs = indexed(case, "x") or [case["x"]]
    inputs = xs if len(xs) > 1 else xs[0]
    shapes = [x.shape for x in xs]
    layer.build(shapes if len(xs) > 1 else shapes[0])
    layer.built = True
    weights = indexed(case, "w")
    if weights:
        layer.set_weights(weights)
    y = layer(inputs, **spec.get("call", {}))
    assert_close(y.numpy(), case["y"])
    for var, after in zip(layer.weights, indexed(case, "w_after")):
        assert_close(var.numpy(), after)
