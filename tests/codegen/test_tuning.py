"""The SGEMM's cache blocking per machine (codegen/llvm/tuning.py): a saved choice is what the
support library is built with and what the dump shows; bad files and KCOMPILER_TUNING=off give
the defaults; the search measures, saves and reloads its choice."""
import json
import os
import subprocess
import sys

import pytest

from kcompiler.codegen.llvm import tuning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KCOMPILER_TUNING", raising=False)
    monkeypatch.setattr(tuning, "_current", None)
    yield tmp_path
    tuning._current = None


def save(values):
    tuning.saved_path().write_text(json.dumps(values))


def test_without_a_saved_choice_the_defaults(cache):
    b = tuning.current()
    assert (b.kc, b.mc, b.nc) == (tuning.DEFAULT_KC, tuning.DEFAULT_MC, tuning.DEFAULT_NC)
    assert "kcompiler tune" in b.describe()


def test_a_saved_choice_is_used(cache):
    save({"kc": 128, "mc": 72, "nc": 1024, "date": "2026-12-03"})
    b = tuning.current()
    assert (b.kc, b.mc, b.nc) == (128, 72, 1024)
    assert "KC 128, MC 72, NC 1024 (measured 2026-12-03" in b.describe()


@pytest.mark.parametrize("text", ["{not json", json.dumps({"kc": 128}), json.dumps({"kc": 0, "mc": 72, "nc": 512}),
                                  json.dumps({"kc": "x", "mc": 72, "nc": 512})])
def test_a_bad_file_gives_the_defaults_with_a_warning(cache, text):
    tuning.saved_path().write_text(text)
    with pytest.warns(UserWarning, match="tuning file"):
        b = tuning.current()
    assert (b.kc, b.mc, b.nc) == (tuning.DEFAULT_KC, tuning.DEFAULT_MC, tuning.DEFAULT_NC)


def test_tuning_off_ignores_a_saved_choice(cache, monkeypatch):
    save({"kc": 128, "mc": 72, "nc": 1024})
    monkeypatch.setenv("KCOMPILER_TUNING", "off")
    assert tuning.current().kc == tuning.DEFAULT_KC


def test_a_process_builds_its_sgemm_with_the_saved_choice_and_dumps_it(cache):
    """In a new process: the scheduled stage's notes name the saved blocking, and training runs
    on a support library built with it (odd blocking: KC 16 forces many K blocks)."""
    save({"kc": 16, "mc": 12, "nc": 32, "date": "test"})
    script = (
        "import numpy as np, kcompiler\n"
        "from kcompiler import keras\n"
        "m = keras.Sequential([keras.Input((40,)), keras.layers.Dense(33, activation='relu'), keras.layers.Dense(3)])\n"
        "m.compile(optimizer='sgd', loss='mse')\n"
        "p = kcompiler.compile(m, training=True, batch_size=8)\n"
        "print([n for n in p.stages['scheduled'].graph['notes'] if n.startswith('cpu SGEMM')][0])\n"
        "x = np.random.default_rng(0).standard_normal((8, 40)).astype('float32')\n"
        "print(float(m.predict_on_batch(x)[0, 0] - (np.maximum(x @ m.layers[0].get_weights()[0]"
        " + m.layers[0].get_weights()[1], 0) @ m.layers[1].get_weights()[0] + m.layers[1].get_weights()[1])[0, 0]))\n")
    env = dict(os.environ, KCOMPILER_OPT_LEVEL="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    note, diff = out.stdout.strip().splitlines()
    assert "KC 16, MC 12, NC 32 (measured test" in note
    assert abs(float(diff)) < 1e-4


def test_search_measures_saves_and_reloads(cache, monkeypatch):
    monkeypatch.setattr(tuning, "CANDIDATES", {"kc": (64, 256), "mc": (72, 144), "nc": (512,)})
    monkeypatch.setattr(tuning, "SEARCH_SHAPES", ((40, 48, 70),))
    lines = []
    blocking, results = tuning.search(budget_s=60, log=lines.append, opt_level=1)
    assert len(lines) == 3 and all("GFLOP/s" in line for line in lines)
    assert (blocking.kc, blocking.mc, blocking.nc) in results
    assert all(v > 0 for v in results.values())
    saved = json.loads(tuning.saved_path().read_text())
    assert (saved["kc"], saved["mc"], saved["nc"]) == (blocking.kc, blocking.mc, blocking.nc)
    assert tuning.current() == blocking
