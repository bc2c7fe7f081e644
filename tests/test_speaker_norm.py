"""Per-speaker normalisation: statistics from a speaker's own audio only, never a label or a later clip."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from host.main_job import LOSO_COMMANDS
from train.cli import main, parse_args
from train.corpus import Clip, discover, load_corpus
from train.fit import AugmentedClips, TrainConfig, feature_batch
from train.frontend import DEFAULT_LOGMEL, clip_features
from train.labels import EMOTIONS
from train.run import default_frontend, train_one
from train.speaker_norm import Running, Stats, apply, by_speaker, causal, pooled, scoring_order, scoring_plan

N_MELS = 8


def _raws(count: int, seed: int = 0) -> list[np.ndarray]:
    """Unstandardised (n_mels, frames, 1) inputs of different lengths and levels."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(-6 + 0.1 * i, 2 + 0.05 * i, size=(N_MELS, 5 + i % 4, 1))).astype(np.float32) for i in range(count)]


@pytest.mark.parametrize("mode", ["scalar", "bins"])
def test_running_statistics_are_the_mean_and_std_of_every_frame(mode: str) -> None:
    raws = _raws(7)
    stats = pooled(raws, mode)
    frames = np.concatenate([r[..., 0] for r in raws], axis=1)  # (n_mels, all frames)
    axis = None if mode == "scalar" else 1
    np.testing.assert_allclose(stats.mean, frames.mean(axis=axis), rtol=1e-5)
    np.testing.assert_allclose(stats.std, frames.std(axis=axis), rtol=1e-4)
    assert stats.mean.shape == (() if mode == "scalar" else (N_MELS,))
    assert stats.mean.dtype == np.float32 and stats.std.dtype == np.float32
    normed = apply(raws[0], stats)
    assert normed.shape == raws[0].shape and normed.dtype == np.float32


def test_silence_does_not_blow_the_inputs_up() -> None:
    run = Running("bins", N_MELS)
    run.add(np.full((N_MELS, 4, 1), -13.8, np.float32))
    assert np.all(run.stats().std > 0)
    with pytest.raises(ValueError, match="no audio"):
        Running("scalar", N_MELS).stats()
    with pytest.raises(ValueError, match="scalar, bins"):
        Running("frames", N_MELS)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["scalar", "bins"])
def test_causal_statistics_of_clip_i_come_from_the_clips_before_it_only(mode: str) -> None:
    raws = _raws(12)
    prior = Stats(np.zeros((), np.float32) if mode == "scalar" else np.zeros(N_MELS, np.float32), np.ones((), np.float32))
    stats = causal(raws, mode, prior)
    assert stats[0] is prior
    for i in range(1, len(raws)):
        expected = pooled(raws[:i], mode)
        np.testing.assert_array_equal(stats[i].mean, expected.mean)
        np.testing.assert_array_equal(stats[i].std, expected.std)
    # A different clip 7 (louder, longer) changes nothing before it, and everything after it.
    changed = list(raws)
    changed[7] = np.full((N_MELS, 20, 1), 5.0, np.float32)
    again = causal(changed, mode, prior)
    for i in range(8):
        np.testing.assert_array_equal(again[i].mean, stats[i].mean)
        np.testing.assert_array_equal(again[i].std, stats[i].std)
    for i in range(8, len(raws)):
        assert not np.array_equal(again[i].mean, stats[i].mean)


def test_enrolment_clips_are_never_scored_and_the_curve_scores_one_fixed_set() -> None:
    raws = _raws(60)
    prior = pooled(raws[:3], "scalar")
    plans = {p.name: p for p in scoring_plan(raws, "scalar", prior)}
    assert list(plans) == ["causal", "training-stats", "enrol-1", "enrol-5", "enrol-20", "enrol-50", "all-clips"]
    order = scoring_order(60)
    np.testing.assert_array_equal(order, scoring_order(60))  # fixed: the same order every time
    assert sorted(plans["causal"].scored) == list(range(60))
    fixed = plans["training-stats"].scored
    np.testing.assert_array_equal(fixed, order[50:])
    for k in (1, 5, 20, 50):
        plan = plans[f"enrol-{k}"]
        np.testing.assert_array_equal(plan.enrolled, order[:k])
        np.testing.assert_array_equal(plan.scored, fixed)
        assert not set(plan.enrolled) & set(plan.scored)
        np.testing.assert_array_equal(plan.stats[0].mean, pooled([raws[i] for i in order[:k]], "scalar").mean)
        assert len(plan.stats) == len(plan.scored)
    # A speaker with fewer clips than an enrolment count: that count is left out, never scored on its own enrolment.
    short = {p.name: p for p in scoring_plan(raws[:18], "scalar", prior)}
    assert [n for n in short if n.startswith("enrol")] == ["enrol-1", "enrol-5"]
    assert len(short["enrol-5"].scored) == 13


