"""Train/validation/test splits, written to a manifest that every later stage reads.

Each clip gets a ``fold`` id; a run tests on one fold and trains on the rest. The validation part
that drives every model-selection decision is carved from the training part only, so no test clip
can ever influence which epoch or weights are kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np

from train.corpus import Clip

SplitName = Literal["paper", "kfold", "loso"]
SPLITS: tuple[str, ...] = ("paper", "kfold", "loso")
PAPER_TEST_FRACTION = 0.2
KFOLD_FOLDS = 10
VALIDATION_FRACTION = 0.1


def _stratified_folds(labels: Sequence[str], num_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold ids such that every fold holds each label in (near) equal share."""
    folds = np.zeros(len(labels), dtype=int)
    labels_arr = np.asarray(labels)
    offset = 0
    for label in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == label)
        idx = idx[rng.permutation(len(idx))]
        # round-robin with a rotating start keeps fold sizes balanced across labels
        folds[idx] = (np.arange(len(idx)) + offset) % num_folds
        offset += len(idx)
    return folds


def assign_folds(clips: Sequence[Clip], split: SplitName, seed: int = 0) -> tuple[np.ndarray, int]:
    """Fold id per clip and the number of folds."""
    rng = np.random.default_rng(seed)
    emotions = [c.emotion for c in clips]
    if split == "paper":
        folds = np.ones(len(clips), dtype=int)
        labels_arr = np.asarray(emotions)
        for label in sorted(set(emotions)):
            idx = np.flatnonzero(labels_arr == label)
            idx = idx[rng.permutation(len(idx))]
            folds[idx[: round(PAPER_TEST_FRACTION * len(idx))]] = 0
        return folds, 2
    if split == "kfold":
        return _stratified_folds(emotions, KFOLD_FOLDS, rng), KFOLD_FOLDS
    if split == "loso":
        speakers = sorted({c.speaker for c in clips})
        return np.array([speakers.index(c.speaker) for c in clips]), len(speakers)
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def validation_speaker(clips: Sequence[Clip], test_fold: int) -> str:
    """LOSO with a held-out validation speaker: the speaker after the test speaker (in sorted order, cyclically)."""
    speakers = sorted({c.speaker for c in clips})
    if len(speakers) < 3:
        raise ValueError(f"a held-out validation speaker needs 3 or more speakers, the corpus has {len(speakers)}")
    return speakers[(test_fold + 1) % len(speakers)]


def make_manifest(
    clips: Sequence[Clip],
    split: SplitName,
    test_fold: int,
    seed: int = 0,
    validation: bool = True,
    validation_by_speaker: bool = False,
) -> dict:
    """The manifest of one run: every clip with its fold and its role (train, val or test).

    ``validation=False`` (a refit run) leaves every non-test clip in training: no validation part.
    ``validation_by_speaker`` (LOSO only) makes the validation part one whole training speaker, held
    out of the fit, so the epoch kept is the one that does best on a voice the model never fitted
    (nested LOSO) rather than on more clips of the voices it fits.
    """
    folds, num_folds = assign_folds(clips, split, seed)
    if not 0 <= test_fold < num_folds:
        raise ValueError(f"split {split} has folds 0..{num_folds - 1}, not {test_fold}")
    roles = np.where(folds == test_fold, "test", "train").astype(object)
    if validation_by_speaker:
        if split != "loso" or not validation:
            raise ValueError("a held-out validation speaker goes with the loso split and a validation part (not --refit)")
        held_out = validation_speaker(clips, test_fold)
        roles[[i for i, c in enumerate(clips) if c.speaker == held_out]] = "val"
    elif validation:
        train_idx = np.flatnonzero(roles == "train")
        rng = np.random.default_rng(seed + 1000 + test_fold)
        train_emotions = [clips[i].emotion for i in train_idx]
        val_folds = _stratified_folds(train_emotions, round(1 / VALIDATION_FRACTION), rng)
        roles[train_idx[val_folds == 0]] = "val"
    entries = [dict(asdict(c), fold=int(f), role=str(r)) for c, f, r in zip(clips, folds, roles, strict=True)]
    return {
        "split": split,
        "seed": seed,
        "num_folds": num_folds,
        "test_fold": test_fold,
        "validation_fraction": VALIDATION_FRACTION if validation and not validation_by_speaker else 0.0,
        "validation_speaker": validation_speaker(clips, test_fold) if validation_by_speaker else None,
        "clips": entries,
    }


def save_manifest(manifest: dict, path: Path) -> None:
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def load_manifest(path: Path) -> dict:
    manifest = json.loads(Path(path).read_text())
    if "clips" not in manifest or not all({"path", "emotion", "role"} <= set(c) for c in manifest["clips"]):
        raise ValueError(f"{path}: not a split manifest (needs clips with path, emotion and role)")
    return manifest


def clips_with_role(manifest: dict, role: str) -> list[dict]:
    return [c for c in manifest["clips"] if c["role"] == role]


HELD_OUT_SAMPLE = 100  # training clips that stand in for a refit run's missing validation part


def decision_clips(manifest: dict) -> tuple[list[dict], str]:
    """The clips that decisions after training are made on (does int8 lose too much? which QAT epoch?), and their role.

    The validation part; a refit run has none, so a fixed sample of its training clips. What those
    decisions measure is the damage quantization does to a trained model, which its training clips
    show too; test clips never take part.
    """
    val = clips_with_role(manifest, "val")
    if val:
        return val, "validation"
    train = clips_with_role(manifest, "train")
    picked = np.random.default_rng(0).choice(len(train), size=min(HELD_OUT_SAMPLE, len(train)), replace=False)
    return [train[i] for i in sorted(picked)], "training"


def fold_runs(run: Path) -> list[Path]:
    """The folders of one ser-train run: one per test fold (``fold-NN``) for 10-fold and LOSO, else the run itself."""
    return sorted(p.parent for p in Path(run).glob("fold-*/manifest.json")) or [Path(run)]
