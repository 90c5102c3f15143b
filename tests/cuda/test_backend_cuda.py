"""The CUDA backend and its runtime (kcompiler/codegen/cuda/backend.py, module.py,
executable.py, device.py), run in the CPU emulation (Options.cuda_emulation) on machines
without a GPU:

- a training step of a program whose kernels are all described (gather, its scatter_add
  gradient, softmax, reductions, element-wise, momentum updates) and a whole Keras model
  written without contractions (fit, evaluate, predict, every callback's view of the weights)
  equal the CPU backend's;
- a failed step (an id out of range) raises what the CPU raises and leaves every variable bit
  for bit as it was, because the commit kernel skips when the status is set (with that check
  off, the same step changes them: the test can fail);
- variables stay on the device: a step copies its inputs in and one result out, nothing
  else; get_weights copies each updated variable back once, set_weights is uploaded before
  the next step, a CPU step (an eager call) sees the device's values and the device sees its
  updates, a model saved after training holds the trained weights, and a dropped model's
  device copies are freed;
- concurrent predictions get their own results;
- the PycudaDevice, driven through a stand-in for pycuda.driver (fake_pycuda.py), runs the
  same model: every call with its context current, one transfer in per input and one out;
- without pycuda, without libcuda.so.1 or without a GPU, target='cuda' raises one
  UnsupportedError naming what is missing, never the emulation; ``import kcompiler`` and
  compiling for the CPU never import pycuda;
- cubins compile for the device's architecture and come back from the disk cache;
- one training step of each of W1–W6 equals the CPU backend's (skipped, naming the op,
  while a CUDA contraction template is missing).
"""
import collections
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.codegen.cuda import device as cuda_device
from kcompiler.codegen.cuda import executable as cuda_executable
from kcompiler.codegen.cuda.device import EmulatedDevice
from kcompiler.errors import IndexRangeError, UnsupportedError
from kcompiler.ir.graph import GraphBuilder
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend, ops
from kcompiler.keras.variables import Variable
from kcompiler.options import Options
from kcompiler.passes.autodiff import gradients
from kcompiler.pipeline import lower_graph
from op_check import assert_close32, use_options

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ for the CUDA emulation")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def emulation(monkeypatch):
    use_options(monkeypatch, cuda_emulation=True)


# ---- a program of described kernels --------------------------------------------------------------

def momentum_program(table, scale, velocity):
    """ids -> softmax(table[ids] * scale) against targets; SGD with momentum on the table."""
    b = GraphBuilder(name="described_momentum")
    t, s, v = b.variable(table), b.variable(scale), b.variable(velocity)
    ids = b.input("ids", TensorType((5, 3), "int32"))
    target = b.input("target", TensorType((5, 3, 4)))
    p = b.op("softmax", b.op("mul", b.op("gather", t, ids), s), axis=-1)
    loss = b.op("mean", b.op("square", b.op("sub", p, target)), axes=None, keepdims=False)
    g_table, g_scale = gradients(b, loss, [t, s])
    new_v = b.op("add", b.op("mul", v, b.scalar(0.9)), g_table)
    b.g.graph["updates"][v] = new_v
    b.g.graph["updates"][t] = b.op("sub", t, b.op("mul", new_v, b.scalar(5.0)))
    b.g.graph["updates"][s] = b.op("sub", s, b.op("mul", g_scale, b.scalar(5.0)))
    b.g.graph["outputs"] = [loss, b.op("max", p, axes=(0, 1), keepdims=False)]
    return b.g


def momentum_variables(seed=0):
    rng = np.random.default_rng(seed)
    return [Variable(rng.standard_normal((7, 4)).astype(np.float32), name="table"),
            Variable(rng.standard_normal(4).astype(np.float32), name="scale"),
            Variable(np.zeros((7, 4), np.float32), name="velocity")]


def momentum_feeds(seed):
    rng = np.random.default_rng(100 + seed)
    return {"ids": rng.integers(0, 7, (5, 3)).astype(np.int32),
            "target": rng.random((5, 3, 4)).astype(np.float32)}


def lowered(g, target):
    compiled, _ = lower_graph(g, target=target)
    return compiled


