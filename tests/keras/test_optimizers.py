"""Optimizers and schedules against real Keras 3: every fixture case (5 successive apply_gradients
steps), the one-graph-per-step structure, the runtime learning rate, the in-graph form for the
compiled step, state order, configs and names."""
import warnings

import numpy as np
import pytest

from kcompiler.ir.interpreter_reference import run_reference
from kcompiler.ir.types import TensorType
from kcompiler.keras import backend, constraints, ops, optimizers
from kcompiler.keras.optimizers import schedules
from kcompiler.keras.tensor import SymbolicTensor
from kcompiler.keras.variables import Variable
from keras_fixtures import cases, load


def make_optimizer(spec):
    kwargs = dict(spec.get("kwargs", {}))
    lr = kwargs.get("learning_rate")
    if isinstance(lr, dict):
        kwargs["learning_rate"] = getattr(schedules, lr["class_name"])(**lr["kwargs"])
    return getattr(optimizers, spec["class_name"])(**kwargs)


def two_variables(case=None):
    init = [case["init_0"], case["init_1"]] if case else [np.ones((3, 4), np.float32), np.ones(4, np.float32)]
    return [Variable(np.array(v), name=f"var_{i}", path=f"dense/var_{i}") for i, v in enumerate(init)]


@pytest.mark.parametrize("name", cases("optimizers"))
def test_optimizer_matches_keras(name):
    case = load("optimizers", name)
    variables = two_variables(case)
    opt = make_optimizer(case["spec"])
    for step in range(5):
        opt.apply_gradients(zip([case[f"grad_{step}_0"], case[f"grad_{step}_1"]], variables))
        for i, v in enumerate(variables):
            np.testing.assert_allclose(v.numpy(), case[f"after_{step}_{i}"], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: variable {i} after step {step}")
    assert int(opt.iterations.numpy()) == 5
    assert len(opt._eager_graphs) == 1  # all five steps ran the one traced graph


def test_one_graph_updates_every_variable_slot_and_the_counter():
    variables = two_variables()
    opt = optimizers.Adam(0.1, amsgrad=True, name="adam")
    opt.apply_gradients(zip([np.ones((3, 4), np.float32), np.ones(4, np.float32)], variables))
    (g,) = opt._eager_graphs.values()
    assert [g.nodes[n]["attrs"]["name"] for n in g.graph["inputs"]] == ["grad_0", "grad_1"]
    updated = sorted(g.graph["variables"][n].path for n in g.graph["updates"])
    assert updated == sorted([v.path for v in variables] + [v.path for v in opt.weights])
    assert [v.path for v in opt.variables] == [
        "adam/iteration", "adam/learning_rate", "adam/dense_var_0_momentum", "adam/dense_var_0_velocity",
        "adam/dense_var_1_momentum", "adam/dense_var_1_velocity", "adam/dense_var_0_velocity_hat",
        "adam/dense_var_1_velocity_hat"]


def test_learning_rate_is_a_runtime_variable():
    variables = two_variables()
    opt = optimizers.SGD(learning_rate=0.5)
    grads = [np.ones((3, 4), np.float32), np.ones(4, np.float32)]
    opt.apply_gradients(zip(grads, variables))
    np.testing.assert_allclose(variables[1].numpy(), 0.5)
    opt.learning_rate = 0.25
    assert opt.learning_rate.numpy() == np.float32(0.25)
    opt.apply_gradients(zip(grads, variables))
    np.testing.assert_allclose(variables[1].numpy(), 0.25)
    assert len(opt._eager_graphs) == 1
    assert opt.get_config()["learning_rate"] == 0.25


def test_schedule_learning_rate_is_not_settable():
    opt = optimizers.SGD(learning_rate=schedules.ExponentialDecay(0.1, 2, 0.5))
    assert opt.learning_rate.numpy() == np.float32(0.1)
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.01


def test_trace_updates_emits_the_step_into_the_traced_graph():
    variables = two_variables()
    opt = optimizers.RMSprop(0.1, momentum=0.9, centered=True, name="rmsprop")
    b = backend.new_trace_builder("train_step")
    grads = [SymbolicTensor(b, b.input(f"g{i}", TensorType(v.shape))) for i, v in enumerate(variables)]
    opt.trace_updates(zip(grads, variables))
    updated = {b.g.graph["variables"][n].path for n in b.g.graph["updates"]}
    assert updated == {v.path for v in variables + opt.weights}
    feeds = {"g0": np.full((3, 4), 0.5, np.float32), "g1": np.full(4, -1.0, np.float32)}
    _, updates = run_reference(b.g, feeds)
    reference = optimizers.RMSprop(0.1, momentum=0.9, centered=True)
    twins = two_variables()
    reference.apply_gradients(zip([feeds["g0"], feeds["g1"]], twins))
    by_path = {b.g.graph["variables"][n].path: value for n, value in updates.items()}
    for v, twin in zip(variables, twins):
        np.testing.assert_allclose(by_path[v.path], twin.numpy(), rtol=1e-6)
    assert by_path["rmsprop/iteration"] == 1


def test_weights_round_trip_and_order():
    variables = two_variables()
    opt = optimizers.SGD(0.1, momentum=0.9)
    with pytest.raises(ValueError, match="expecting 1 weights"):
        opt.set_weights([np.zeros((), np.int64), np.zeros((3, 4))])
    opt.apply_gradients(zip([np.ones((3, 4), np.float32), np.ones(4, np.float32)], variables))
    weights = opt.get_weights()
    assert [w.shape for w in weights] == [(), (3, 4), (4,)] and weights[0] == 1
    other = optimizers.SGD(0.1, momentum=0.9)
    other.build(two_variables())
    other.set_weights(weights)
    assert [np.array_equal(a, b) for a, b in zip(other.get_weights(), weights)] == [True] * 3
    with pytest.raises(ValueError, match="shape"):
        other.set_weights([weights[0], np.zeros((4, 3)), weights[2]])


def test_missing_gradients_are_skipped_with_a_warning():
    variables = two_variables()
    opt = optimizers.SGD(1.0)
    with pytest.warns(UserWarning, match="Gradients do not exist.*var_1"):
        opt.apply_gradients(zip([np.ones((3, 4), np.float32), None], variables))
    np.testing.assert_allclose(variables[0].numpy(), 0.0)
    np.testing.assert_allclose(variables[1].numpy(), 1.0)
    with pytest.raises(ValueError, match="No gradients"):
        opt.apply_gradients(zip([None, None], variables))


def test_unknown_variable_is_rejected():
    opt = optimizers.SGD()
    opt.apply_gradients(zip([np.ones((3, 4), np.float32), np.ones(4, np.float32)], two_variables()))
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply_gradients([(np.ones(4, np.float32), Variable(np.ones(4, np.float32), name="other"))])


def test_constraint_applies_after_the_update():
    v = Variable(np.array([0.5, -0.5], np.float32), name="w", constraint=constraints.NonNeg())
    optimizers.SGD(1.0).apply_gradients([(np.array([1.0, -1.0], np.float32), v)])
    np.testing.assert_array_equal(v.numpy(), [0.0, 0.5])


def test_minimize_with_a_tape():
    v = Variable(np.array([1.0, 2.0], np.float32), name="w")

    class FakeTape:
        def gradient(self, target, sources):
            return [np.array([3.0, 4.0], np.float32) for _ in sources]

    optimizers.SGD(0.5).minimize(None, [v], tape=FakeTape())
    np.testing.assert_allclose(v.numpy(), [-0.5, 0.0])


@pytest.mark.parametrize("opt", [
    optimizers.SGD(0.1, momentum=0.5, nesterov=True, clipnorm=1.0),
    optimizers.Adam(0.01, beta_1=0.8, amsgrad=True, global_clipnorm=2.0),
    optimizers.AdamW(weight_decay=0.1), optimizers.Adamax(0.2), optimizers.Nadam(epsilon=1e-3),
    optimizers.Adagrad(initial_accumulator_value=0.2), optimizers.Adadelta(rho=0.9),
    optimizers.RMSprop(centered=True, clipvalue=0.5),
    optimizers.Adam(learning_rate=schedules.CosineDecay(0.1, 10, warmup_target=0.2, warmup_steps=2)),
])
def test_config_round_trip(opt):
    config = opt.get_config()
    again = type(opt).from_config(config)
    assert again.get_config() == config
    assert optimizers.deserialize(optimizers.serialize(opt)).get_config() == config


def test_names():
    for name, cls in [("sgd", optimizers.SGD), ("SGD", optimizers.SGD), ("adam", optimizers.Adam),
                      ("Adam", optimizers.Adam), ("rmsprop", optimizers.RMSprop), ("adagrad", optimizers.Adagrad),
                      ("adadelta", optimizers.Adadelta), ("adamw", optimizers.AdamW), ("nadam", optimizers.Nadam),
                      ("adamax", optimizers.Adamax)]:
        assert type(optimizers.get(name)) is cls
    opt = optimizers.SGD()
    assert optimizers.get(opt) is opt
    assert optimizers.get("adam").get_config()["learning_rate"] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="Known optimizers:.*SGD"):
        optimizers.get("sgdd")


