"""Benchmark: full trainings under each protocol; prints wall time per training and the scores.

    python benchmarks/train_benchmark.py --data CASIA [--models audio_resnet spectrogram_resnet]
                                         [--splits paper kfold loso] [--out runs/bench]

Each (model, split) trains through ``ser-train`` in its own process; finished runs are reused, so
a cut-off benchmark continues where it stopped. Results also go to ``<out>/benchmark.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--models", nargs="+", default=["audio_resnet", "spectrogram_resnet"])
    p.add_argument("--splits", nargs="+", default=["paper", "kfold", "loso"])
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = p.parse_args()

    rows = [
        "| model | split | accuracy | UA | macro-F1 | trainings | seconds per training |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in args.models:
        for split in args.splits:
            run = args.out / f"{model}-{split}"
            if not (run / "metrics.json").exists():
                cmd = [
                    sys.executable,
                    "-m",
                    "train",
                    "--model",
                    model,
                    "--split",
                    split,
                    "--out",
                    str(run),
                    "--epochs",
                    str(args.epochs),
                    "--quiet",
                ]
                if args.data:
                    cmd += ["--data", args.data]
                subprocess.run(cmd, check=True)
            m = json.loads((run / "metrics.json").read_text())
            if "folds" in m:
                t, n = m["test"], m["folds"]
                acc, ua, f1 = (
                    f"{t[k]['mean']:.2%} +- {t[k]['std']:.2%}" for k in ("accuracy", "unweighted_accuracy", "macro_f1")
                )
            else:
                t, n = m["test"], 1
                acc, ua, f1 = (f"{t[k]:.2%}" for k in ("accuracy", "unweighted_accuracy", "macro_f1"))
            line = f"| {model} | {split} | {acc} | {ua} | {f1} | {n} | {m['train_seconds'] / n:.0f} |"
            rows.append(line)
            print(line, flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.md").write_text("# Training benchmark\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