def test_steps_of_described_kernels_equal_the_cpu_steps():
    on_cpu, on_cuda = momentum_variables(), momentum_variables()
    cpu, cuda = lowered(momentum_program(*on_cpu), "cpu"), lowered(momentum_program(*on_cuda), "cuda")
    assert all(k.source.startswith('extern "C" __global__') for k in cuda.kernels)
    for step in range(3):
        feeds = momentum_feeds(step)
        for got, want in zip(cuda.run(feeds), cpu.run(feeds)):
            assert_close32(got, want, f"step {step}")
        for a, b in zip(on_cuda, on_cpu):
            assert_close32(a.numpy(), b.numpy(), f"{a.name} after step {step}")
    assert not np.allclose(on_cuda[0].numpy(), momentum_variables()[0].numpy())  # it trained


def snapshot(variables):
    """The variables' bytes; those a device keeps, as the device has them."""
    for v in variables:
        if v._device_copy is not None:
            v._device_copy.download()
    return [v.numpy().tobytes() for v in variables]


def failing_step(target):
    variables = momentum_variables()
    compiled = lowered(momentum_program(*variables), target)
    compiled.run(momentum_feeds(0))
    before = snapshot(variables)
    feeds = momentum_feeds(1)
    feeds["ids"][3, 1] = 9
    with pytest.raises(IndexRangeError) as error:
        compiled.run(feeds)
    return variables, before, error.value


def test_a_failed_step_raises_as_on_the_cpu_and_changes_no_variable():
    variables, before, error = failing_step("cuda")
    _, _, cpu_error = failing_step("cpu")
    assert str(error) == str(cpu_error) and "id 9 is outside [0, 7)" in str(error)
    assert snapshot(variables) == before


def test_without_the_commits_status_check_the_failed_step_would_change_the_variables(monkeypatch):
    """What keeps the variables is the commit's test of the status: with it off, the same step
    writes the values its kernels computed after the failure."""
    copies = cuda_executable._Context._copies
    monkeypatch.setattr(cuda_executable._Context, "_copies",
                        lambda self, device, module, skip_when_failed, table: copies(self, device, module, False, table))
    variables, before, _ = failing_step("cuda")
    assert snapshot(variables) != before


# ---- a Keras model with no contraction --------------------------------------------------------------

class Affine(keras.layers.Layer):
    """One output unit written without a matmul, sum(x * w) + b: every kernel of a model using
    it is described, so it runs before the CUDA contraction templates exist."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="glorot_uniform", name="w")
        self.b = self.add_weight(shape=(1,), initializer="zeros", name="b")

    def call(self, x):
        return ops.sum(x * self.w, axis=-1, keepdims=True) + self.b


def affine_model(target, seed=1):
    backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 4),
                              keras.layers.Flatten(), keras.layers.BatchNormalization(), keras.layers.Dropout(0.2),
                              Affine(), keras.layers.Activation("sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", target=target,
                  metrics=[keras.metrics.Precision(name="precision"), "accuracy"])
    return model


def affine_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, (n, 3)).astype(np.int32), (rng.random((n, 1)) > 0.5).astype(np.float32)


def model_state(model):
    return (model.get_weights() + model.optimizer.get_weights()
            + [v.numpy() for m in model.compiled_metric_objects for v in m.variables])


def assert_same_values(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close32(a, b, f"entry {i}")


def test_fit_evaluate_and_predict_equal_the_cpu_backend():
    x, y = affine_data()
    results = {}
    for target in ("cpu", "cuda"):
        model = affine_model(target)
        seen = []  # what a callback reads of the weights after every batch
        history = model.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0, callbacks=[
            keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(model.get_weights()[-1]))])
        results[target] = (history.history, model.evaluate(x, y, verbose=0), model.predict(x, verbose=0),
                           model_state(model), seen)
    (cpu_history, cpu_eval, cpu_pred, cpu_state, cpu_seen), (history, evaluation, pred, state, seen) = \
        results["cpu"], results["cuda"]
    assert history.keys() == cpu_history.keys()
    for key in history:
        np.testing.assert_allclose(history[key], cpu_history[key], rtol=1e-5)
    np.testing.assert_allclose(evaluation, cpu_eval, rtol=1e-5)
    assert_close32(pred, cpu_pred)
    assert_same_values(state, cpu_state)
    assert_same_values(seen, cpu_seen)
    assert len(seen) == 8 and not np.array_equal(seen[0], seen[-1])


def count_transfers(monkeypatch):
    """Counts EmulatedDevice's host<->device copies from now on."""
    counts = collections.Counter()
    for name in ("upload", "download"):
        def counted(self, a, b, original=getattr(EmulatedDevice, name), name=name):
            counts[name] += 1
            return original(self, a, b)
        monkeypatch.setattr(EmulatedDevice, name, counted)
    return counts