def test_scalar_normalisation_is_the_board_front_ends_standardisation_with_the_speakers_constants() -> None:
    rng = np.random.default_rng(3)
    pcm = (3000 * rng.standard_normal(DEFAULT_LOGMEL.clip_samples)).astype(np.int16)
    raw = clip_features(pcm, DEFAULT_LOGMEL)  # mean 0, std 1: unstandardised
    stats = Stats(np.float32(-7.25), np.float32(4.125))
    board = clip_features(pcm, DEFAULT_LOGMEL.with_standardisation(-7.25, 4.125))
    np.testing.assert_array_equal(apply(raw, stats), board)


def test_default_path_is_unchanged() -> None:
    assert TrainConfig(model="spectrogram_resnet").speaker_norm is None
    assert parse_args([]).speaker_norm is None
    rng = np.random.default_rng(4)
    pcms = [(2000 * rng.standard_normal(20000 + 4000 * i)).astype(np.int16) for i in range(3)]
    cfg = DEFAULT_LOGMEL.with_standardisation(-7.0, 4.0)
    np.testing.assert_array_equal(feature_batch(pcms, cfg), np.stack([clip_features(p, cfg) for p in pcms]))
    tcfg = TrainConfig(model="spectrogram_resnet", batch_size=2)
    plain = AugmentedClips(pcms, [0, 1, 2], cfg, tcfg).batch(0, 0)
    again = AugmentedClips(pcms, [0, 1, 2], cfg, tcfg, norms=None).batch(0, 0)
    np.testing.assert_array_equal(plain[0], again[0])


def test_training_speakers_get_their_own_statistics() -> None:
    raws = _raws(6)
    speakers = ["b", "a", "b", "a", "a", "b"]
    voices = by_speaker(speakers, raws, "bins")
    assert list(voices) == ["a", "b"]
    np.testing.assert_array_equal(voices["a"].stats().mean, pooled([raws[1], raws[3], raws[4]], "bins").mean)
    state = voices["a"].state()  # what a board that heard a's three clips holds
    assert (state.clips, state.frames) == (3, sum(raws[i].shape[1] for i in (1, 3, 4)))


def test_waveform_models_refuse_speaker_norm(synthetic_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "audio_resnet", "--data", str(synthetic_corpus), "--speaker-norm", "scalar"]) == 2
    assert "log-mel" in capsys.readouterr().err


