"""Data-parallel training over MPI (keras.distribution.DataParallel, kcompiler/distribute/).

The end-to-end tests launch 2-rank jobs with the venv's ``mpirun`` (the `dev` extra installs
mpi4py and Open MPI) on the scripts beside this file, each bounded by a timeout so that a hang
fails instead of blocking. The others run in this process: the sharding rules, the split step's
memory plan and IR dump, the split step run whole (one process) against the usual step, and
the ImportError without mpi4py.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import kcompiler
from examples import seed_models
from kcompiler import keras
from kcompiler.distribute.sharding import ShardedSequence, shard_batch_indices, shard_bounds

HERE = os.path.dirname(os.path.abspath(__file__))
MPIRUN = os.path.join(os.path.dirname(sys.executable), "mpirun")


def _have_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(MPIRUN)


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason="needs mpi4py and mpirun (the `dev` extra installs them)")


def _run(cmd, timeout):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE)
    return proc.returncode, proc.stdout + proc.stderr


def _mpirun(script, *args, timeout, ranks=2):
    return _run([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), sys.executable,
                 os.path.join(HERE, script), *args], timeout)


def _printed_logs(text):
    """The progress lines Keras prints (verbose=2), timing fields ('- 2s -') masked."""
    lines = [line for line in text.splitlines() if line.startswith(("Epoch ", "10/10"))]
    return [re.sub(r" - \d+m?s - ", " - T - ", line) for line in lines]


# ---- training on 2 ranks equals one process with the global batch ------------------------------

@needs_mpi
@pytest.mark.parametrize("model", ["tiny_mlp", "mnist_cnn"])
def test_two_ranks_train_like_one_process_with_the_global_batch(model, tmp_path):
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    single.mkdir()
    ranks.mkdir()
    code, single_out = _run([sys.executable, os.path.join(HERE, "train_script.py"), model, str(single)], 300)
    assert code == 0, single_out
    code, ranks_out = _mpirun("train_script.py", model, str(ranks), "--distributed", timeout=300)
    assert code == 0, ranks_out
    one, rank0, rank1 = (np.load(p) for p in (single / "result-0.npz", ranks / "result-0.npz",
                                              ranks / "result-1.npz"))
    # 20 steps of batch 64 (the last of each epoch 33 samples: shards of 17 and 16)
    assert one["batches"].shape[0] == 20
    np.testing.assert_allclose(rank0["batches"], one["batches"], rtol=1e-5)
    weights = [k for k in one.files if k.startswith("arr_")]
    assert len(weights) == len(seed_models.__dict__[model]().weights)
    for k in weights:  # the weights: those of one process (biases start at 0: an absolute floor)
        np.testing.assert_allclose(rank0[k], one[k], rtol=1e-5, atol=1e-7, err_msg=k)
        np.testing.assert_array_equal(rank1[k], rank0[k], err_msg=k)  # every rank applies the same update
    h_one, h_ranks = json.loads(str(one["history"])), json.loads(str(rank0["history"]))
    assert sorted(h_ranks) == sorted(h_one) and "val_loss" in h_one
    for key in h_one:
        np.testing.assert_allclose(h_ranks[key], h_one[key], rtol=1e-5, err_msg=key)
    assert _printed_logs(ranks_out) == _printed_logs(single_out)  # rank 0 alone prints, the same lines
    assert len(_printed_logs(ranks_out)) == 4
    # rank 0's checkpoint resumes in one process (any number of ranks: the weights are whole on each)
    resumed = getattr(seed_models, model)()
    resumed.load_weights(str(ranks / "last.weights.h5"))
    for k, w in zip(weights, resumed.weights):
        np.testing.assert_array_equal(w.numpy(), rank0[k], err_msg=k)


# ---- faults ----------------------------------------------------------------------------------

@needs_mpi
def test_a_rank_killed_mid_epoch_stops_the_job_naming_it(tmp_path):
    code, out = _mpirun("train_script.py", "tiny_mlp", str(tmp_path), "--distributed", "--fail-rank", "1",
                        "--fail-step", "5", timeout=60)
    assert code != 0
    assert re.search(r"rank 1\b", out), out
    assert not (tmp_path / "result-0.npz").exists()  # rank 0 did not finish training without rank 1


@needs_mpi
def test_an_exception_on_one_rank_aborts_the_job_naming_it(tmp_path):
    """The other rank waits in its next all-reduce: the excepthook's MPI_Abort ends it."""
    code, out = _mpirun("train_script.py", "tiny_mlp", str(tmp_path), "--distributed", "--fail-rank", "1",
                        "--fail-step", "5", "--fail-how", "raise", timeout=60)
    assert code != 0
    assert "kcompiler: rank 1 of 2 raised an uncaught exception; aborting every rank of the job" in out, out
    assert "RuntimeError: a user callback failed on rank 1" in out
    assert not (tmp_path / "result-0.npz").exists()