def test_the_variables_stay_on_the_device_between_steps(monkeypatch):
    model = affine_model("cuda")
    x, y = affine_data(n=8)
    program = kcompiler.compile(model, training=True, batch_size=8, target="cuda")
    inputs = len(program.stages["scheduled"].graph["inputs"])
    program.train_step(x, y)  # binds: the variables are uploaded once
    counts = count_transfers(monkeypatch)
    for _ in range(3):
        program.train_step(x, y)
    assert counts == {"upload": 3 * inputs, "download": 3}  # the inputs in, one result out

    updated = len(model.weights)  # every weight: trainable ones and BatchNormalization's statistics
    counts.clear()
    trained = model.get_weights()
    assert counts == {"download": updated}
    model.get_weights()
    assert counts == {"download": updated}  # already current on the host

    counts.clear()
    model.set_weights([w * 0.5 for w in trained])
    assert counts == {}
    program.train_step(x, y)
    assert counts == {"upload": inputs + updated, "download": 1}


def test_a_dropped_model_frees_its_device_copies():
    import gc
    import weakref
    model = affine_model("cuda")
    model.train_on_batch(*affine_data(n=8))
    copies = [weakref.ref(w._device_copy) for w in model.weights]
    del model
    backend.clear_session()
    gc.collect()
    assert [c() for c in copies] == [None] * len(copies)


def test_set_weights_between_steps_is_honoured():
    x, y = affine_data(n=8)
    models = {target: affine_model(target) for target in ("cpu", "cuda")}
    for model in models.values():
        model.train_on_batch(x, y)
    new = [np.full_like(w, 0.25 * (i + 1)) for i, w in enumerate(models["cpu"].get_weights())]
    new_slots = [np.full_like(w, 0.5) for w in models["cpu"].optimizer.get_weights()]
    for model in models.values():
        model.set_weights(new)
        model.optimizer.set_weights(new_slots)
        model.train_on_batch(x, y)
    assert_same_values(model_state(models["cuda"]), model_state(models["cpu"]))


def test_cpu_steps_and_device_steps_see_each_others_updates():
    """An eager call runs on the CPU backend and reads the host arrays directly; an eager
    optimizer step writes them."""
    x, y = affine_data(n=8)
    models = {target: affine_model(target) for target in ("cpu", "cuda")}
    before = models["cuda"](x, training=False).numpy()  # the eager graph is compiled and bound now
    for model in models.values():
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    eager = models["cuda"](x, training=False).numpy()  # no host read of the weights before it
    assert not np.allclose(eager, before)
    assert_close32(eager, models["cuda"].predict(x, verbose=0))
    assert_close32(eager, models["cpu"](x, training=False).numpy())
    for model in models.values():
        grads = [np.full(w.shape, 0.1, np.float32) for w in model.trainable_weights]
        model.optimizer.apply_gradients(zip(grads, model.trainable_weights))
    assert_close32(models["cuda"].predict(x, verbose=0), models["cpu"].predict(x, verbose=0))


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # the fresh model's is not built
def test_a_model_saved_after_training_holds_the_trained_weights(tmp_path):
    x, y = affine_data()
    model = affine_model("cuda")
    initial = model.get_weights()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "trained.weights.h5")
    model.save_weights(path)
    restored = affine_model("cpu", seed=7)
    restored.load_weights(path)
    assert_same_values(restored.get_weights(), model.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(initial, model.get_weights()))


def test_a_failed_model_step_keeps_weights_optimizer_and_metric_state():
    x, y = affine_data(n=8)
    model = affine_model("cuda")
    model.train_on_batch(x, y, reset_metrics=False)
    before = [a.tobytes() for a in model_state(model)]
    x[5, 1] = 12
    with pytest.raises(IndexRangeError, match=re.escape("Embedding 'embedding': id 12 is outside [0, 10)")):
        model.train_on_batch(x, y, reset_metrics=False)
    assert [a.tobytes() for a in model_state(model)] == before
    x[5, 1] = 3
    model.train_on_batch(x, y)
    assert model.optimizer.iterations.numpy() == 2