def test_benchmark_passes_the_option_and_names_its_runs_apart() -> None:
    path = Path(__file__).parents[1] / "benchmarks" / "train_benchmark.py"
    spec = importlib.util.spec_from_file_location("train_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["train_benchmark"] = bench  # dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["train_benchmark"]
    t = bench.Training("spectrogram_resnet", "loso", speaker_norm="bins")
    assert t.name == "spectrogram_resnet-loso-speaker-norm-bins"
    assert bench.Training("spectrogram_resnet", "loso").name == "spectrogram_resnet-loso"
    args = type("Args", (), {"epochs": None, "data": None, "out": Path("runs")})()
    cmd = bench._ser_train(t, args, Path("runs/x"))
    assert cmd[cmd.index("--speaker-norm") + 1] == "bins"
    mixed = bench.Training("spectrogram_resnet", "loso", speaker_norm="bins", mixup="0.4")
    assert mixed.name == "spectrogram_resnet-loso-speaker-norm-bins-mixup-0.4"
    cmd = bench._ser_train(mixed, args, Path("runs/x"))
    assert cmd[cmd.index("--mixup") + 1] == "0.4"
    embedded = bench.Training("audio_resnet", "loso", embedding_norm=True)
    assert embedded.name == "audio_resnet-loso-embedding-norm" and "--embedding-norm" in bench._ser_train(
        embedded, args, Path("x")
    )
    headed = bench.Training("audio_resnet", "loso", standardised_head="1", embedding_norm=True, embedding_classifier="lda")
    assert headed.name == "audio_resnet-loso-standardised-head-1-embedding-norm-lda"
    strength = bench.Training("audio_resnet", "loso", embedding_norm=True, embedding_classifier="unit-logistic:0.03")
    assert strength.name == "audio_resnet-loso-embedding-norm-unit-logistic-0.03"  # no colon in a folder's name
    logistic = bench.Training("audio_resnet", "loso", embedding_norm=True, embedding_classifier="logistic")
    assert logistic.name == embedded.name  # the default classifier shares the default's folder
    cmd = bench._ser_train(headed, args, Path("x"))
    assert cmd[cmd.index("--standardised-head") + 1] == "1" and cmd[cmd.index("--embedding-classifier") + 1] == "lda"
    # the command ser-main names for a voice never heard is the benchmark's, and plans the README's lead run
    named = {
        "spectrogram_resnet": "spectrogram_resnet-loso-speaker-norm-bins-speed-0.9-1.0-1.1-embedding-norm-unit-lda-0.9",
        "audio_resnet": "audio_resnet-loso-standardised-head-1-embedding-norm-unit-lda-0.1-int8-classifier",
    }
    for model, command in LOSO_COMMANDS.items():
        told_args = bench.parser().parse_args(shlex.split(command)[2:])
        [told] = bench.plan(told_args)
        assert (told.model, told.name) == (model, named[model]) and told_args.on_board

    # Distillation with options: the teacher is the plain run with every option, the waveform student takes
    # the ones that apply to it, and is pointed at that teacher.
    given = dict(
        speaker_norm="bins",
        speed_perturb="0.9,1.0,1.1",
        vtlp=None,
        speaker_adversarial=None,
        mixup=None,
        standardised_head=None,
        embedding_norm=False,
        embedding_classifier=None,
    )
    args = type(
        "Args",
        (),
        {
            **given,
            "validation_speaker": False,
            "classifier_on_int8": False,
            "models": ["spectrogram_resnet"],
            "splits": ["loso"],
            "seeds": [0],
            "distill": ["audio_resnet:spectrogram_resnet"],
            "epochs": None,
            "data": None,
            "out": Path("runs"),
        },
    )()
    teacher, student = bench.plan(args)
    assert teacher.name == "spectrogram_resnet-loso-speaker-norm-bins-speed-0.9-1.0-1.1"
    assert (student.model, student.teachers, student.speaker_norm, student.speed_perturb) == (
        "audio_resnet",
        ("spectrogram_resnet",),
        None,
        "0.9,1.0,1.1",
    )
    cmd = bench._ser_train(student, args, Path("runs/y"))
    assert cmd[cmd.index("--teacher") + 1] == str(Path("runs") / teacher.name) and "--speaker-norm" not in cmd


def _loso(clips: list[Clip], pcm: list[np.ndarray], out: Path, mode: str | None = "scalar") -> list[dict]:
    tcfg = TrainConfig(model="spectrogram_resnet", epochs=1, batch_size=16, warmup_epochs=1, speaker_norm=mode)
    train_one(out, clips, pcm, "loso", 0, tcfg, default_frontend("spectrogram_resnet"), mcu_probe=False, show_progress=False)
    return json.loads((out / "test_predictions.json").read_text())


def test_a_test_speakers_labels_and_later_clips_never_reach_an_earlier_clips_score(
    synthetic_corpus: Path, tmp_path: Path
) -> None:
    clips = discover(synthetic_corpus)
    pcm = load_corpus(synthetic_corpus, clips)
    base = _loso(clips, pcm, tmp_path / "base")
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    protocols = metrics["speaker_norm"]["protocols"]
    assert protocols["causal"]["clips"] == metrics["test"]["clips"] == len(base) == 18
    assert protocols["enrol-5"]["clips"] == 13
    frontend = json.loads((tmp_path / "base" / "frontend.json").read_text())
    assert (frontend["mean"], frontend["std"]) == (0.0, 1.0)
    saved = json.loads((tmp_path / "base" / "speaker_norm.json").read_text())
    test_speaker = sorted({c.speaker for c in clips})[0]
    assert test_speaker not in saved["speakers"] and len(saved["speakers"]) == 3

    # Every label of the test speaker changed: the same probabilities (labels only score them).
    test_idx = [i for i, c in enumerate(clips) if c.speaker == test_speaker]
    relabelled = list(clips)
    for i in test_idx:
        relabelled[i] = replace(clips[i], emotion=EMOTIONS[(EMOTIONS.index(clips[i].emotion) + 1) % len(EMOTIONS)])
    assert [p["probs"] for p in _loso(relabelled, pcm, tmp_path / "relabelled")] == [p["probs"] for p in base]

    # A later clip (in the scoring order) replaced by loud noise: every earlier clip scores the same.
    order = scoring_order(len(test_idx))
    middle = 9
    poisoned = list(pcm)
    poisoned[test_idx[order[middle]]] = np.random.default_rng(5).integers(-30000, 30000, 30000).astype(np.int16)
    after = _loso(clips, poisoned, tmp_path / "poisoned")
    for position, j in enumerate(order):
        same = after[j]["probs"] == base[j]["probs"]
        if position < middle:
            assert same, f"clip at position {position} changed by a later clip"
    assert any(after[j]["probs"] != base[j]["probs"] for j in order[middle + 1 :])


def test_default_run_keeps_the_global_standardisation(synthetic_corpus: Path, tmp_path: Path) -> None:
    clips = discover(synthetic_corpus)
    pcm = load_corpus(synthetic_corpus, clips)
    _loso(clips, pcm, tmp_path / "plain", mode=None)
    frontend = json.loads((tmp_path / "plain" / "frontend.json").read_text())
    assert frontend["mean"] != 0.0 and frontend["std"] != 1.0
    assert not (tmp_path / "plain" / "speaker_norm.json").exists()
    assert "speaker_norm" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())


