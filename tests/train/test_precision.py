"""--precision: what auto picks, the notes, and that onednn_bfloat16 really computes in bfloat16
with a swish gradient equal to TensorFlow's."""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from skin_keras.core.errors import UserError
from skin_keras.model.spec import ModelSpec
from skin_keras.train import loop, precision

from conftest import tiny_config

BF16_CPU = bool((precision.cpu_flags() or set()) & set(precision.BF16_CPU_FLAGS))


def test_a_mixed_precision_the_cpu_can_only_emulate_is_said(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni\n")
    assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx512f", "avx512_vnni"}
    assert precision.cpu_flags(str(tmp_path / "absent")) is None
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f"})
    assert "no bfloat16 instructions" in precision.precision_note("mixed_bfloat16")
    assert "no bfloat16 instructions" in precision.precision_note("onednn_bfloat16")
    assert "emulate float16" in precision.precision_note("mixed_float16")
    assert precision.precision_note("float32") is None
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.precision_note("mixed_bfloat16") is None  # This machine's CPU.
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)  # Unknown: nothing to say.
    assert precision.precision_note("mixed_bfloat16") is None


def _config(mode, **spec):
    return types.SimpleNamespace(precision=mode, batch_size=4, model_spec=ModelSpec(
        **{"model": "b0", "weights": "none", "img_size": 32, "freeze_layers": False, **spec}))


def test_auto_times_both_modes_only_on_a_cpu_that_has_bfloat16(monkeypatch):
    timed = []

    def speeds(spec, classes, batch, mode):
        timed.append((spec.img_size, mode))
        return {"float32": 10.0, "onednn_bfloat16": 12.0 if spec.img_size > 40 else 8.0}[mode]

    monkeypatch.setattr(precision, "_images_per_second", speeds)
    monkeypatch.setattr(precision, "_CHOSEN", {})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert precision.choose(_config("auto"), 3) == "float32"
    assert precision.choose(_config("auto", img_size=64), 3) == "onednn_bfloat16"
    assert precision.choose(_config("auto", img_size=64), 3) == "onednn_bfloat16"  # Once.
    assert timed == [(32, "float32"), (32, "onednn_bfloat16"), (64, "float32"),
                     (64, "onednn_bfloat16")]
    assert precision.choose(_config("auto"), 3, recorded="onednn_bfloat16") == "onednn_bfloat16"
    assert precision.choose(_config("auto", img_size=96), 3, multi_worker=True) == "float32"
    assert precision.choose(_config("float32", img_size=96), 3) == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f"})
    assert precision.choose(_config("auto", img_size=96), 3) == "float32"
    assert len(timed) == 4  # Nothing timed where bfloat16 cannot run natively.
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(precision, "_onednn_enabled", lambda: False)  # TF_ENABLE_ONEDNN_OPTS=0
    assert precision.choose(_config("auto", img_size=96), 3) == "float32"
    with pytest.raises(UserError, match="TF_ENABLE_ONEDNN_OPTS=0"):
        precision.choose(_config("onednn_bfloat16"), 3)
    monkeypatch.setattr(precision, "_onednn_enabled", lambda: True)
    monkeypatch.setattr(precision, "_accelerated", lambda: True)  # A GPU: the rewrite is CPU's.
    assert precision.choose(_config("auto", img_size=96), 3) == "float32"
    with pytest.raises(UserError, match="mixed_bfloat16"):
        precision.choose(_config("onednn_bfloat16"), 3)
    assert len(timed) == 4


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no bfloat16 instructions")
def test_auto_times_real_training_steps_and_leaves_nothing_behind(monkeypatch):
    monkeypatch.setattr(precision, "_CHOSEN", {})
    rate = precision._images_per_second(_config("auto").model_spec, 3, 4, "onednn_bfloat16")
    assert rate > 0
    assert precision.choose(_config("auto"), 3) in ("float32", "onednn_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert tf.config.optimizer.get_experimental_options().get(
        "auto_mixed_precision_onednn_bfloat16", False) is False