def test_keras_argument_checks():
    with pytest.raises(ValueError, match="Only one of"):
        optimizers.SGD(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="momentum"):
        optimizers.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        optimizers.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="not recognized"):
        optimizers.Adam(betta=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert optimizers.SGD(lr=0.3, decay=0.1).learning_rate.numpy() == np.float32(0.3)


SCHEDULES = [  # values at steps 0..9 from Keras 3.15
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.8},
     [0.10000000149011612, 0.09283178299665451, 0.08617739379405975, 0.08000000566244125, 0.07426542043685913,
      0.06894191354513168, 0.06400000303983688, 0.05941234156489372, 0.05515353009104729, 0.05120000243186951]),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.8, "staircase": True},
     [0.1, 0.1, 0.1, 0.08000000566244125, 0.08000000566244125, 0.08000000566244125, 0.06400000303983688,
      0.06400000303983688, 0.06400000303983688, 0.05120000243186951]),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5, "staircase": True},
     [0.1, 0.1, 0.06666667014360428, 0.06666667014360428, 0.05000000074505806, 0.05000000074505806,
      0.03999999910593033, 0.03999999910593033, 0.03333333507180214, 0.03333333507180214]),
    ("PiecewiseConstantDecay", {"boundaries": [2, 5], "values": [1.0, 0.5, 0.1]},
     [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1]),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 4, "end_learning_rate": 0.01, "power": 2.0},
     [0.1, 0.06062500178813934, 0.032499998807907104, 0.015625, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 4, "power": 0.5, "cycle": True},
     [0.1, 0.08661593496799469, 0.07073996961116791, 0.050050001591444016, 9.999999747378752e-05,
      0.06127601116895676, 0.050050001591444016, 0.03541998565196991, 9.999999747378752e-05, 0.050050001591444016]),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 5, "alpha": 0.2},
     [0.1, 0.09236067533493042, 0.07236067950725555, 0.04763931781053543, 0.027639318257570267,
      0.020000001415610313, 0.020000001415610313, 0.020000001415610313, 0.020000001415610313, 0.020000001415610313]),
    ("CosineDecay", {"initial_learning_rate": 0.0, "decay_steps": 4, "warmup_target": 0.2, "warmup_steps": 3},
     [0.0, 0.06666667014360428, 0.13333334028720856, 0.20000000298023224, 0.17071068286895752,
      0.09999999403953552, 0.029289323836565018, 0.0, 0.0, 0.0]),
]