def test_concurrent_predictions_each_get_their_own_results():
    model = affine_model("cuda")
    inputs = [affine_data(n=6, seed=s)[0] for s in range(4)]
    expected = [model.predict(x, verbose=0) for x in inputs]
    barrier, results = threading.Barrier(4), [None] * 4

    def work(i):
        barrier.wait()
        results[i] = [model.predict(inputs[(i + c) % 4], verbose=0) for c in range(20)]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, calls in enumerate(results):
        for c, got in enumerate(calls):
            np.testing.assert_array_equal(got, expected[(i + c) % 4])


# ---- the pycuda device, driven through a stand-in driver --------------------------------------------------

@pytest.fixture
def fake_gpu(monkeypatch):
    """target='cuda' without the emulation option, on fake_pycuda as pycuda.driver."""
    import types

    from kcompiler.codegen.cuda import cubin
    from tests.cuda import fake_pycuda
    package = types.ModuleType("pycuda")
    package.driver = fake_pycuda
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake_pycuda)
    monkeypatch.setattr(cuda_device, "_devices", {})
    monkeypatch.setattr(cubin, "cubin", lambda source, arch: source.encode())  # the stand-in loads source
    use_options(monkeypatch, cuda_emulation=False)
    fake_pycuda.CALLS.clear()
    return fake_pycuda


def test_the_pycuda_device_runs_a_model_like_the_cpu(fake_gpu):
    x, y = affine_data(n=8)
    cpu, gpu = affine_model("cpu"), affine_model("cuda")
    assert isinstance(cuda_device.get_device(Options()), cuda_device.PycudaDevice)
    for model in (cpu, gpu):
        model.train_on_batch(x, y)
    fake_gpu.CALLS.clear()
    for model in (cpu, gpu):  # (resetting the metrics, train_on_batch would first save them on the host)
        model.train_on_batch(x, y, reset_metrics=False)
    transfers = [c for c in fake_gpu.CALLS if c[0] != "launch"]
    assert [c[0] for c in transfers].count("dtoh") == 1 and all(c[0] == "htod" for c in transfers[:-1])
    assert [c for c in fake_gpu.CALLS if c[0] == "launch"][-1] == ("launch", "kc_copies")
    assert_same_values(model_state(gpu), model_state(cpu))


# ---- errors --------------------------------------------------------------------------------------------

def no_gpu(monkeypatch, tmp_path, driver_source):
    """target='cuda' without the emulation option, where ``import pycuda`` fails (source None)
    or finds a pycuda whose driver module is ``driver_source``."""
    for name in ("pycuda", "pycuda.driver"):  # whatever the imports store, removed afterwards
        monkeypatch.setitem(sys.modules, name, None)
        if driver_source is not None:
            monkeypatch.delitem(sys.modules, name)
    if driver_source is not None:
        (tmp_path / "pycuda").mkdir()
        (tmp_path / "pycuda" / "__init__.py").write_text("")
        (tmp_path / "pycuda" / "driver.py").write_text(driver_source)
        monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cuda_device, "_devices", {})
    use_options(monkeypatch, cuda_emulation=False)


NO_DEVICE = """
class Error(Exception):
    pass

def init():
    raise Error("cuInit failed: no CUDA-capable device is detected")
"""
NO_GPU_COUNTED = """
class Error(Exception):
    pass

def init():
    pass

class Device:
    @staticmethod
    def count():
        return 0
"""


