"""summary() reproduces the seed document's tables byte for byte (trailing spaces aside)."""
from pathlib import Path

import pytest

from examples import seed_models
from kcompiler.keras import backend

SEED = Path(__file__).parent.parent / "fixtures" / "seed"


def summary_lines(model):
    lines = []
    model.summary(print_fn=lines.append)
    return [l.rstrip() for l in lines]


@pytest.mark.parametrize("name", [f.__name__ for f in seed_models.ALL])
def test_seed_summary_table(name):
    backend.clear_session()
    model = getattr(seed_models, name)()
    expected = (SEED / f"summary_{name}.txt").read_text().splitlines()
    got = summary_lines(model)
    if name == "cifar_convs":  # the seed shows this table without its Model: line and closing rule
        got = got[1:-1]
    assert got == expected


def test_summary_pads_rows_to_the_line_length():
    backend.clear_session()
    lines = []
    seed_models.tiny_mlp().summary(print_fn=lines.append)
    assert lines[2] == "Layer (type)                 Output Shape              Param #   "
    assert all(len(l) == 65 for l in lines[1:-4] if not l.startswith(("Total", "Trainable", "Non")))


def test_summary_of_an_unbuilt_model_raises():
    from kcompiler import keras
    model = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="not yet been built"):
        model.summary()
