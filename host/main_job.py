"""``ser-main``: the project's main job, one command from corpus to the paper's table.

Today it trains and scores both paper models on the paper split and compares them with the
paper and with ResNet18; later stages (int8 conversion, firmware, on-board evaluation) extend it.
A run that already has its ``metrics.json`` is reused, so a cut-off job continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PAPER = {
    "audio_resnet": {"params": 0.13e6, "accuracy": 0.7333, "ms": 3.35, "baseline": "resnet18_1d"},
    "spectrogram_resnet": {"params": 0.39e6, "accuracy": 0.7167, "ms": 1.72, "baseline": "resnet18_2d"},
}
PAPER_RATIOS = "the paper: AudioResNet has 86x fewer parameters than ResNet18 and runs 7x faster"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ser-main",
        description="Train and score both paper models on CASIA and print the paper's table beside ours.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="folder for the run folders and the report")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--retrain", action="store_true", help="train again even when a finished run exists")
    return p.parse_args(argv)


def _train(model: str, args: argparse.Namespace) -> dict:
    run = args.runs / f"{model}-paper"
    if args.retrain or not (run / "metrics.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "train",
            "--model",
            model,
            "--split",
            "paper",
            "--out",
            str(run),
            "--epochs",
            str(args.epochs),
        ]
        if args.data:
            cmd += ["--data", args.data]
        subprocess.run(cmd, check=True)  # one process per model keeps TensorFlow's memory per run
    else:
        print(f"{run}: finished run found, reusing it (--retrain to train again)")
    return json.loads((run / "metrics.json").read_text())


def table(rows: dict[str, dict], latency: dict[str, float], params: dict[str, int]) -> str:
    lines = [
        "| model | params (paper) | params (ours) | MACs | accuracy (paper) | accuracy (ours, float) | UA | "
        "host ms (paper) | host ms (ours) | params vs ResNet18 | speed vs ResNet18 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in rows.items():
        paper, base = PAPER[name], PAPER[name]["baseline"]
        lines.append(
            f"| {name} | {paper['params'] / 1e6:.2f} M | {m['params'] / 1e6:.3f} M | {m['macs'] / 1e6:.1f} M "
            f"| {paper['accuracy']:.2%} | {m['test']['accuracy']:.2%} | {m['test']['unweighted_accuracy']:.2%} "
            f"| {paper['ms']:.2f} | {latency[name]:.2f} | {params[base] / m['params']:.0f}x fewer "
            f"| {latency[base] / latency[name]:.1f}x faster |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = {name: _train(name, args) for name in PAPER}

    from train.latency import host_latency_ms
    from train.models import BUILDERS
    from train.run import default_frontend

    latency, params = {}, {}
    for name in [*PAPER, *(p["baseline"] for p in PAPER.values())]:
        model = BUILDERS[name](default_frontend(name).input_shape)
        latency[name], params[name] = host_latency_ms(model), model.count_params()
    text = table(rows, latency, params)
    note = (
        f"\nPaper split (stratified 80/20, seed 0); accuracy on the 240 test clips, epoch picked on validation clips "
        f"carved from the training part. Host times: float Keras, batch 1, this machine; {PAPER_RATIOS}.\n"
    )
    print(text + "\n" + note)
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / "main_job.md").write_text("# Main job: paper table\n\n" + text + "\n" + note)
    (args.runs / "main_job.json").write_text(json.dumps({"runs": rows, "host_ms": latency, "params": params}, indent=2) + "\n")
    print(f"report: {args.runs / 'main_job.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
