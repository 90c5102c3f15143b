"""DepthwiseConv2D, SeparableConv2D, MultiHeadAttention and Attention against Keras 3 fixtures
(tests/fixtures/keras/attention/, made by tests/fixtures/make_attention_fixtures.py): outputs
and gradients w.r.t. inputs and every weight on generated kernels, masks and causal masks
included, and Keras's get_config; the fused attention's memory plan from sequence length 512;
depthwise + BatchNormalization + ReLU6 as one kernel in inference."""
import json

import numpy as np
import pytest

import kcompiler
from kcompiler import keras
from kcompiler.ir.types import num_elements
from kcompiler.keras import ops
from keras_fixtures import cases, indexed, layer_case, load
from tests.keras.test_configs import _comparable

KIND = "attention"


def assert_close(got, expected, what):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())),
                               err_msg=what)


def _mha_call(case):
    """(layer with the fixture's weights, inputs, call keyword arguments) of a MultiHeadAttention case."""
    spec = case["spec"]
    layer = keras.layers.MultiHeadAttention(**spec["kwargs"])
    xs = indexed(case, "x")
    layer.build(xs[0].shape, xs[1].shape, xs[2].shape if len(xs) > 2 else None)
    layer.set_weights(indexed(case, "w"))
    kwargs = dict(spec["call"])
    kwargs.update({name: case[name] for name in spec["masks"]})
    return layer, xs, kwargs


def _luong_call(case):
    """(layer with the fixture's weights, inputs, call keyword arguments) of an Attention case."""
    spec = case["spec"]
    layer = getattr(keras.layers, spec["class_name"])(**spec["kwargs"])
    xs = indexed(case, "x")
    layer.build([x.shape for x in xs])
    layer.set_weights(indexed(case, "w"))
    kwargs = dict(spec["call"])
    if spec["masks"]:
        kwargs["mask"] = [case["query_mask"], case["value_mask"]]
    return layer, xs, kwargs


def _run(layer, xs, kwargs, tensors):
    if isinstance(layer, keras.layers.MultiHeadAttention):
        key = {"key": tensors[2]} if len(tensors) > 2 else {}
        return layer(tensors[0], tensors[1], **key, **kwargs)
    if isinstance(layer, keras.layers.Attention):
        return layer(list(tensors), **kwargs)
    return layer(tensors[0], **kwargs)


def _layer_and_inputs(case):
    if case["spec"]["class_name"] == "MultiHeadAttention":
        return _mha_call(case)
    if case["spec"]["class_name"] in ("Attention", "AdditiveAttention"):
        return _luong_call(case)
    return layer_case(case)


@pytest.mark.parametrize("name", cases(KIND))
def test_outputs_and_gradients_match_keras(name):
    case = load(KIND, name)
    layer, xs, kwargs = _layer_and_inputs(case)
    tensors = [ops.convert_to_tensor(x) for x in xs]
    with kcompiler.GradientTape() as tape:
        for t in tensors:
            tape.watch(t)
        out = _run(layer, xs, kwargs, tensors)
        outs = list(out) if isinstance(out, tuple) else [out]
        rs = indexed(case, "r") or [case["r"]]
        total = ops.sum(outs[0] * rs[0])
        for o, r in zip(outs[1:], rs[1:]):
            total = total + ops.sum(o * r)
    expected_ys = indexed(case, "y") or [case["y"]]
    for k, (o, e) in enumerate(zip(outs, expected_ys)):
        assert_close(o.numpy(), e, f"output {k}")
    grads = tape.gradient(total, tensors + layer.weights)
    expected_x = indexed(case, "grad_x") or [case["grad_x"]]
    for k, (g, e) in enumerate(zip(grads, expected_x)):
        assert_close(g.numpy(), e, f"gradient of input {k}")
    for k, (g, e) in enumerate(zip(grads[len(tensors):], indexed(case, "grad_w"))):
        assert_close(g.numpy(), e, f"gradient of weight {k} ({layer.weights[k].path})")


@pytest.mark.parametrize("name", cases(KIND))
def test_config_is_keras(name):
    case = load(KIND, name)
    layer, _, _ = _layer_and_inputs(case)
    expected = json.loads(str(case["config"]))
    got = json.loads(json.dumps({k: v for k, v in layer.get_config().items() if k not in ("name", "dtype")}))
    assert _comparable(got) == _comparable(expected)
    rebuilt = type(layer).from_config(layer.get_config())
    assert rebuilt.get_config() == layer.get_config()


def _largest_buffer(program, stage="planned"):
    g = program.stages[stage]
    sizes = []
    for n in g.nodes:
        t = g.nodes[n]["type"]
        for one in (t if isinstance(t, tuple) else (t,)):
            sizes.append((num_elements(one.shape), g.nodes[n]["op"]))
    return max(sizes)