def test_a_held_out_validation_speaker_gets_its_own_statistics_and_is_never_fitted(
    synthetic_corpus: Path, tmp_path: Path
) -> None:
    """Nested LOSO with speaker normalisation: the validation speaker is standardised by its own audio
    (as a new voice would be) and takes no part in the fit; the test speaker stays unseen."""
    clips = discover(synthetic_corpus)
    pcm = load_corpus(synthetic_corpus, clips)
    out = tmp_path / "nested"
    tcfg = TrainConfig(
        model="spectrogram_resnet", epochs=1, batch_size=16, warmup_epochs=1, speaker_norm="bins", validation_by_speaker=True
    )
    train_one(out, clips, pcm, "loso", 0, tcfg, default_frontend("spectrogram_resnet"), mcu_probe=False, show_progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    speakers = sorted({c.speaker for c in clips})
    roles = {r: {c["speaker"] for c in manifest["clips"] if c["role"] == r} for r in ("train", "val", "test")}
    assert roles == {"test": {speakers[0]}, "val": {speakers[1]}, "train": set(speakers[2:])}
    saved = json.loads((out / "speaker_norm.json").read_text())
    assert sorted(saved["speakers"]) == speakers[1:]
    val = [pcm[i] for i, c in enumerate(clips) if c.speaker == speakers[1]]
    expected = pooled([clip_features(p, default_frontend("spectrogram_resnet").raw) for p in val], "bins")
    np.testing.assert_array_equal(np.float32(saved["speakers"][speakers[1]]["mean"]), expected.mean)
    prior = pooled(
        [
            clip_features(pcm[i], default_frontend("spectrogram_resnet").raw)
            for i, c in enumerate(clips)
            if c.speaker in speakers[2:]
        ],
        "bins",
    )
    np.testing.assert_array_equal(np.float32(saved["training_part"]["mean"]), prior.mean)  # the prior: fitted speakers only


def test_a_known_voice_is_scored_with_its_training_statistics_only_when_given() -> None:
    raws = _raws(30)
    prior = pooled(raws[:3], "bins")
    assert "known-voice" not in {p.name for p in scoring_plan(raws, "bins", prior)}  # a new voice: no such protocol
    known = pooled(_raws(12, seed=4), "bins")
    plans = {p.name: p for p in scoring_plan(raws, "bins", prior, known=known)}
    plan = plans["known-voice"]
    assert sorted(plan.scored) == list(range(30)) and len(plan.enrolled) == 0  # no test clip makes its statistics
    assert all(st is known for st in plan.stats)
    np.testing.assert_array_equal(plans["causal"].scored, plan.scored)  # the same clips as the causal headline


def test_a_10_fold_runs_headline_scores_each_voice_with_its_training_clips(synthetic_corpus: Path, tmp_path: Path) -> None:
    """On 10-fold every test voice is a training voice: the headline standardises its clips by that voice's
    training-part statistics (as ``speaker_features`` and the board do for it), not causally."""
    clips = discover(synthetic_corpus)
    pcm = load_corpus(synthetic_corpus, clips)
    out = tmp_path / "kfold"
    tcfg = TrainConfig(model="spectrogram_resnet", epochs=1, batch_size=16, warmup_epochs=1, speaker_norm="bins")
    frontend = default_frontend("spectrogram_resnet")
    train_one(out, clips, pcm, "kfold", 0, tcfg, frontend, mcu_probe=False, show_progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["speaker_norm"]["headline"] == "known-voice"
    protocols = metrics["speaker_norm"]["protocols"]
    assert protocols["known-voice"]["clips"] == metrics["test"]["clips"]
    assert protocols["known-voice"]["accuracy"] == metrics["test"]["accuracy"]

    manifest = json.loads((out / "manifest.json").read_text())
    role = {c["path"]: c["role"] for c in manifest["clips"]}
    test = [i for i, c in enumerate(clips) if role[c.path] == "test"]
    training = [i for i, c in enumerate(clips) if role[c.path] == "train"]
    speaker = clips[test[0]].speaker
    expected = pooled([clip_features(pcm[i], frontend.raw) for i in training if clips[i].speaker == speaker], "bins")
    saved = json.loads((out / "speaker_norm.json").read_text())
    np.testing.assert_array_equal(np.float32(saved["speakers"][speaker]["mean"]), expected.mean)

    import keras

    model = keras.models.load_model(out / "model.keras")
    x = apply(clip_features(pcm[test[0]], frontend.raw), expected)[None]
    predictions = json.loads((out / "test_predictions.json").read_text())
    np.testing.assert_allclose(predictions[0]["probs"], model.predict(x, verbose=0)[0], atol=2e-5)