@pytest.mark.parametrize("driver, message", [
    (None, r"needs pycuda, which is not installed: install it with pip install 'kcompiler\[cuda\]'.*"
           r"scripts/build-cuda-wheels"),
    ("raise ImportError('libcuda.so.1: cannot open shared object file: No such file or directory')",
     r"needs the NVIDIA driver library libcuda\.so\.1, which was not found .*install the NVIDIA GPU driver"),
    (NO_DEVICE, r"found no usable GPU \(cuInit: cuInit failed: no CUDA-capable device is detected\)"),
    (NO_GPU_COUNTED, r"the NVIDIA driver is installed but reports no GPU"),
], ids=["no pycuda", "no libcuda", "cuInit fails", "no device"])
def test_without_pycuda_driver_or_gpu_one_clear_error(driver, message, tmp_path, monkeypatch):
    no_gpu(monkeypatch, tmp_path, driver)
    built = []
    monkeypatch.setattr(cuda_device.toolchain, "build_emulated", lambda *a, **k: built.append(a))
    model = affine_model("cuda")
    x, y = affine_data(n=4)
    for attempt in (lambda: model.train_on_batch(x, y), lambda: kcompiler.compile(model, batch_size=2, target="cuda")):
        with pytest.raises(UnsupportedError, match=message) as error:
            attempt()
        assert str(error.value).count("target='cuda'") == 1
    assert built == []  # never the emulation
    assert cuda_device.gpu_problem() is not None


def test_bounds_checked_builds_are_refused_on_cuda(monkeypatch):
    use_options(monkeypatch, bounds_check=True)
    with pytest.raises(UnsupportedError, match="bounds-checked builds .* target='cpu' only"):
        lowered(momentum_program(*momentum_variables()), "cuda")


def test_import_kcompiler_and_cpu_work_never_import_pycuda(tmp_path):
    """With a pycuda on the path that fails loudly when imported, importing kcompiler, tracing,
    compiling and running for the CPU, and asking for the CUDA backend import nothing of it."""
    (tmp_path / "pycuda").mkdir()
    (tmp_path / "pycuda" / "__init__.py").write_text("raise SystemExit('pycuda was imported')\n")
    script = """
import sys
import numpy as np
import kcompiler
from kcompiler import keras
from kcompiler.codegen.backend import get_backend
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
model.compile(optimizer="sgd", loss="mse")
model.fit(np.ones((4, 3), np.float32), np.ones((4, 2), np.float32), verbose=0)
get_backend("cuda").generate
assert not any(name.split(".")[0] == "pycuda" for name in sys.modules), sorted(sys.modules)
print("clean")
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.stdout.strip() == "clean", out.stderr[-2000:]


# ---- the cubin cache --------------------------------------------------------------------------------

def test_a_step_compiles_to_cubins_that_come_back_from_the_cache(tmp_path, monkeypatch):
    from kcompiler.codegen.cuda import cubin, toolchain
    from kcompiler.codegen.llvm.cache import cache_stats
    try:
        toolchain.toolkit_root()
    except UnsupportedError:
        pytest.skip("no CUDA toolkit (nvcc)")
    monkeypatch.setenv("KCOMPILER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KCOMPILER_NO_CACHE", raising=False)
    from kcompiler.codegen.cuda.module import generate
    from kcompiler.passes.memory_plan import plan_memory
    from kcompiler.passes.schedule import schedule_kernels
    source, _ = generate(schedule_kernels(plan_memory(momentum_program(*momentum_variables()))))
    before = cache_stats()
    first = cubin.cubin(source.text, "sm_80")
    again = cubin.cubin(source.text, "sm_80")
    after = cache_stats()
    assert first[:4] == b"\x7fELF" and again == first
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 1)
    assert len(list(tmp_path.glob("*.kco"))) == 1
    assert cubin.cache_key(source.text, "sm_90", toolchain.toolkit_root()) != \
        cubin.cache_key(source.text, "sm_80", toolchain.toolkit_root())
    report = toolchain.compile_check(source.text)  # the runtime's kc_copies too: no spills, no local memory
    assert "kc_copies" in report.resources["sm_90"] and report.problems() == []


# ---- W1–W6 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["W1", "W2", "W3", "W4", "W5", "W6"])
def test_one_training_step_of_each_workload_equals_the_cpu_step(name):
    from benchmarks.workloads import WORKLOADS
    w = WORKLOADS[name]
    cpu, cuda = w.build(), w.build()
    cuda.set_weights(cpu.get_weights())
    cuda.compile(optimizer=w.optimizer(), loss=w.loss(), target="cuda")
    x, y = w.data(batch_size=2)
    got = cuda.train_on_batch(x, y)
    want = cpu.train_on_batch(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert_same_values(cuda.get_weights(), cpu.get_weights())
    assert_same_values(cuda.optimizer.get_weights(), cpu.optimizer.get_weights())
