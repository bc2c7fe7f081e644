"""The training benchmark, run for real on the synthetic corpus: seeds share one split and are summarised."""

from __future__ import annotations

import json
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
