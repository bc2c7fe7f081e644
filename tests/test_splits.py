"""Splits are deterministic, stratified, and never let a test clip into training or validation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.corpus import SPEAKERS, Clip
from train.labels import EMOTIONS
from train.splits import (
    HELD_OUT_SAMPLE,
    KFOLD_FOLDS,
    assign_folds,
    clips_with_role,
    decision_clips,
    load_manifest,
    make_manifest,
    save_manifest,
)


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    """The real corpus's shape: 4 speakers x 6 emotions x 50 sentences (no audio needed)."""
    return [Clip(f"{s}/{e}/{n}.wav", s, e, str(n)) for s in sorted(SPEAKERS) for e in EMOTIONS for n in range(201, 251)]


@pytest.mark.parametrize("split", ["paper", "kfold", "loso"])
def test_deterministic_for_a_seed(clips: list[Clip], split: str) -> None:
    assert make_manifest(clips, split, 0, seed=3) == make_manifest(clips, split, 0, seed=3)
    if split != "loso":
        assert make_manifest(clips, split, 0, seed=3) != make_manifest(clips, split, 0, seed=4)


def test_paper_split_is_stratified_80_20(clips: list[Clip]) -> None:
    manifest = make_manifest(clips, "paper", 0)
    test = Counter(c["emotion"] for c in clips_with_role(manifest, "test"))
    assert test == {e: 40 for e in EMOTIONS}
    val = Counter(c["emotion"] for c in clips_with_role(manifest, "val"))
    assert all(15 <= n <= 17 for n in val.values())  # 10 % of 160 training clips per emotion


def test_kfold_folds_partition_and_balance(clips: list[Clip]) -> None:
    folds, num = assign_folds(clips, "kfold", seed=0)
    assert num == KFOLD_FOLDS
    counts = Counter(zip(folds.tolist(), (c.emotion for c in clips), strict=True))
    assert set(counts.values()) == {20}  # every fold holds 20 clips of every emotion
    tested = np.concatenate([[c["path"] for c in clips_with_role(make_manifest(clips, "kfold", k), "test")] for k in range(num)])
    assert sorted(tested) == sorted(c.path for c in clips)  # each clip is tested exactly once


def test_loso_tests_one_unseen_speaker(clips: list[Clip]) -> None:
    for fold in range(len(SPEAKERS)):
        manifest = make_manifest(clips, "loso", fold)
        test_speakers = {c["speaker"] for c in clips_with_role(manifest, "test")}
        seen = {c["speaker"] for c in clips_with_role(manifest, "train") + clips_with_role(manifest, "val")}
        assert len(test_speakers) == 1 and not test_speakers & seen


@pytest.mark.parametrize("split", ["paper", "kfold", "loso"])
def test_roles_are_disjoint(clips: list[Clip], split: str) -> None:
    manifest = make_manifest(clips, split, 1 if split != "paper" else 0)
    parts = {r: {c["path"] for c in clips_with_role(manifest, r)} for r in ("train", "val", "test")}
    assert not parts["train"] & parts["test"] and not parts["val"] & parts["test"] and not parts["train"] & parts["val"]
    assert sum(len(p) for p in parts.values()) == len(clips)
    assert all(c["fold"] == manifest["test_fold"] for c in clips_with_role(manifest, "test"))


def test_manifest_round_trip_and_rejects_other_json(clips: list[Clip], tmp_path: Path) -> None:
    manifest = make_manifest(clips, "paper", 0)
    save_manifest(manifest, tmp_path / "m.json")
    assert load_manifest(tmp_path / "m.json") == manifest
    (tmp_path / "bad.json").write_text('{"clips": [{"path": "x"}]}')
    with pytest.raises(ValueError, match="not a split manifest"):
        load_manifest(tmp_path / "bad.json")


def test_a_held_out_validation_speaker_is_neither_fitted_nor_tested(clips: list[Clip]) -> None:
    speakers = sorted(SPEAKERS)
    for fold in range(len(speakers)):
        manifest = make_manifest(clips, "loso", fold, validation_by_speaker=True)
        by_role = {r: {c["speaker"] for c in clips_with_role(manifest, r)} for r in ("train", "val", "test")}
        held_out = speakers[(fold + 1) % len(speakers)]
        assert by_role["val"] == {held_out} and manifest["validation_speaker"] == held_out
        assert by_role["test"] == {speakers[fold]}
        assert by_role["train"] == set(speakers) - {held_out, speakers[fold]}
        assert len(clips_with_role(manifest, "val")) == 300  # the whole speaker
    assert make_manifest(clips, "loso", 0)["validation_speaker"] is None
    for split, validation in (("kfold", True), ("paper", True), ("loso", False)):
        with pytest.raises(ValueError, match="held-out validation speaker goes with the loso split"):
            make_manifest(clips, split, 0, validation=validation, validation_by_speaker=True)


def test_bad_fold_is_refused(clips: list[Clip]) -> None:
    with pytest.raises(ValueError, match=r"folds 0\.\.3"):
        make_manifest(clips, "loso", 4)


@pytest.mark.parametrize("split", ["paper", "kfold", "loso"])
def test_a_refit_manifest_trains_every_non_test_clip_and_decides_on_a_fixed_training_sample(
    clips: list[Clip], split: str
) -> None:
    usual, refit = make_manifest(clips, split, 1, seed=0), make_manifest(clips, split, 1, seed=0, validation=False)
    assert clips_with_role(refit, "test") == clips_with_role(usual, "test")
    assert not clips_with_role(refit, "val") and refit["validation_fraction"] == 0.0
    non_test = {c["path"] for c in usual["clips"] if c["role"] != "test"}
    assert {c["path"] for c in clips_with_role(refit, "train")} == non_test

    assert decision_clips(usual) == (clips_with_role(usual, "val"), "validation")
    sample, role = decision_clips(refit)
    assert role == "training" and len(sample) == HELD_OUT_SAMPLE
    assert {c["path"] for c in sample} <= non_test and sample == decision_clips(refit)[0]