def test_swish_gradient_from_its_output_equals_tensorflows():
    x = tf.constant(np.r_[np.linspace(-30, 30, 2001), 0.0, 1e-30, -1e-30, 88.0, -88.0]
                    .astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = precision.silu_from_output(x), tf.nn.silu(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tape.gradient(ours, x), tape.gradient(theirs, x),
                               rtol=1e-5, atol=1e-6)
    assert tape.gradient(ours, x).numpy()[2001] == 0.5


MODEL = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(
    32, 3, activation="swish", kernel_initializer=keras.initializers.GlorotUniform(seed=1))])


def _conv_and_swish_gradient(images, model=MODEL):
    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(model(images))
        return loss, tape.gradient(loss, images)

    return step(images)


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no bfloat16 instructions")
def test_onednn_bfloat16_computes_in_bfloat16_and_restores_float32():
    images = tf.constant(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), tf.float32)
    loss, grad = _conv_and_swish_gradient(images)
    with precision.compute_precision("onednn_bfloat16"):
        assert keras.mixed_precision.global_policy().name == "float32"  # Weights float32.
        half_loss, half_grad = _conv_and_swish_gradient(images)
    assert half_loss.dtype == tf.float32
    # bfloat16 keeps 8 bits of mantissa: visibly different from float32, and close to it.
    assert 1e-4 < abs(float(half_loss - loss)) / abs(float(loss)) < 2e-2
    assert not np.allclose(half_grad, grad, rtol=1e-4, atol=0)
    np.testing.assert_allclose(half_grad, grad, rtol=0.1, atol=0.05)
    again_loss, _ = _conv_and_swish_gradient(images)  # Restored: float32 again.
    np.testing.assert_allclose(again_loss, loss, rtol=1e-6)
    assert tf.config.optimizer.get_experimental_options().get(
        "auto_mixed_precision_onednn_bfloat16", False) is False


def test_the_swish_of_a_bfloat16_run_is_the_one_without_a_second_sigmoid():
    x = tf.constant([[-2.0, 0.0, 3.0]])
    with precision.compute_precision("float32"):
        graph = tf.function(lambda x: tf.gradients(keras.activations.swish(x), x)
                            ).get_concrete_function(x).graph
    assert any(op.type == "Sigmoid" for op in graph.get_operations()
               if "gradients" in op.name)
    if not BF16_CPU:
        pytest.skip("this CPU has no bfloat16 instructions")
    with precision.compute_precision("onednn_bfloat16"):
        graph = tf.function(lambda x: tf.gradients(keras.activations.swish(x), x)
                            ).get_concrete_function(x).graph
    assert not any(op.type == "Sigmoid" for op in graph.get_operations()
                   if "gradients" in op.name)
    with precision.compute_precision("mixed_bfloat16"):  # On a CPU: the same swish.
        graph = tf.function(lambda x: tf.gradients(keras.activations.swish(x), x)
                            ).get_concrete_function(x).graph
    assert not any(op.type == "Sigmoid" for op in graph.get_operations()
                   if "gradients" in op.name)
    assert keras.activations.swish(x).numpy() == pytest.approx(tf.nn.silu(x).numpy())


def test_a_run_trains_in_the_mode_auto_chose_and_records_it(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setattr(precision, "bfloat16_cpu", lambda: True)
    monkeypatch.setattr(precision, "_CHOSEN", {})
    monkeypatch.setattr(precision, "_images_per_second",
                        lambda spec, classes, batch, mode: {"float32": 1.0}.get(mode, 2.0))
    applied = []
    monkeypatch.setattr(precision, "apply", lambda mode, apply=precision.apply: (
        applied.append(mode), apply(mode))[1])
    run = loop.train_and_evaluate(tiny_config(tmp_path, tiny_dataset, epochs=1,
                                              precision="auto"), verbose=0)
    params = json.loads((run / "train_params.json").read_text())
    assert params["model"]["precision"] == "onednn_bfloat16"
    assert params["train parameters"]["precision"] == "auto"
    assert applied == ["onednn_bfloat16"]
    assert keras.mixed_precision.global_policy().name == "float32"  # Restored after the run.
    assert tf.config.optimizer.get_experimental_options().get(
        "auto_mixed_precision_onednn_bfloat16", False) is False
