"""The training benchmark, run for real on the synthetic corpus: seeds share one split and are summarised,
and with --jobs the folds of a run train apart yet make the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_benchmark.py"


def test_seeds_train_on_one_split_and_get_a_mean_row(synthetic_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [sys.executable, str(BENCHMARK), "--data", str(synthetic_corpus), "--models", "audio_resnet"]
    cmd += ["--splits", "paper", "--epochs", "1", "--seeds", "0", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)

    runs = [out / "audio_resnet-paper", out / "audio_resnet-paper-seed1"]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert [(m["seed"], m["split_seed"]) for m in metrics] == [(0, 0), (1, 0)]
    roles = [[(c["path"], c["role"]) for c in json.loads((r / "manifest.json").read_text())["clips"]] for r in runs]
    assert roles[0] == roles[1]

    table = (out / "benchmark.md").read_text()
    accuracies = [m["test"]["accuracy"] for m in metrics]
    mean = sum(accuracies) / 2
    std = abs(accuracies[0] - accuracies[1]) / 2
    assert f"| audio_resnet | paper | mean of 2 | {mean:.2%} +- {std:.2%} |" in table


def test_jobs_train_the_folds_of_one_run_apart_and_match_one_ser_train_run(synthetic_corpus: Path, tmp_path: Path) -> None:
    """With --jobs each LOSO fold is a training of its own, and the run is the one ser-train makes alone."""
    out = tmp_path / "bench"
    cmd = [sys.executable, str(BENCHMARK), "--data", str(synthetic_corpus), "--models", "audio_resnet"]
    cmd += ["--splits", "loso", "--epochs", "1", "--jobs", "2", "--out", str(out)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    for fold in range(4):
        assert f"audio_resnet-loso fold {fold} on core" in done.stdout

    # The reference: every fold in one ser-train process, with the benchmark jobs' one TensorFlow thread.
    ref = tmp_path / "ref"
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1")
    train = [sys.executable, "-m", "train", "--model", "audio_resnet", "--data", str(synthetic_corpus)]
    train += ["--split", "loso", "--epochs", "1", "--quiet", "--out", str(ref)]
    subprocess.run(train, check=True, capture_output=True, env=env, timeout=900)

    run = out / "audio_resnet-loso"
    for fold in (f"fold-{k:02d}" for k in range(4)):
        assert json.loads((run / fold / "history.json").read_text()) == json.loads((ref / fold / "history.json").read_text())
    bench, plain = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert bench["folds"] == plain["folds"] == 4
    assert bench["test"] == plain["test"]
    assert bench["per_fold"] == plain["per_fold"]


def test_a_student_learns_from_the_teacher_run_made_with_the_benchmarks_options(synthetic_corpus: Path, tmp_path: Path) -> None:
    """--distill with --speaker-norm: the log-mel teacher trains with it, the waveform student without it, and
    the student is pointed at that teacher's run."""
    out = tmp_path / "bench"
    cmd = [sys.executable, str(BENCHMARK), "--data", str(synthetic_corpus), "--models", "spectrogram_resnet"]
    cmd += ["--splits", "paper", "--epochs", "1", "--speaker-norm", "bins", "--out", str(out)]
    cmd += ["--distill", "audio_resnet:spectrogram_resnet"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)

    teacher = out / "spectrogram_resnet-paper-speaker-norm-bins"
    run = out / "audio_resnet-from-spectrogram_resnet-paper"
    assert json.loads((run / "metrics.json").read_text())["teachers"] == [str(teacher)]
    assert (teacher / "speaker_norm.json").exists()
    assert json.loads((run / "train_config.json").read_text())["speaker_norm"] is None
