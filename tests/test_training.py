"""Short real trainings: every artifact is written, one seed gives one model, test clips never steer selection."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from train.augment import VTLP_BOUNDARY_HZ, AugmentConfig, augment_pcm, change_speed, vtlp, vtlp_source, warp_log_mel
from train.cli import main
from train.corpus import discover, load_corpus
from train.fit import AugmentedClips, TrainConfig, WeightAverage, mixup
from train.frontend import clip_features, features
from train.labels import label_index
from train.run import default_frontend, train_one
from train.speaker_norm import apply, load_speaker_stats
from train.teacher import TeacherError, distilled_targets, soft_targets, teacher_run

ARTIFACTS = [
    "model.keras",
    "manifest.json",
    "frontend.json",
    "train_config.json",
    "history.json",
    "metrics.json",
    "test_predictions.json",
    "confusion.png",
    "training.png",
    "summary.md",
]


def _short(model: str) -> TrainConfig:
    return TrainConfig(model=model, epochs=3, batch_size=16, warmup_epochs=1)


def _weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(run / "model.keras").get_weights()


def test_cli_writes_every_artifact(synthetic_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "--model",
            "spectrogram_resnet",
            "--data",
            str(synthetic_corpus),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--quiet",
            "--n-mels",
            "32",
            "--speed-perturb",
            "0.9,1.0,1.1",
            "--vtlp",
            "0.1",
        ]
    )
    assert code == 0
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["clips"] == len(
        [c for c in json.loads((out / "manifest.json").read_text())["clips"] if c["role"] == "test"]
    )
    assert metrics["mcu"]["tflm_arena_bytes"] > 0 and metrics["mcu"]["int8_model_bytes"] > 0
    frontend = json.loads((out / "frontend.json").read_text())
    assert frontend["kind"] == "logmel" and frontend["std"] != 1.0  # standardised on the training part
    assert frontend["n_mels"] == 32  # the override reaches the run's front end, which later stages read
    augment = json.loads((out / "train_config.json").read_text())["augment"]
    assert augment["speeds"] == [0.9, 1.0, 1.1] and augment["vtlp"] == 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "audio_resnet", "--n-mels", "32"], "takes the raw waveform"),
        (["--model", "spectrogram_resnet", "--n-fft", "1000"], "power of two"),
        (["--model", "spectrogram_resnet", "--hop", "0"], "--hop must be"),
        (["--model", "spectrogram_resnet", "--n-fft", "256", "--hop", "128", "--n-mels", "80"], "--n-mels must be 1..64"),
        (["--no-augment", "--speed-perturb", "0.9,1.1"], "drop it or --no-augment"),
        (["--model", "spectrogram_resnet", "--no-augment", "--vtlp", "0.1"], "drop it or --no-augment"),
        (["--model", "audio_resnet", "--vtlp", "0.1"], "--vtlp warps the log-mel"),
        (["--split", "kfold", "--validation-speaker"], "needs --split loso"),
        (["--split", "loso", "--refit", "--validation-speaker"], "needs --split loso and no --refit"),
    ],
)
def test_cli_refuses_a_front_end_or_augmentation_it_cannot_honour(
    args: list[str], message: str, synthetic_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--data", str(synthetic_corpus), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_reports_corpus_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_multi_fold_run_writes_fold_folders_summary_and_resumes(synthetic_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "loso"
    args = ["--model", "audio_resnet", "--data", str(synthetic_corpus), "--split", "loso"]
    args += ["--epochs", "1", "--out", str(out), "--quiet", "--no-mcu-probe"]
    assert main(args) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["folds"] == 4 and len(summary["per_fold"]) == 4
    assert all((out / f"fold-{k:02d}" / "metrics.json").exists() for k in range(4))
    assert np.sum(summary["pooled_confusion"]) == 72
    val = [json.loads((out / f"fold-{k:02d}" / "metrics.json").read_text())["validation_accuracy"] for k in range(4)]
    assert summary["validation"]["validation_accuracy"]["mean"] == pytest.approx(np.mean(val))
    assert "validation clips come from the training speakers" in (out / "summary.md").read_text()

    # A cut-off run continues: a fold whose metrics exist is reused, not trained again.
    (out / "fold-02" / "metrics.json").unlink()
    stamp = (out / "fold-00" / "model.keras").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "fold-00" / "model.keras").stat().st_mtime_ns == stamp
    assert (out / "fold-02" / "metrics.json").exists()
    assert json.loads((out / "metrics.json").read_text())["per_fold"] == summary["per_fold"]


@pytest.fixture(scope="module")
def data(synthetic_corpus: Path):
    clips = discover(synthetic_corpus)
    return clips, load_corpus(synthetic_corpus, clips)


def test_same_seed_same_weights_and_test_clips_never_reach_selection(data, tmp_path: Path) -> None:
    clips, pcm = data
    model = "audio_resnet"
    runs = {}
    for name, audio in (("a", pcm), ("b", pcm)):
        runs[name] = train_one(
            tmp_path / name,
            clips,
            audio,
            "paper",
            0,
            _short(model),
            default_frontend(model),
            mcu_probe=False,
            show_progress=False,
        )
    for x, y in zip(_weights(tmp_path / "a"), _weights(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(x, y)

    # Replace every test clip by loud noise: if no test clip reaches training or selection,
    # the history, the chosen epoch and the weights cannot change -- only the test score can.
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    test_paths = {c["path"] for c in manifest["clips"] if c["role"] == "test"}
    rng = np.random.default_rng(7)
    poisoned = [
        rng.integers(-30000, 30000, len(p)).astype(np.int16) if c.path in test_paths else p
        for c, p in zip(clips, pcm, strict=True)
    ]
    train_one(
        tmp_path / "poisoned",
        clips,
        poisoned,
        "paper",
        0,
        _short(model),
        default_frontend(model),
        mcu_probe=False,
        show_progress=False,
    )
    history = [json.loads((tmp_path / r / "history.json").read_text()) for r in ("a", "poisoned")]
    assert history[0] == history[1]
    for x, y in zip(_weights(tmp_path / "a"), _weights(tmp_path / "poisoned"), strict=True):
        np.testing.assert_array_equal(x, y)
    predictions = [json.loads((tmp_path / r / "test_predictions.json").read_text()) for r in ("a", "poisoned")]
    assert predictions[0] != predictions[1]  # the poison did reach the test part


def test_refit_trains_on_every_non_test_clip_keeps_the_last_epoch_and_never_sees_a_test_clip(data, tmp_path: Path) -> None:
    clips, pcm = data
    model = "audio_resnet"
    tcfg = replace(_short(model), refit=True)
    manifest_paths = {}
    for name, audio in (("refit", pcm), ("poisoned", None)):
        if audio is None:  # every test clip replaced by loud noise: nothing that is kept may change
            test_paths = {c["path"] for c in manifest_paths["refit"] if c["role"] == "test"}
            rng = np.random.default_rng(7)
            audio = [
                rng.integers(-30000, 30000, len(p)).astype(np.int16) if c.path in test_paths else p
                for c, p in zip(clips, pcm, strict=True)
            ]
        metrics = train_one(
            tmp_path / name, clips, audio, "paper", 0, tcfg, default_frontend(model), mcu_probe=False, show_progress=False
        )
        manifest_paths[name] = json.loads((tmp_path / name / "manifest.json").read_text())["clips"]
    roles = Counter(c["role"] for c in manifest_paths["refit"])
    assert roles["val"] == 0 and metrics["train_clips"] == roles["train"] == len(clips) - roles["test"]
    assert metrics["refit"] and metrics["validation_accuracy"] is None and metrics["best_epoch"] == tcfg.epochs
    history = json.loads((tmp_path / "refit" / "history.json").read_text())
    assert "val_accuracy" not in history and len(history["loss"]) == tcfg.epochs
    assert history == json.loads((tmp_path / "poisoned" / "history.json").read_text())
    for x, y in zip(_weights(tmp_path / "refit"), _weights(tmp_path / "poisoned"), strict=True):
        np.testing.assert_array_equal(x, y)
    assert "refit: no validation part" in (tmp_path / "refit" / "summary.md").read_text()


def test_multi_fold_refit_summary_has_no_validation_figure(synthetic_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "loso-refit"
    args = ["--model", "audio_resnet", "--data", str(synthetic_corpus), "--split", "loso", "--refit"]
    assert main([*args, "--epochs", "1", "--out", str(out), "--quiet", "--no-mcu-probe"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["validation"] is None and all(f["validation_accuracy"] is None for f in summary["per_fold"])
    assert "refit runs" in (out / "summary.md").read_text()


def test_different_seed_gives_different_weights_and_split_seed_holds_the_split(data, tmp_path: Path) -> None:
    clips, pcm = data
    model = "audio_resnet"
    for name, seed, split_seed in (("0", 0, None), ("1", 1, None), ("1-on-split-0", 1, 0)):
        tcfg = replace(_short(model), seed=seed, epochs=1)
        train_one(
            tmp_path / name,
            clips,
            pcm,
            "paper",
            0,
            tcfg,
            default_frontend(model),
            mcu_probe=False,
            show_progress=False,
            split_seed=split_seed,
        )
    assert any(not np.array_equal(x, y) for x, y in zip(_weights(tmp_path / "0"), _weights(tmp_path / "1"), strict=True))

    def roles(name: str) -> list[tuple[str, str]]:
        return [(c["path"], c["role"]) for c in json.loads((tmp_path / name / "manifest.json").read_text())["clips"]]

    assert roles("1") != roles("0")  # --seed alone draws another split
    assert roles("1-on-split-0") == roles("0")  # --split-seed holds it
    metrics = json.loads((tmp_path / "1-on-split-0" / "metrics.json").read_text())
    assert (metrics["seed"], metrics["split_seed"]) == (1, 0)
    same_split = zip(_weights(tmp_path / "0"), _weights(tmp_path / "1-on-split-0"), strict=True)
    assert any(not np.array_equal(x, y) for x, y in same_split)  # on one split, --seed still moves the weights


def test_training_epochs_follow_the_seed_alone_and_hold_each_clip_once(data) -> None:
    clips, pcm = data
    model = "audio_resnet"
    labels = [label_index(c.emotion) for c in clips]
    cfg = default_frontend(model)
    batches = AugmentedClips(pcm, labels, cfg, _short(model))
    ahead = list(batches.epochs(3))  # each next epoch built in a thread while the last is used
    backwards = [batches.epoch(e) for e in (2, 1, 0)][::-1]
    for (x, y), (x2, y2) in zip(ahead, backwards, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(ahead[0][0], ahead[1][0])  # re-augmented every epoch

    clean, onehot = AugmentedClips(pcm, labels, cfg, replace(_short(model), augment=None)).epoch(0)
    expected = [clip_features(p, cfg) for p in pcm]
    order = [next(i for i, e in enumerate(expected) if np.array_equal(e, row)) for row in clean]
    assert sorted(order) == list(range(len(pcm)))
    assert onehot.argmax(axis=1).tolist() == [labels[i] for i in order]


def _peak_hz(pcm: np.ndarray) -> float:
    return float(np.abs(np.fft.rfft(pcm.astype(np.float64))).argmax() * 16000 / len(pcm))


def test_speed_perturbation_moves_tempo_and_pitch_together() -> None:
    tone = (8000 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype(np.int16)
    for factor in (0.9, 1.1):
        faster = change_speed(tone, factor)
        assert faster.dtype == np.int16 and abs(len(faster) - 16000 / factor) <= 1
        assert _peak_hz(faster) == pytest.approx(200 * factor, abs=1.5)

    # In training the drawn speed comes before the crop: a 1 s tone at half speed fills the 2 s waveform input.
    cfg = default_frontend("audio_resnet")
    quiet = AugmentConfig(gain_db=0.0, noise_prob=0.0, speeds=(0.5,))
    slowed = augment_pcm(tone, cfg, quiet, np.random.default_rng(0))
    assert len(slowed) == cfg.clip_samples and _peak_hz(slowed) == pytest.approx(100, abs=1)
    assert _peak_hz(augment_pcm(tone, cfg, replace(quiet, speeds=(1.0,)), np.random.default_rng(0))) == pytest.approx(200, abs=1)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_source_inverts_the_piecewise_linear_warp(alpha: float) -> None:
    """The warp sends f to alpha * f up to the bend, then along a line to fmax; its inverse is closed-form."""
    fmax = 8000.0
    bend = VTLP_BOUNDARY_HZ * min(alpha, 1.0) / alpha
    source = np.linspace(0.0, fmax, 801)
    warped = np.where(source <= bend, alpha * source, fmax - (fmax - alpha * bend) / (fmax - bend) * (fmax - source))
    np.testing.assert_allclose(vtlp_source(warped, alpha, fmax), source, rtol=1e-9, atol=1e-9)
    assert vtlp_source(np.array([0.0, fmax]), alpha, fmax).tolist() == [0.0, fmax]


def test_vtlp_moves_the_log_mel_as_a_shorter_or_longer_vocal_tract_would() -> None:
    cfg = default_frontend("spectrogram_resnet").raw
    t = np.arange(cfg.clip_samples) / cfg.sample_rate

    def tone_log_mel(hz: float) -> np.ndarray:
        return features((8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16), cfg)

    def peak_band(feat: np.ndarray) -> int:
        return int(feat[:, feat.shape[1] // 2, 0].argmax())

    base = tone_log_mel(1000.0)
    for alpha in (0.9, 1.1):  # below the warp's bend, frequencies scale by alpha: as if the tone were alpha x 1000 Hz
        assert peak_band(warp_log_mel(base, cfg, alpha)) == peak_band(tone_log_mel(1000.0 * alpha)) != peak_band(base)
    np.testing.assert_allclose(warp_log_mel(base, cfg, 1.0), base, rtol=1e-6, atol=1e-5)
    # Off, it draws nothing: every other augmentation keeps its random draws.
    rng = np.random.default_rng(0)
    assert vtlp(base, cfg, AugmentConfig(), rng) is base and rng.random() == np.random.default_rng(0).random()


def test_mixup_blends_each_clip_with_a_partner_by_its_dominant_share() -> None:
    x = np.random.default_rng(1).standard_normal((6, 1, 50, 1)).astype(np.float32)
    y = np.eye(6, dtype=np.float32)  # clip i is the only clip of class i
    mixed_x, mixed_y = mixup(x, y, 0.4, np.random.default_rng(2))
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, rtol=1e-6)
    partners = set()
    for i in range(6):
        own = mixed_y[i, i]
        assert own >= 0.5
        others = np.flatnonzero((mixed_y[i] > 0) & (np.arange(6) != i))
        j = int(others[0]) if len(others) else i
        partners.add(j)
        np.testing.assert_allclose(mixed_x[i], own * x[i] + (1 - own) * x[j], rtol=1e-5, atol=1e-6)
    assert len(partners) > 1 and not np.array_equal(mixed_x, x)

    # In training it follows the seed alone, like the rest of the augmentation.
    clips_x = [np.full(4000, 100 * (k + 1), np.int16) for k in range(6)]
    tcfg = replace(_short("audio_resnet"), augment=None, mixup_alpha=0.4, batch_size=6)
    cfg = default_frontend("audio_resnet")
    first, again = (AugmentedClips(clips_x, list(range(6)), cfg, tcfg).epoch(0) for _ in range(2))
    np.testing.assert_array_equal(first[0], again[0])
    assert 0.5 <= first[1].max(axis=1).min() < 1.0  # clips of different classes were mixed


def test_weight_average_is_an_exponential_average_of_each_epochs_weights() -> None:
    average = WeightAverage(0.75)
    epochs = [[np.full(3, v, np.float32), np.full((2, 2), -v, np.float32)] for v in (4.0, 8.0, 0.0)]
    first = average.update(epochs[0])
    np.testing.assert_array_equal(first[0], epochs[0][0])
    epochs[0][0][:] = 99  # the average keeps its own copy
    average.update(epochs[1])
    latest = average.update(epochs[2])
    expected = 0.75 * (0.75 * 4.0 + 0.25 * 8.0) + 0.25 * 0.0
    np.testing.assert_allclose(latest[0], expected)
    np.testing.assert_allclose(latest[1], -expected)
    assert latest[0].dtype == np.float32


def test_weight_averaging_changes_what_is_validated_and_kept_not_how_it_trains(data, tmp_path: Path) -> None:
    clips, pcm = data
    model = "audio_resnet"
    histories = {}
    for name, decay in (("plain", 0.0), ("averaged", 0.6)):
        train_one(
            tmp_path / name,
            clips,
            pcm,
            "paper",
            0,
            replace(_short(model), average_decay=decay),
            default_frontend(model),
            mcu_probe=False,
            show_progress=False,
        )
        histories[name] = json.loads((tmp_path / name / "history.json").read_text())
    plain, averaged = histories["plain"], histories["averaged"]
    assert plain["loss"] == averaged["loss"]  # the same training steps
    assert plain["val_loss"][0] == averaged["val_loss"][0]  # the first average is the first epoch
    assert plain["val_loss"][1:] != averaged["val_loss"][1:]


def test_distillation_mixes_a_same_split_teacher_into_the_labels_and_refuses_any_other(data, tmp_path: Path) -> None:
    clips, pcm = data
    teacher_cfg = replace(_short("spectrogram_resnet"), epochs=1)
    train_one(
        tmp_path / "teacher",
        clips,
        pcm,
        "paper",
        0,
        teacher_cfg,
        default_frontend("spectrogram_resnet"),
        mcu_probe=False,
        show_progress=False,
    )
    student = replace(_short("audio_resnet"), epochs=1)
    plain = train_one(
        tmp_path / "plain",
        clips,
        pcm,
        "paper",
        0,
        student,
        default_frontend("audio_resnet"),
        mcu_probe=False,
        show_progress=False,
    )
    distilled = train_one(
        tmp_path / "distilled",
        clips,
        pcm,
        "paper",
        0,
        replace(student, teachers=(str(tmp_path / "teacher"),), distill_weight=0.7),
        default_frontend("audio_resnet"),
        mcu_probe=False,
        show_progress=False,
    )
    assert plain["teachers"] == [] and distilled["teachers"] == [str(tmp_path / "teacher")]
    pairs = zip(_weights(tmp_path / "plain"), _weights(tmp_path / "distilled"), strict=True)
    assert any(not np.array_equal(x, y) for x, y in pairs)  # same seed and batches: only the targets differ

    # A teacher tested on other clips may have trained on this run's test clips: refused.
    with pytest.raises(TeacherError, match="tested on other clips"):
        train_one(
            tmp_path / "leaky",
            clips,
            pcm,
            "loso",
            0,
            replace(student, teachers=(str(tmp_path / "teacher"),)),
            default_frontend("audio_resnet"),
            mcu_probe=False,
            show_progress=False,
        )
    assert not (tmp_path / "leaky" / "model.keras").exists()
    with pytest.raises(TeacherError, match="train the teacher first"):
        teacher_run(tmp_path / "missing", 0)


def test_soft_targets_are_tempered_teacher_probabilities_mixed_by_weight(data, tmp_path: Path) -> None:
    clips, pcm = data
    train_one(
        tmp_path / "teacher",
        clips,
        pcm,
        "paper",
        0,
        replace(_short("audio_resnet"), epochs=1),
        default_frontend("audio_resnet"),
        mcu_probe=False,
        show_progress=False,
    )
    few, speakers = pcm[:8], [c.speaker for c in clips[:8]]
    sharp, soft = (soft_targets(tmp_path / "teacher", few, speakers, t) for t in (1.0, 4.0))
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0, rtol=1e-5)
    entropy = [-(p * np.log(p)).sum(axis=1) for p in (sharp, soft)]
    assert np.all(entropy[1] > entropy[0])  # a higher temperature flattens every clip's distribution
    np.testing.assert_array_equal(sharp.argmax(axis=1), soft.argmax(axis=1))
    labels = np.array([label_index(c.emotion) for c in clips[:8]])
    mixed = distilled_targets(labels, sharp, 0.25)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(mixed[np.arange(8), labels], 0.75 + 0.25 * sharp[np.arange(8), labels], rtol=1e-5)
    with pytest.raises(ValueError, match="weight"):
        distilled_targets(labels, sharp, 1.5)


def test_a_speaker_normalised_teacher_meets_each_clip_with_its_speakers_statistics(data, tmp_path: Path) -> None:
    clips, pcm = data
    frontend = default_frontend("spectrogram_resnet")
    tcfg = replace(_short("spectrogram_resnet"), epochs=1, speaker_norm="bins")
    train_one(tmp_path / "teacher", clips, pcm, "loso", 0, tcfg, frontend, mcu_probe=False, show_progress=False)
    known = load_speaker_stats(tmp_path / "teacher" / "speaker_norm.json")
    mine = [i for i, c in enumerate(clips) if c.speaker in known][:6]
    soft = soft_targets(tmp_path / "teacher", [pcm[i] for i in mine], [clips[i].speaker for i in mine], 1.0)
    model = keras.models.load_model(tmp_path / "teacher" / "model.keras")
    x = np.stack([apply(clip_features(pcm[i], frontend.raw), known[clips[i].speaker]) for i in mine])
    np.testing.assert_allclose(soft, model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    unnormalised = model.predict(np.stack([clip_features(pcm[i], frontend.raw) for i in mine]), verbose=0)
    assert not np.allclose(soft, unnormalised, atol=1e-3)
