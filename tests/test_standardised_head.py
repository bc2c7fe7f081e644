"""The standardised head: each speaker's embeddings standardised within the batch, in training only; and what both
training-only heads (this one and the speaker-adversarial one) leave behind: the plain model."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from train.adversary import speaker_targets
from train.cli import main
from train.corpus import discover, load_corpus
from train.fit import TrainConfig
from train.models import BUILDERS
from train.run import default_frontend, train_one
from train.standardised_head import EPSILON, HEAD, SpeakerStandardise, with_standardised_head


def batch_standardised(embedding: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """What SpeakerStandardise should give for one batch of plain clips, one speaker at a time."""
    out = np.empty_like(embedding, dtype=np.float64)
    for s in set(speakers.tolist()):
        mine = speakers == s
        centred = embedding[mine] - embedding[mine].mean(0)
        out[mine] = centred / np.sqrt(centred.var(0) + EPSILON)
    return out


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    speakers = np.array(list("abcabcabcaab"))
    return rng.normal(size=(len(speakers), 5)).astype(np.float32) + 0.5, speakers


def test_each_speaker_is_standardised_by_its_own_clips_in_the_batch() -> None:
    emb, speakers = _batch()
    rows, _ = speaker_targets(speakers)
    out = SpeakerStandardise()(emb, rows).numpy()
    np.testing.assert_allclose(out, batch_standardised(emb, speakers), atol=1e-5)
    for s in "abc":
        mine = out[speakers == s]
        np.testing.assert_allclose(mine.mean(0), 0, atol=1e-5)
        assert np.all(np.abs(mine.std(0) - 1) < 0.02)  # 1 but for the variance's epsilon


def test_a_constant_offset_or_scale_of_one_voice_changes_nothing() -> None:
    emb, speakers = _batch()
    rows, _ = speaker_targets(speakers)
    moved = emb.copy()
    moved[speakers == "b"] = moved[speakers == "b"] * 1.5 + np.arange(5)  # voice b louder and shifted
    layer = SpeakerStandardise()
    before, after = layer(emb, rows).numpy(), layer(moved, rows).numpy()
    np.testing.assert_allclose(after[speakers != "b"], before[speakers != "b"], atol=1e-6)
    np.testing.assert_allclose(after[speakers == "b"], before[speakers == "b"], atol=1e-2)  # epsilon scales too
    lone = np.array(list("aab"))
    out = layer(emb[:3], speaker_targets(lone)[0]).numpy()
    np.testing.assert_array_equal(out[2], 0)  # one clip of a voice has no spread: nothing to learn from it


def test_the_head_trains_the_convolutions_and_not_the_network_s_own_classifier() -> None:
    model = BUILDERS["audio_resnet"]((1, 800, 1))
    trainer = with_standardised_head(model, 3, dropout=0.0)
    x = np.random.default_rng(1).normal(size=(6, 1, 800, 1)).astype(np.float32)
    rows, _ = speaker_targets(np.array(list("abcabc")))
    emotions = keras.utils.to_categorical([0, 1, 2, 3, 4, 5], 6)
    with tf.GradientTape() as tape:
        _, guess = trainer([x, rows], training=False)
        loss = keras.losses.categorical_crossentropy(emotions, guess)
    grads = {w.path: g for w, g in zip(trainer.trainable_weights, tape.gradient(loss, trainer.trainable_weights), strict=True)}
    conv = [p for p in grads if p.startswith("conv") and p.endswith("kernel")]
    assert conv and all(grads[p] is not None and np.abs(grads[p].numpy()).max() > 0 for p in conv)
    assert grads[f"{HEAD}/kernel"] is not None
    assert grads["classifier/kernel"] is None  # the network's own head learns only from its own loss


@pytest.mark.parametrize(
    ("model", "option", "head"),
    [("audio_resnet", "standardised_head", HEAD), ("spectrogram_resnet", "speaker_adversarial", "speaker")],
)
def test_a_run_with_a_training_only_head_saves_the_plain_model(
    model: str, option: str, head: str, synthetic_corpus: Path, tmp_path: Path
) -> None:
    clips = discover(synthetic_corpus)
    pcm = load_corpus(synthetic_corpus, clips)
    frontend = default_frontend(model)
    tcfg = TrainConfig(model=model, epochs=2, batch_size=16, warmup_epochs=1, **{option: 0.5})
    train_one(tmp_path / "run", clips, pcm, "loso", 0, tcfg, frontend, mcu_probe=False, show_progress=False)
    saved = keras.models.load_model(tmp_path / "run" / "model.keras")
    plain = BUILDERS[model](frontend.input_shape)
    assert [layer.name for layer in saved.layers] == [layer.name for layer in plain.layers]
    assert saved.count_params() == plain.count_params() and len(saved.outputs) == 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history[f"{head}_loss"]) == len(history["accuracy"]) == len(history["val_accuracy"]) == 2
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())[option] == 0.5


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--standardised-head", "0"], "--standardised-head"),
        (["--standardised-head", "5"], "--standardised-head"),
        (["--standardised-head", "1", "--speaker-adversarial", "0.3"], "do not combine"),
        (["--embedding-classifier", "lda"], "add --embedding-norm"),
        (["--embedding-norm", "--embedding-classifier", "lda:1.5"], "lda takes a shrinkage from 0 to 1"),
        (["--embedding-norm", "--embedding-classifier", "unit-svm"], "choose one of logistic"),
    ],
)
def test_cli_refuses_a_bad_weight_or_combination_of_training_options(
    flags: list[str], named: str, synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([*flags, "--data", str(synthetic_corpus), "--out", str(tmp_path / "r")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
