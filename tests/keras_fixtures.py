"""Loading the Keras fixtures in tests/fixtures/keras/ (see tests/fixtures/README.md)."""
import json
from pathlib import Path

import numpy as np

from kcompiler import keras

ROOT = Path(__file__).parent / "fixtures" / "keras"


def cases(kind, class_names=None):
    """Names of the fixture cases of ``kind`` ('layers', 'models', ...), optionally filtered by class."""
    folder = ROOT / kind
    if not folder.exists():
        return []
    names = sorted(p.stem for p in folder.glob("*.npz"))
    if class_names is None:
        return names
    return [n for n in names if load(kind, n)["spec"].get("class_name") in class_names]


def load(kind, name):
    """{'spec': dict, <array name>: array, ...} for one case."""
    with np.load(ROOT / kind / f"{name}.npz", allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    out["spec"] = json.loads(str(out["spec"]))
    return out


def indexed(case, prefix):
    """[case['w_0'], case['w_1'], ...] for prefix 'w'."""
    out, i = [], 0
    while f"{prefix}_{i}" in case:
        out.append(case[f"{prefix}_{i}"])
        i += 1
    return out


def make_layer(spec):
    """A kcompiler layer from a fixture spec {'class_name', 'kwargs'} (nested for wrappers)."""
    kwargs = dict(spec.get("kwargs", {}))
    if "layer" in kwargs and isinstance(kwargs["layer"], dict):
        kwargs["layer"] = make_layer(kwargs["layer"])
    if "backward_layer" in kwargs and isinstance(kwargs["backward_layer"], dict):
        kwargs["backward_layer"] = make_layer(kwargs["backward_layer"])
    return getattr(keras.layers, spec["class_name"])(**kwargs)


def make_sequential(spec):
    model = keras.Sequential()
    model.add(keras.Input(shape=tuple(spec["input_shape"]), dtype=spec.get("input_dtype", "float32")))
    for layer_spec in spec["layers"]:
        model.add(make_layer(layer_spec))
    return model


def layer_case(case):
    """(layer built with the fixture's weights, its inputs as a list, the call's kwargs)."""
    spec = case["spec"]
    layer = make_layer(spec)
    xs = indexed(case, "x") or [case["x"]]
    layer.build([x.shape for x in xs] if len(xs) > 1 else xs[0].shape)
    layer.built = True
    if indexed(case, "w"):
        layer.set_weights(indexed(case, "w"))
    if spec.get("adapt"):  # Normalization: the statistics come from adapt() on the stored data
        data = indexed(case, "adapt_data")
        layer.adapt(data[0] if len(data) == 1 else data)
    kwargs = dict(spec.get("call", {}))
    if "mask" in case:
        kwargs["mask"] = case["mask"]
    return layer, xs, kwargs
