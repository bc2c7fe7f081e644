"""Speaker-adversarial training: the reversed gradient reaches the convolutions, the saved model is the plain one."""

from __future__ import annotations

import itertools
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from train.adversary import GradientReversal, ramp, speaker_targets, with_speaker_head
from train.cli import main
from train.models import BUILDERS


def test_the_reversal_is_the_identity_forward_and_scales_the_gradient_by_minus_its_scale() -> None:
    layer = GradientReversal()
    layer.scale.assign(0.25)
    x = tf.constant(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    weights = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * weights)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), -0.25 * weights.numpy())


def test_the_ramp_starts_at_zero_and_rises_towards_the_weight() -> None:
    values = [ramp(0.3, e, 80) for e in range(80)]
    assert values[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(values))
    assert 0.29 < values[-1] < 0.3


def _speaker_gradients(trainer: keras.Model, x: np.ndarray, speakers: np.ndarray) -> dict[str, np.ndarray]:
    with tf.GradientTape() as tape:
        _, guess = trainer(x, training=False)
        loss = keras.losses.categorical_crossentropy(speakers, guess)
    grads = tape.gradient(loss, trainer.trainable_weights)
    return {w.path: g.numpy() for w, g in zip(trainer.trainable_weights, grads, strict=True) if g is not None}


def test_the_speaker_loss_pushes_the_convolutions_the_other_way_and_the_head_its_own_way() -> None:
    model = BUILDERS["spectrogram_resnet"]((16, 12, 1))
    trainer, reversal = with_speaker_head(model, 3)
    x = np.random.default_rng(0).normal(size=(6, 16, 12, 1)).astype(np.float32)
    speakers, count = speaker_targets(np.array(["b", "a", "c", "a", "b", "c"]))
    assert count == 3 and speakers.argmax(axis=1).tolist() == [1, 0, 2, 0, 1, 2]
    reversal.scale.assign(1.0)
    adversarial = _speaker_gradients(trainer, x, speakers)
    reversal.scale.assign(-1.0)  # a plain gradient: the head's loss as an ordinary second task
    plain = _speaker_gradients(trainer, x, speakers)
    conv = [p for p in plain if "conv" in p and p.endswith("kernel")]
    head = [p for p in plain if "speaker" in p]
    assert conv and head
    for p in conv:
        assert np.abs(plain[p]).max() > 0
        np.testing.assert_allclose(adversarial[p], -plain[p], rtol=1e-5, atol=1e-8)
    for p in head:
        np.testing.assert_array_equal(adversarial[p], plain[p])
    assert "classifier/kernel" not in " ".join(adversarial)  # the speaker loss never reaches the emotion head


@pytest.mark.parametrize("weight", ["0", "1.5", "x"])
def test_cli_refuses_a_weight_outside_its_range(
    weight: str, synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--speaker-adversarial", weight, "--data", str(synthetic_corpus), "--out", str(tmp_path / "r")])
    assert "--speaker-adversarial" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
