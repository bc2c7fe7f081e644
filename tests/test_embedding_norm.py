"""Per-speaker standardisation of the pooled embedding.

benchmarks/embedding_norm.py: a voice's embeddings are standardised by its own earlier clips only, and the
analysis of a real (one-epoch) LOSO run scores the model exactly as its training run did. The board's stage
(train.embedding_c, the firmware's C): exact causal statistics, refusal of impossible sums, the float and int8
classifiers alike; and a run trained with it scored alike by training, conversion and a board."""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from host.protocol import EMBED_MAX_DIM
from train.corpus import discover, load_corpus
from train.embedding_c import MAX_CLIPS, MAX_DIM, SCORE_SCALE, EmbeddingStream, EmbedState, _Head, _Sums, board_scores, library
from train.embedding_norm import (
    C_REGULARISATION,
    CLASSIFIERS,
    EMBEDDING_NORM_FILE,
    PRIOR_CLIPS,
    Head,
    by_own_voice,
    causal,
    fit_head,
    load_head,
    parse_classifier,
)
from train.fit import TrainConfig
from train.run import default_frontend, train_one
from train.speaker_norm import scoring_order

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embedding_norm.py"


def _module():
    spec = importlib.util.spec_from_file_location("embedding_norm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_new_voice_is_standardised_by_its_earlier_clips_and_a_training_voice_by_its_training_clips() -> None:
    en = _module()
    rng = np.random.default_rng(3)
    speakers = np.array(["a"] * 8 + ["b"] * 6)
    roles = np.array(["train"] * 8 + ["test"] * 6)
    emb = rng.normal(size=(14, 5)) + 3.0
    out = en.per_speaker(emb, speakers, roles, ceiling=False)
    np.testing.assert_allclose(out[:8].mean(0), 0, atol=1e-12)  # a training voice: its own statistics
    np.testing.assert_allclose(out[:8].std(0), 1)

    order = 8 + scoring_order(6)
    changed = emb.copy()
    changed[order[-1]] += 100.0  # the last clip in scoring order cannot reach an earlier clip's input
    again = en.per_speaker(changed, speakers, roles, ceiling=False)
    np.testing.assert_array_equal(again[order[:-1]], out[order[:-1]])
    prior_mean, prior_std = emb[:8].mean(0), emb[:8].std(0)
    np.testing.assert_allclose(out[order[0]], (emb[order[0]] - prior_mean) / prior_std)  # first clips: the prior
    k = PRIOR_CLIPS + 1
    before = emb[order[:k]]
    np.testing.assert_allclose(out[order[k]], (emb[order[k]] - before.mean(0)) / before.std(0))
    ceiling = en.per_speaker(changed, speakers, roles, ceiling=True)
    assert not np.allclose(ceiling[order[0]], again[order[0]])  # the ceiling does see later clips

    held_out = np.where(roles == "test", "val", roles)  # a --validation-speaker run's held-out voice: new, as a test voice
    np.testing.assert_array_equal(en.per_speaker(emb, speakers, held_out, ceiling=False), out)


def test_the_analysis_of_a_loso_run_scores_the_model_as_training_did(synthetic_corpus: Path, tmp_path: Path) -> None:
    en = _module()
    clips = discover(synthetic_corpus)
    tcfg = TrainConfig(model="spectrogram_resnet", epochs=1, batch_size=16, warmup_epochs=1, speaker_norm="bins")
    run = tmp_path / "run"
    spec = default_frontend("spectrogram_resnet")
    train_one(run, clips, load_corpus(synthetic_corpus, clips), "loso", 0, tcfg, spec, mcu_probe=False, show_progress=False)

    cmd = [sys.executable, str(SCRIPT), str(run), "--data", str(synthetic_corpus), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    [result] = json.loads((tmp_path / "out" / "embedding_norm.json").read_text())
    fold = result["folds"]["run"]
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert fold["model"]["clips"] == trained["clips"] == 18
    assert fold["model"]["accuracy"] == trained["accuracy"]  # the causal inputs training scored
    assert set(fold) == {"model", "refit", "per-speaker", "all-clips"}
    assert "| run | per-speaker:" in done.stdout and done.stdout == (tmp_path / "out" / "embedding_norm.md").read_text()

    val = [*cmd[:-2], "--role", "val", "--classifier", "lda", "--out", str(tmp_path / "val")]
    subprocess.run(val, check=True, capture_output=True, text=True, timeout=600)
    [scored] = json.loads((tmp_path / "val" / "embedding_norm.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())["clips"]
    assert scored["folds"]["run"]["per-speaker"]["clips"] == sum(c["role"] == "val" for c in manifest) > 0
    # the sweep scores every classifier as one --classifier run does, and names the highest
    swept = subprocess.run([*val[:-2], "--sweep", "--out", str(tmp_path / "sweep")], check=True, capture_output=True, text=True)
    result = json.loads((tmp_path / "sweep" / "embedding_norm.json").read_text())
    assert result["runs"]["run"]["lda"] == [scored["folds"]["run"]["per-speaker"]["accuracy"]]
    assert set(result["mean"]) == set(en.SWEEP) and "unit-logistic:0.03" in en.SWEEP and "lda:0.2" in en.SWEEP
    assert result["mean"][result["best"]] == max(result["mean"].values())
    assert f"**{result['best']}**" in swept.stdout

    not_a_run = [sys.executable, str(SCRIPT), str(tmp_path), "--data", str(synthetic_corpus)]
    bad = subprocess.run(not_a_run, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "no model.keras" in bad.stderr


# ---- the board's stage (firmware/app/ser_embedding_norm.c through train.embedding_c) ----


def _head(dim: int = 12, classes: int = 6, seed: int = 0) -> Head:
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return Head(
        f32(rng.normal(0, 0.3, (classes, dim))), f32(rng.normal(0, 0.1, classes)),
        f32(rng.uniform(-60, 20, dim)), f32(rng.uniform(5, 30, dim)),
    )  # fmt: skip


def _voice(n: int, dim: int = 12, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(-30, 25, (n, dim)), -128, 127).astype(np.int8)


@pytest.mark.parametrize("unit_length", [False, True])
def test_the_board_stage_standardises_each_clip_by_the_voice_earlier_embeddings_only(unit_length: bool) -> None:
    head, q = dataclasses.replace(_head(), unit_length=unit_length), _voice(9)
    stream = EmbeddingStream(head)
    scores = []
    for k, e in enumerate(q):
        mean, std = stream.current()
        if k < head.prior_clips:
            np.testing.assert_array_equal(mean, head.prior_mean)
            np.testing.assert_array_equal(std, head.prior_std)
        else:
            before = q[:k].astype(np.float64)
            np.testing.assert_allclose(mean, before.mean(0), rtol=1e-6)
            np.testing.assert_allclose(std, np.maximum(before.std(0), 0.5), rtol=1e-5)
        scores.append(stream.run(e))
        z = (e.astype(np.float64) - mean) / std
        z = z / np.linalg.norm(z) if unit_length else z
        logits = z @ head.weights.T.astype(np.float64) + head.bias
        np.testing.assert_allclose(stream.logits, logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(scores[-1], np.clip(np.round(stream.logits * SCORE_SCALE), -128, 127))
    assert stream.clips == len(q)

    changed = q.copy()
    changed[-1] = -changed[-1]  # a later clip cannot reach an earlier clip's scores
    again = EmbeddingStream(head)
    assert all(np.array_equal(again.run(e), s) for e, s in zip(changed[:-1], scores[:-1], strict=True))


def test_a_head_survives_its_json_forms_exactly() -> None:
    head = dataclasses.replace(_head(dim=168), unit_length=True)
    for compact in (False, True):
        again = Head.from_json(json.loads(json.dumps(head.to_json(compact))))
        for name in ("weights", "bias", "prior_mean", "prior_std"):
            assert np.array_equal(getattr(again, name), getattr(head, name)), (compact, name)
        assert again.unit_length and again.prior_clips == head.prior_clips
    older = {k: v for k, v in head.to_json().items() if k != "unit_length"}  # written before the option existed
    assert Head.from_json(older).unit_length is False
    assert len(json.dumps(head.to_json(compact=True))) < len(json.dumps(head.to_json())) / 3  # what the board's flash holds


@pytest.mark.parametrize("unit_length", [False, True])
def test_the_int8_stage_reads_what_the_float_classifier_reads(unit_length: bool) -> None:
    """A head fitted in float units, moved to the int8 output's steps, gives the board's stage the same
    standardised values (standardisation does not see the units)."""
    head, q = _head(), _voice(40, seed=2)
    scale, zero_point = 0.05, -20
    emb = scale * (q.astype(np.float32) - zero_point)
    prior = scale * (head.prior_mean - zero_point), scale * head.prior_std
    float_head = Head(head.weights, head.bias, *prior, unit_length=unit_length)
    speakers = ["a"] * 40
    float_logits = float_head.logits(causal(emb, speakers, (float_head.prior_mean, float_head.prior_std)))
    scores, classes = board_scores(q, speakers, float_head.in_int8_steps(scale, zero_point))
    np.testing.assert_array_equal(classes, float_logits.argmax(1))
    assert np.abs(scores - np.clip(np.round(float_logits * SCORE_SCALE), -128, 127)).max() <= 1


def test_sums_no_voice_can_have_are_refused_and_full_sums_stop_growing() -> None:
    head, q = _head(), _voice(5)
    stream = EmbeddingStream(head)
    for e in q:
        stream.run(e)
    held = stream.state()
    other = EmbeddingStream(head)
    other.load(held)  # a real state loads, and the next clip is scored alike
    assert np.array_equal(other.run(q[0]), stream.run(q[0]))
    dim = head.dim
    for bad in (
        EmbedState(2, (0,) * dim, (-1,) + (0,) * (dim - 1)),  # negative squares
        EmbedState(2, (10,) + (0,) * (dim - 1), (40,) + (0,) * (dim - 1)),  # sum^2 > clips * squares
        EmbedState(1, (200,) + (0,) * (dim - 1), (40000,) + (0,) * (dim - 1)),  # beyond 128 a clip
        EmbedState(MAX_CLIPS + 1, (0,) * dim, (0,) * dim),
    ):
        with pytest.raises(ValueError, match="cannot come from real embeddings"):
            other.load(bad)
    with pytest.raises(ValueError, match="does not fit"):
        other.load(EmbedState(1, (0,), (0,)))
    assert other.state() == stream.state()  # nothing refused changed it

    other.load(EmbedState(MAX_CLIPS, (0,) * dim, (0,) * dim))
    other.run(q[1])
    assert other.clips == MAX_CLIPS  # full: frozen, as on the board


def test_a_clip_at_the_voice_mean_reads_as_zeros_with_unit_length_too() -> None:
    """A standardised embedding of zeros has no direction: the board's stage leaves it zeros (logits = bias), no NaN."""
    e = _voice(1)[0]
    head = dataclasses.replace(_head(), prior_mean=e.astype(np.float32), unit_length=True)
    stream = EmbeddingStream(head)
    stream.run(e)  # the first clip is standardised by the prior, whose mean it is
    np.testing.assert_array_equal(stream.logits, head.bias)
    np.testing.assert_array_equal(head.logits(np.zeros((1, head.dim))), head.bias[None])


def test_the_host_mirrors_of_the_c_structs_have_their_sizes() -> None:
    lib = library()
    assert ctypes.sizeof(_Head) == lib.ser_en_head_size() and ctypes.sizeof(_Sums) == lib.ser_en_sums_size()


def test_the_widest_embedding_the_c_stage_takes_is_the_python_one_and_the_protocol_s() -> None:
    sums = np.zeros(MAX_DIM + 1, np.int32), np.zeros(MAX_DIM + 1, np.int32)
    init = library().ser_en_init
    for dim, accepted in ((MAX_DIM, True), (MAX_DIM + 1, False)):
        rc = init(ctypes.addressof(_Sums()), dim, sums[0].ctypes.data, sums[1].ctypes.data)
        assert (rc == 0) is accepted, (dim, rc)
    assert EMBED_MAX_DIM == MAX_DIM


@pytest.mark.parametrize("classifier", [*CLASSIFIERS, "unit-logistic:0.03", "lda:0.2"])
def test_the_classifier_fit_does_not_see_a_voice_constant_offset(classifier: str) -> None:
    """Each training voice is standardised by its own clips, so shifting one voice's embeddings changes the prior
    only: the classifier is the same, and its logits are the fitted classifier's own decision."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    labels = np.tile(np.arange(6), 10)
    speakers = ["a"] * 30 + ["b"] * 30
    emb = rng.normal(size=(60, 8)) + 3.0 * np.eye(6, 8)[labels]
    shifted = emb.copy()
    shifted[30:] += 5.0
    one, two = fit_head(emb, labels, speakers, classifier), fit_head(shifted, labels, speakers, classifier)
    np.testing.assert_allclose(one.weights, two.weights, atol=1e-4)
    assert not np.allclose(one.prior_mean, two.prior_mean)
    z = by_own_voice(emb, speakers)
    assert np.mean(one.logits(z).argmax(1) == labels) > 0.8
    unit = classifier.startswith("unit-")  # the classifier reads z scaled to length 1
    read = (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)) if unit else (lambda x: x)
    kind, _, value = classifier.removeprefix("unit-").partition(":")  # the strength after the colon
    reference = {
        "logistic": lambda: LogisticRegression(C=float(value or C_REGULARISATION), max_iter=5000),
        "lda": lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage=float(value) if value else "auto"),
    }[kind]().fit(read(z), labels)
    assert one.unit_length is unit
    probe = rng.normal(size=(40, 8))
    np.testing.assert_array_equal(one.logits(probe).argmax(1), reference.predict(read(probe)))
    np.testing.assert_allclose(one.logits(probe), reference.decision_function(read(probe)), rtol=1e-4, atol=1e-4)
    if unit:  # only a clip's direction counts
        np.testing.assert_allclose(one.logits(3.0 * probe), one.logits(probe), rtol=1e-5, atol=1e-5)


def test_a_classifier_strength_changes_the_fit() -> None:
    """A stronger penalty (smaller C) or more shrinkage gives a different classifier than the default."""
    rng = np.random.default_rng(5)
    labels = np.tile(np.arange(6), 10)
    emb = rng.normal(size=(60, 8)) + 2.0 * np.eye(6, 8)[labels]
    speakers = ["a"] * 30 + ["b"] * 30
    for default, strong in (("logistic", "logistic:0.01"), ("unit-lda", "unit-lda:0.9")):
        one, two = fit_head(emb, labels, speakers, default), fit_head(emb, labels, speakers, strong)
        assert np.abs(two.weights).sum() < np.abs(one.weights).sum()  # pulled towards zero / the identity
    assert parse_classifier("unit-logistic:0.03") == ("unit-logistic", 0.03)
    assert parse_classifier("lda") == ("lda", None)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("svm", "choose one of logistic, lda"),
        ("svm:1", "choose one of"),
        ("lda:2", "lda takes a shrinkage from 0 to 1"),
        ("unit-lda:-0.1", "shrinkage from 0 to 1"),
        ("logistic:0", "logistic takes a C above 0"),
        ("unit-logistic:inf", "a C above 0"),
        ("logistic:nan", "a C above 0"),
        ("logistic:strong", "'strong' is not a number"),
    ],
)
def test_an_unknown_classifier_or_strength_is_refused_by_name(name: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        fit_head(np.zeros((12, 3)), np.tile(np.arange(6), 2), ["a"] * 12, name)


def test_a_run_trained_with_embedding_norm_is_scored_alike_by_training_conversion_and_the_board(
    synthetic_corpus: Path, tmp_path: Path
) -> None:
    """ser-train --embedding-norm fits the classifier; ser-convert makes a model ending at the embedding that
    carries it; the simulated board's answers are the host reference's, and its accuracy is the conversion's."""
    from convert.cli import convert_main
    from convert.tflite_file import MODEL_FILE, io_specs, model_head
    from host import eval_on_device
    from host.sim_board import SimulatedBoard
    from train.embedding_norm import main as embedding_norm_main

    clips = discover(synthetic_corpus)
    tcfg = TrainConfig(model="audio_resnet", epochs=1, batch_size=16, warmup_epochs=1, embedding_norm=True)
    run = tmp_path / "run"
    spec = default_frontend("audio_resnet")
    metrics = train_one(run, clips, load_corpus(synthetic_corpus, clips), "loso", 0, tcfg, spec, False, False)
    saved = load_head(run / EMBEDDING_NORM_FILE)
    assert (saved.classes, saved.dim) == (6, 96) and metrics["embedding_norm"]["model_test"]["clips"] == 18
    (run / EMBEDDING_NORM_FILE).unlink()  # the command for a finished run fits the same classifier
    assert embedding_norm_main([str(run), "--data", str(synthetic_corpus)]) == 0
    refit = load_head(run / EMBEDDING_NORM_FILE)
    np.testing.assert_allclose(refit.weights, saved.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(refit.prior_mean, saved.prior_mean, rtol=1e-5, atol=1e-6)
    # another classifier: the run's reports are rescored with it, the network's own score kept
    assert embedding_norm_main([str(run), "--data", str(synthetic_corpus), "--classifier", "unit-logistic"]) == 0
    rescored = json.loads((run / "metrics.json").read_text())
    assert load_head(run / EMBEDDING_NORM_FILE).unit_length
    assert rescored["embedding_norm"] == {**metrics["embedding_norm"], "classifier": "unit-logistic"}
    predictions = json.loads((run / "test_predictions.json").read_text())
    right = sum(p["true"] == p["predicted"] for p in predictions)
    assert len(predictions) == 18 and rescored["test"]["accuracy"] == right / 18
    with pytest.raises(SystemExit) as refused:
        embedding_norm_main([str(tmp_path / "eval"), "--data", str(synthetic_corpus)])
    assert refused.value.code == 2

    assert convert_main([str(run), "--data", str(synthetic_corpus), "--quiet", "--qat"]) == 2  # it would move the embedding
    assert not (run / MODEL_FILE).exists()
    assert convert_main([str(run), "--data", str(synthetic_corpus), "--quiet", "--no-report"]) == 0
    tflite = (run / MODEL_FILE).read_bytes()
    _, out = io_specs(tflite)
    head = model_head(tflite)
    assert out.shape == (1, 96) and head is not None
    np.testing.assert_allclose(head.prior_std, saved.prior_std / out.scale, rtol=1e-6)
    conversion = json.loads((run / "conversion.json").read_text())
    assert conversion["embedding_norm"] and conversion["test_clips"] == 18

    report = tmp_path / "eval"
    with SimulatedBoard(tflite) as board:
        argv = ["--run", str(run), "--data", str(synthetic_corpus), "--quiet", "--port", board.url, "--out", str(report)]
        assert eval_on_device.main(argv) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["agreement"]["bit_exact_clips"] == summary["clips"]["ok"] == 18
    assert summary["board"]["accuracy"] == conversion["int8"]["accuracy"]  # the conversion scored the board's way
    assert conversion["float"]["accuracy"] == rescored["test"]["accuracy"]  # and the float model as the refit did
    assert list(summary["speaker_norm"]["statistics_bit_exact"].values()) == [True]  # the one test voice

    # --classifier-on-int8: the same classifier kind, fitted on the int8 model's own (TFLM) embeddings of the
    # training clips; the board still matches the host, and the conversion scores the board's way
    from convert.interpreters import TflmRunner, dequantize, quantize_input
    from train.corpus import Clip
    from train.frontend import FrontEndConfig
    from train.labels import label_index
    from train.speaker_norm import run_model_inputs
    from train.splits import clips_with_role, load_manifest

    plain = tmp_path / "plain"
    shutil.copytree(run, plain)
    (plain / EMBEDDING_NORM_FILE).unlink()
    assert convert_main([str(plain), "--data", str(synthetic_corpus), "--quiet", "--classifier-on-int8"]) == 2
    assert convert_main([str(run), "--data", str(synthetic_corpus), "--quiet", "--no-report", "--classifier-on-int8"]) == 0
    refitted = (run / MODEL_FILE).read_bytes()
    in_spec, out_spec = io_specs(refitted)
    train = [Clip.from_manifest(c) for c in clips_with_role(load_manifest(run / "manifest.json"), "train")]
    speakers = [c.speaker for c in train]
    x = run_model_inputs(run, FrontEndConfig.load(run / "frontend.json"), load_corpus(synthetic_corpus, train), speakers)
    tflm = TflmRunner(refitted)
    emb = np.stack([dequantize(tflm(quantize_input(xi, in_spec)), out_spec) for xi in x])
    expected = fit_head(emb, np.array([label_index(c.emotion) for c in train]), speakers, "unit-logistic")
    on_int8 = model_head(refitted)
    np.testing.assert_allclose(on_int8.weights, expected.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(on_int8.prior_std, expected.prior_std / out_spec.scale, rtol=1e-5)
    assert on_int8.unit_length and not np.allclose(on_int8.weights, head.weights, atol=1e-3)  # not the float fit
    refit_conversion = json.loads((run / "conversion.json").read_text())
    assert refit_conversion["float"] == conversion["float"]  # the float network and its classifier are untouched
    assert (conversion["embedding_classifier_fitted_on"], refit_conversion["embedding_classifier_fitted_on"]) == ("float", "int8")
    assert "fitted on the int8 embeddings" in (run / "conversion.md").read_text()
    with SimulatedBoard(refitted) as board:
        argv = ["--run", str(run), "--data", str(synthetic_corpus), "--quiet", "--port", board.url, "--out", str(tmp_path / "e8")]
        assert eval_on_device.main(argv) == 0
    again = json.loads((tmp_path / "e8" / "summary.json").read_text())
    assert again["agreement"]["bit_exact_clips"] == again["clips"]["ok"] == 18
    assert again["board"]["accuracy"] == refit_conversion["int8"]["accuracy"]