@pytest.mark.parametrize("name,kwargs,expected", SCHEDULES)
def test_schedules_match_keras(name, kwargs, expected):
    schedule = getattr(schedules, name)(**kwargs)
    got = [float(schedule(step).numpy()) for step in range(10)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    again = schedules.deserialize(schedules.serialize(schedule))
    assert type(again) is type(schedule) and again.get_config() == schedule.get_config()


def test_schedule_is_evaluated_in_graph_from_iterations():
    opt = optimizers.SGD(learning_rate=schedules.PiecewiseConstantDecay([1], [1.0, 0.5]))
    v = Variable(np.zeros(2, np.float32), name="w")
    for _ in range(3):
        opt.apply_gradients([(np.ones(2, np.float32), v)])
    np.testing.assert_allclose(v.numpy(), [-2.5, -2.5])  # rates 1.0, 1.0, 0.5 at iterations 0, 1, 2
    assert len(opt._eager_graphs) == 1
    assert len(opt.variables) == 1 and opt.variables[0].path.endswith("/iteration")  # no learning-rate variable


def test_minimize_a_callable_loss_under_gradient_tape():
    v = Variable(np.array([1.0, 2.0], np.float32), name="w")
    optimizers.SGD(0.1).minimize(lambda: ops.sum(ops.square(v)), [v])
    np.testing.assert_allclose(v.numpy(), [0.8, 1.6], rtol=1e-6)
