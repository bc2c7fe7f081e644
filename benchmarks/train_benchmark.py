"""Benchmark: full trainings under each protocol; prints the wall time of each training and the scores.

    python benchmarks/train_benchmark.py --data CASIA [--models audio_resnet spectrogram_resnet]
                                         [--splits paper kfold loso] [--out runs/bench] [--epochs N]

Each (model, split) trains through ``ser-train`` in its own process; finished runs are reused, so
a cut-off benchmark continues where it stopped. Timings on a shared machine are noisy, so the
load average before and after each training is printed with it. Results also go to
``<out>/benchmark.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _train(model: str, split: str, run: Path, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "train", "--model", model, "--split", split, "--out", str(run), "--quiet"]
    cmd += ["--epochs", str(args.epochs)] if args.epochs else []
    cmd += ["--data", args.data] if args.data else []
    before = _load()
    subprocess.run(cmd, check=True)
    print(f"{model} {split}: load average (1/5/15 min) {before} before, {_load()} after", flush=True)


def training_seconds(run: Path) -> list[float]:
    """Wall seconds of each training in a run folder (one per fold for k-fold and LOSO)."""
    folds = sorted(run.glob("fold-*/metrics.json"))
    return [json.loads(f.read_text())["train_seconds"] for f in folds or [run / "metrics.json"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--models", nargs="+", default=["audio_resnet", "spectrogram_resnet"])
    p.add_argument("--splits", nargs="+", default=["paper", "kfold", "loso"])
    p.add_argument("--epochs", type=int, help="default: ser-train's (TrainConfig)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = p.parse_args()

    rows = [
        "| model | split | accuracy | UA | macro-F1 | trainings | seconds per training (each) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in args.models:
        for split in args.splits:
            run = args.out / f"{model}-{split}"
            if not (run / "metrics.json").exists():
                _train(model, split, run, args)
            m = json.loads((run / "metrics.json").read_text())
            if "folds" in m:
                t = m["test"]
                acc, ua, f1 = (
                    f"{t[k]['mean']:.2%} +- {t[k]['std']:.2%}" for k in ("accuracy", "unweighted_accuracy", "macro_f1")
                )
            else:
                t = m["test"]
                acc, ua, f1 = (f"{t[k]:.2%}" for k in ("accuracy", "unweighted_accuracy", "macro_f1"))
            seconds = training_seconds(run)
            each = ", ".join(f"{s:.0f}" for s in seconds)
            line = f"| {model} | {split} | {acc} | {ua} | {f1} | {len(seconds)} | {max(seconds):.0f} max ({each}) |"
            rows.append(line)
            print(line, flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.md").write_text("# Training benchmark\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