@needs_mpi
def test_a_step_that_fails_on_one_rank_updates_no_rank():
    code, out = _mpirun("step_error_script.py", timeout=60)
    assert code == 0, out
    assert "rank 1 raised IndexRangeError: Embedding 'embedding': id 12 is outside [0, 10)" in out
    assert "rank 0 raised DistributedStepError: the training step failed on rank 1 of 2" in out
    assert "rank 0 weights unchanged: True" in out and "rank 1 weights unchanged: True" in out
    losses = re.findall(r"rank \d next step loss: (\S+)", out)
    assert len(losses) == 2 and losses[0] == losses[1]  # both go on, still in step
    digests = re.findall(r"rank \d weights digest: (\w+)", out)
    assert len(digests) == 2 and digests[0] == digests[1]  # seeded apart, same weights: rank 0's broadcast


@needs_mpi
@pytest.mark.parametrize("samples", [64 * 9 + 33, 64 * 9 + 10])
def test_a_sequence_shards_by_batch_index(samples, tmp_path):
    """A Sequence of batches of 32 on 2 ranks (rank r takes batches r, r + 2, ...) trains as one
    process whose batches of 64 are the same pairs; with 64*9 + 10 samples the last round has
    one batch (10 samples) for rank 0 and an empty one for rank 1. (The run's Precision, a
    stateful metric that ignores sample weights, counts an empty rank's stand-in sample: its
    last value of such a round is not compared; docs/distributed.md.)"""
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    single.mkdir()
    ranks.mkdir()
    code, out = _run([sys.executable, os.path.join(HERE, "train_script.py"), "tiny_mlp", str(single),
                      "--sequence", str(samples)], timeout=300)
    assert code == 0, out
    code, out = _mpirun("train_script.py", "tiny_mlp", str(ranks), "--distributed", "--sequence", str(samples),
                        timeout=300)
    assert code == 0, out
    one = np.load(single / "result-0.npz")
    uneven = samples % 64 <= 32  # the last round's second batch is empty
    for r in (0, 1):
        got = np.load(ranks / f"result-{r}.npz")
        batches, expected = got["batches"].copy(), one["batches"].copy()
        if uneven:  # the precision (logs sorted: loss, mae, precision) of each epoch's last step
            batches[[9, 19], 2] = expected[[9, 19], 2] = 0.0
        np.testing.assert_allclose(batches, expected, rtol=1e-5, atol=1e-7)
        for k in one.files:
            if k.startswith("arr_"):
                np.testing.assert_allclose(got[k], one[k], rtol=1e-5, atol=1e-7)


# ---- in this process ---------------------------------------------------------------------------

def test_shards_cover_a_global_batch_once_and_differ_by_at_most_one():
    for n in (1, 2, 33, 64):
        for world in (1, 2, 3, 5):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1
    assert shard_bounds(33, 0, 2) == (0, 17) and shard_bounds(33, 1, 2) == (17, 33)


class _Batches:
    """A minimal Sequence: batch i is [i]."""

    def __init__(self, n):
        self.n, self.epochs_ended = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return [i]

    def on_epoch_end(self):
        self.epochs_ended += 1


def test_sequences_shard_by_batch_index():
    assert list(shard_batch_indices(7, 1, 3)) == [1, 4]
    source = _Batches(7)
    shards = [ShardedSequence(source, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    taken = sorted(s[i][0] for s in shards for i in range(len(s)))
    assert taken == list(range(7))
    assert [shards[2][i] for i in range(2)] == [[2], [5]]
    with pytest.raises(IndexError):
        shards[1][2]
    shards[0].on_epoch_end()
    assert source.epochs_ended == 1


class _TwoRanks:
    """What the compiler reads of a distribution, without MPI."""
    world_size = 2

    def check_model(self, model):
        pass


def _tiny(distribution=None):
    keras.utils.set_random_seed(5)
    model = seed_models.tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), loss="mse",
                  metrics=["mae", keras.metrics.Precision(name="precision")])
    model.compile_distribution = distribution
    return model


