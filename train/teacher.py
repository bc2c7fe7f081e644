"""Distillation: a finished run (the teacher) softens the labels of a student's training clips.

Offline distillation: the teacher sees each whole training clip once, through its own front end,
and its tempered class probabilities (the mean over several teachers) are mixed into the student's
one-hot labels. A small student learns from 1,000 clips more easily when it is told which wrong
classes are near misses.

The teacher must come from the same split, split seed and test fold as the student: then the student's
test clips are the teacher's test clips too, and no test clip can reach the student through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from train.frontend import FrontEndConfig
from train.labels import NUM_CLASSES
from train.speaker_norm import run_model_inputs
from train.splits import clips_with_role, load_manifest


class TeacherError(ValueError):
    """The teacher run cannot be used: missing, or tested on other clips than the student."""


def teacher_run(path: Path, test_fold: int) -> Path:
    """The teacher's run folder for this fold: ``path/fold-XX`` of a multi-fold run, else ``path``."""
    fold_dir = Path(path) / f"fold-{test_fold:02d}"
    run = fold_dir if fold_dir.is_dir() else Path(path)
    if not (run / "model.keras").is_file() or not (run / "manifest.json").is_file():
        raise TeacherError(
            f"teacher {run}: no model.keras and manifest.json there; train the teacher first "
            f"(ser-train --out {path}, same --split and --split-seed (default --seed) as the student)"
        )
    return run


def check_same_test_clips(run: Path, manifest: dict) -> None:
    """Refuses a teacher that trained on any of the student's test clips (or was tested elsewhere)."""
    theirs = {c["path"] for c in clips_with_role(load_manifest(run / "manifest.json"), "test")}
    ours = {c["path"] for c in clips_with_role(manifest, "test")}
    if theirs != ours:
        raise TeacherError(
            f"teacher {run} was tested on other clips than this run ({len(theirs ^ ours)} differ): "
            "train it with the same --split, --split-seed (default --seed) and test fold, "
            "or test clips could reach the student through it"
        )


def soft_targets(run: Path, pcms: list[np.ndarray], speakers: Sequence[str], temperature: float) -> np.ndarray:
    """The teacher's class probabilities of whole clips, tempered: ``softmax(log p / temperature)``.

    The teacher meets each clip as it met its own training clips: a speaker-normalised teacher
    standardises a clip by its speaker's statistics (``run_model_inputs``; the student's training
    speakers are the teacher's, as both share the test fold).
    """
    model = keras.models.load_model(run / "model.keras")
    cfg = FrontEndConfig.load(run / "frontend.json")
    inputs = np.stack(run_model_inputs(run, cfg, pcms, speakers))
    probs = model.predict(inputs, batch_size=64, verbose=0).astype(np.float64)
    logits = np.log(np.clip(probs, 1e-9, 1.0)) / temperature
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def distilled_targets(labels: np.ndarray, soft: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * one_hot(labels) + weight * soft``: each row still sums to 1."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distillation weight must be in [0, 1], got {weight}")
    one_hot = keras.utils.to_categorical(labels, NUM_CLASSES).astype(np.float32)
    return (1.0 - weight) * one_hot + weight * soft