def test_no_batch_heads_length_length_buffer_from_length_512():
    length, heads, batch = 512, 2, 2
    inputs = keras.Input((length, 8))
    y = keras.layers.MultiHeadAttention(heads, 4)(inputs, inputs, use_causal_mask=True)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(y)))
    model.compile(optimizer="sgd", loss="mse")
    program = kcompiler.compile(model, training=True, batch_size=batch)
    size, op = _largest_buffer(program)
    assert size < batch * heads * length * length, f"a {op} buffer of {size} elements"
    ops_used = {program.stages["planned"].nodes[n]["op"] for n in program.stages["planned"].nodes}
    assert {"attention", "attention_grad"} <= ops_used
    x = np.random.default_rng(0).standard_normal((batch, length, 8)).astype(np.float32)
    logs = program.train_step(x, np.zeros((batch, 1), np.float32))
    assert np.isfinite(logs["loss"])


def test_returning_the_scores_composes_them_and_matches_the_fused_path():
    rng = np.random.default_rng(1)
    q, v = rng.standard_normal((2, 4, 5)).astype(np.float32), rng.standard_normal((2, 6, 5)).astype(np.float32)
    layer = keras.layers.MultiHeadAttention(2, 3)
    fused = layer(q, v, use_causal_mask=False).numpy()
    composed, scores = layer(q, v, return_attention_scores=True)
    assert_close(composed.numpy(), fused, "composed vs fused")
    assert scores.shape == (2, 2, 4, 6)
    np.testing.assert_allclose(scores.numpy().sum(axis=-1), 1.0, rtol=1e-5)


def test_dropout_in_training_drops_attention_weights():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 6, 4)).astype(np.float32)
    layer = keras.layers.MultiHeadAttention(2, 3, dropout=0.5, seed=3)
    at_inference = layer(q, q, training=False).numpy()
    in_training = layer(q, q, training=True).numpy()
    assert not np.allclose(at_inference, in_training)
    assert_close(layer(q, q).numpy(), at_inference, "no dropout outside training")


def test_errors_name_the_layer_and_the_argument():
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        keras.layers.MultiHeadAttention(0, 4)
    with pytest.raises(kcompiler.errors.UnsupportedError, match="use_gate"):
        keras.layers.MultiHeadAttention(2, 4, use_gate=True)
    with pytest.raises(ValueError, match="depth_multiplier"):
        keras.layers.DepthwiseConv2D(3, depth_multiplier=0)
    layer = keras.layers.MultiHeadAttention(2, 4)
    with pytest.raises(ValueError, match="All dimensions of `value` and `key`"):
        layer(np.zeros((1, 3, 4), np.float32), np.zeros((1, 5, 4), np.float32), key=np.zeros((1, 6, 4), np.float32))


def test_attention_over_axes_refuses_what_it_cannot_mean():
    x = np.zeros((1, 3, 4, 5), np.float32)
    with pytest.raises(ValueError, match="attention_axes=\\(3,\\) must name distinct axes"):
        keras.layers.MultiHeadAttention(2, 4, attention_axes=3)(x, x)   # the features axis
    with pytest.raises(kcompiler.errors.ShapeError, match="same rank"):
        keras.layers.MultiHeadAttention(2, 4)(x, np.zeros((1, 3, 5), np.float32))
    with pytest.raises(kcompiler.errors.ShapeError, match="not attended over"):
        keras.layers.MultiHeadAttention(2, 4, attention_axes=2)(x, np.zeros((1, 2, 4, 5), np.float32))
    with pytest.raises(kcompiler.errors.UnsupportedError, match="use_causal_mask"):
        keras.layers.MultiHeadAttention(2, 4)(x, x, use_causal_mask=True)
    with pytest.raises(kcompiler.errors.ShapeError, match="attention_mask must have shape"):
        keras.layers.MultiHeadAttention(2, 4)(x, x, attention_mask=np.ones((1, 12, 12), bool))


def test_depthwise_batchnorm_relu6_is_one_kernel_in_inference():
    model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(6.0)])
    rng = np.random.default_rng(4)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 + (1.0 if "variance" in w.path else 0)
                       for w in model.weights])
    program = kcompiler.compile(model, batch_size=2)
    full = [k for k in program.kernels if any(o in ("depthwise_conv2d", "fused_pool_grad") for o in [k.op] + k.fused)]
    assert len(full) == 1 and "depthwise_conv2d" in full[0].fused
    big = [k for k in program.kernels if k.nodes and _touches_full_size(program, k)]
    assert len(big) == 1
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32) * 4   # some outputs reach ReLU6's cap
    unfused = kcompiler.compile(model, batch_size=2, fuse=False)
    assert len(unfused.kernels) > len(program.kernels)
    assert_close(program(x), unfused(x), "fused inference")
    assert (program(x) <= 6.0).all() and (program(x) == 6.0).any()


def _touches_full_size(program, kernel):
    g = program.graph
    return any(num_elements(g.nodes[n]["type"].shape) >= 2 * 8 * 8 * 4 for n in kernel.nodes
               if not isinstance(g.nodes[n]["type"], tuple) and g.nodes[n]["op"] not in ("input", "variable"))


def test_a_keras_file_with_these_layers_loads_and_predicts_as_keras():
    from keras_fixtures import ROOT
    folder = ROOT / "attention_files"
    model = keras.models.load_model(folder / "attention_layers.keras")
    with np.load(folder / "attention_layers.npz") as data:
        x, expected = data["x"], data["y"]
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"MultiHeadAttention", "DepthwiseConv2D", "SeparableConv2D", "Attention"} <= kinds
    assert_close(model.predict(x, verbose=0), expected, "predictions of the loaded model")