def test_the_plan_puts_every_gradient_in_one_region_and_splits_the_step_there():
    program = kcompiler.compile(_tiny(_TwoRanks()), training=True, batch_size=8)
    g = program.stages["planned"]
    plan = g.graph["plan"]
    collective = plan["collective"]
    node = collective["node"]
    assert g.nodes[node]["op"] == "all_reduce"
    operands = [u for u, _, _ in sorted(g.in_edges(node, keys=True), key=lambda e: e[2])]
    # one gradient per weight, then the increments of Precision's true and false positives
    assert len(operands) == 6 + 2
    spans = sorted((plan["buffers"][plan["root"][(u, 0)]][1], plan["buffers"][plan["root"][(u, 0)]][2])
                   for u in operands)
    assert spans[0][0] == collective["offset"] == 0
    assert spans[-1][0] + spans[-1][1] <= collective["extra_offset"]
    assert collective["extra_offset"] + 4 * collective["extra_slots"] <= collective["bytes"]
    assert collective["extra_slots"] == 2 + 1 + 3  # a status per rank, the count, loss, mae, precision
    for key, where in plan["buffers"].items():  # nothing else lives in the region
        if where[0] == "arena" and key not in {plan["root"][(u, 0)] for u in operands}:
            assert where[1] >= collective["bytes"], key
    order = plan["order"]
    after = [g.nodes[n]["op"] for n in order[collective["split"]:]]
    assert after and all(n not in order[:collective["split"]] for n in order[collective["split"]:])
    text = program.dump(stage="scheduled")
    precision = g.graph["outputs"][2]  # computed after the all-reduce, from the summed state
    assert plan["root"][(precision, 0)][0] in order[collective["split"]:]
    assert re.search(r"= all_reduce \{extra_slots=6\}", text)
    assert "kc_entry_update" in text and "collective: %" in text


def test_the_evaluation_step_is_split_at_an_all_reduce_of_the_metric_states():
    from kcompiler.program import Program
    program = Program(_tiny(_TwoRanks()), evaluation=True, batch_size=8)
    g = program.stages["planned"]
    collective = g.graph["plan"]["collective"]
    node = collective["node"]
    assert [g.nodes[u]["type"].shape for u, _ in g.in_edges(node)] == [(1,), (1,)]  # true and false positives
    assert collective["extra_slots"] == 2 + 1 + 3


def test_the_split_step_run_whole_equals_the_usual_step():
    """Without a collective (one process, gradient share 1) the two native calls of the split
    step do exactly what the usual step's one call does."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4), dtype=np.float32), rng.standard_normal((8, 1), dtype=np.float32)
    results = []
    for distribution in (None, _TwoRanks()):
        model = _tiny(distribution)
        program = kcompiler.compile(model, training=True)
        logs = [program.train_step(x, y) for _ in range(3)]
        results.append((logs, [np.array(w.numpy()) for w in model.weights]))
    (logs, weights), (split_logs, split_weights) = results
    for a, b in zip(split_logs, logs):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in b], rtol=1e-6)
    for a, b in zip(split_weights, weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_ranks_other_than_0_run_no_progress_bar_nor_file_writing_callbacks(monkeypatch, tmp_path):
    from kcompiler.distribute import mpi
    from kcompiler.keras.callbacks.callback_list import CallbackList

    class Rank1:
        rank, size = 1, 2

    monkeypatch.setattr(mpi, "_world", [Rank1()])
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "w.weights.h5"), save_weights_only=True)
    board = keras.callbacks.TensorBoard(str(tmp_path / "logs"))
    stopping = keras.callbacks.EarlyStopping(patience=1)
    kept = CallbackList([checkpoint, board, stopping], add_history=True, add_progbar=True).callbacks
    assert stopping in kept and checkpoint not in kept and board not in kept
    assert [type(cb).__name__ for cb in kept] == ["EarlyStopping", "History"]  # no progress bar
    monkeypatch.setattr(mpi, "_world", [])  # one process: everything runs
    assert len(CallbackList([checkpoint, board, stopping], add_history=True, add_progbar=True).callbacks) == 5


def test_without_mpi4py_the_api_names_the_distributed_extra(monkeypatch):
    from kcompiler.distribute import mpi
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    monkeypatch.setattr(mpi, "_world", [])
    with pytest.raises(ImportError, match=r"mpi4py.*`distributed` extra"):
        keras.distribution.DataParallel()


def test_a_shard_of_several_outputs_labels_and_weights():
    """Several labelled outputs: every label and weight array is cut like the inputs; an empty
    shard is one sample with zero weights for every output."""
    from kcompiler.distribute.step import _shard
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    ys = [np.arange(5), np.arange(5) * 10]
    ws = [np.ones(5, np.float32), None]
    xs1, ys1, ws1, count = _shard([x], ys, ws, 1, 2)
    assert count == 2 and np.array_equal(xs1[0], x[3:5])
    assert np.array_equal(ys1[0], [3, 4]) and np.array_equal(ys1[1], [30, 40])
    assert np.array_equal(ws1[0], [1, 1]) and ws1[1] is None
    _, ys_empty, ws_empty, count = _shard([x[:1]], [y[:1] for y in ys], None, 1, 2)
    assert count == 0 and len(ys_empty) == 2 and all(len(w) == 1 and w[0] == 0 for w in ws_empty)
