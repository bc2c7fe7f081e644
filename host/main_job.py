"""``ser-main``: the project's main job, one command from corpus to the paper's table, measured on a board.

For both paper models: train on the paper split, convert to int8 and verify on the host, build the
firmware for the emulated board (or use a flashed board given by ``--port``), evaluate the test clips
over serial, and print the paper's figures beside ours. Every stage reuses what a previous run of the
job finished (a trained run, a conversion, an evaluation, which resumes), so a cut-off job continues.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from convert.tflite_file import MODEL_FILE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PAPER = {
    "audio_resnet": {"params": 0.13e6, "accuracy": 0.7333, "ms": 3.35, "baseline": "resnet18_1d"},
    "spectrogram_resnet": {"params": 0.39e6, "accuracy": 0.7167, "ms": 1.72, "baseline": "resnet18_2d"},
}
PAPER_RATIOS = "the paper: AudioResNet has 86x fewer parameters than ResNet18 and runs 7x faster"
EMULATED = "qemu-mps2-an386"
EVAL_DIR = "board-eval"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ser-main",
        description="Train both paper models on CASIA, convert them to int8, run them on a board (the emulated "
        "Cortex-M4 by default) and print the paper's table beside ours.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="folder for the run folders and the report")
    p.add_argument("--epochs", type=int, help="training epochs; default: ser-train's (TrainConfig)")
    p.add_argument("--retrain", action="store_true", help="train again even when a finished run exists")
    p.add_argument(
        "--port",
        help="a flashed board instead of the emulated one (e.g. /dev/ttyACM0): the model it "
        "carries is evaluated there, the other is listed with the command to flash it",
    )
    p.add_argument("--boards", type=int, default=2, help="emulated boards run in parallel")
    p.add_argument("--limit", type=int, help="evaluate only N test clips on the board (a quick look)")
    p.add_argument("--deps-dir", help="local TFLM/CMSIS sources for the firmware build (default $SER_DEPS_DIR)")
    return p.parse_args(argv)


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _train(model: str, args: argparse.Namespace) -> Path:
    run = args.runs / f"{model}-paper"
    if args.retrain or not (run / "metrics.json").exists():
        cmd = _python("train", "--model", model, "--split", "paper", "--out", str(run))
        cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        subprocess.run(cmd + (["--data", args.data] if args.data else []), check=True)  # a process per model
    else:
        print(f"{run}: finished run found, reusing it (--retrain to train again)")
    return run


def _convert(run: Path, args: argparse.Namespace) -> dict:
    """int8 conversion; when post-training quantization loses more than a point on the validation clips, QAT takes over.

    The test clips never decide it: they are scored after the choice, like every other choice's.
    """
    report = run / "conversion.json"
    data = ["--data", args.data] if args.data else []
    earlier = json.loads(report.read_text()) if report.exists() else None
    stale = (
        earlier is None
        or report.stat().st_mtime < (run / "model.keras").stat().st_mtime
        or "validation" not in earlier  # written before QAT was decided on validation
    )
    if stale:
        subprocess.run(_python("convert", str(run), "--quiet", *data), check=False)
    if not report.exists():
        raise SystemExit(f"ser-main: conversion of {run} failed (see above)")
    conversion = json.loads(report.read_text())
    if conversion["qat_advised"] and "qat" not in conversion:
        lost = conversion["validation"]["accuracy_drop"]
        print(f"{run}: int8 loses {lost:.2%} on the validation clips; quantization-aware training (ser-convert --qat)")
        subprocess.run(_python("convert", str(run), "--qat", *data), check=False)
        conversion = json.loads(report.read_text())
    return conversion


def _evaluate(run: Path, args: argparse.Namespace) -> tuple[dict | None, str]:
    """The run's on-board summary (resuming an earlier evaluation), or None and the reason there is none."""
    from convert.tflite_file import ModelFileError
    from host import eval_on_device
    from host.session import FatalBoardError
    from train.corpus import CorpusError

    out = run / EVAL_DIR
    if (out / "evaluation.json").exists():
        from convert.tflite_file import sha256

        started = json.loads((out / "evaluation.json").read_text())["model_sha256"]
        if started != sha256((run / MODEL_FILE).read_bytes()):  # retrained or reconverted since
            out.rename(out.with_name(f"{EVAL_DIR}-{started[:12]}"))

    def argv() -> list[str]:
        resume = (out / "evaluation.json").exists()
        a = ["--resume", str(out)] if resume else ["--run", str(run), "--out", str(out)]
        a += ["--port", args.port] if args.port else ["--board", EMULATED, "--boards", str(args.boards)]
        a += ["--limit", str(args.limit)] if args.limit and not resume else []
        a += ["--data", args.data] if args.data else []
        return a + (["--deps-dir", args.deps_dir] if args.deps_dir else [])

    try:
        try:
            _, summary = eval_on_device.evaluate(eval_on_device.parse_args(argv()))
        except eval_on_device.FirmwareChanged:  # the firmware was rebuilt since: evaluate anew
            started = json.loads((out / "evaluation.json").read_text()).get("firmware", {}).get("elf_sha256", "unknown")
            out.rename(out.with_name(f"{EVAL_DIR}-firmware-{started[:12]}"))
            _, summary = eval_on_device.evaluate(eval_on_device.parse_args(argv()))
    except (eval_on_device.EvalError, FatalBoardError, CorpusError, ModelFileError) as exc:
        return None, str(exc).replace("\n", " ")
    return summary, ""


def _memory(run: Path) -> tuple[int, int] | None:
    """Flash and RAM of the emulated board's firmware for this run's model (from the linked ELF)."""
    from convert.budget import board, elf_usage
    from host.firmware import elf_path

    elf = elf_path(EMULATED, (run / MODEL_FILE).read_bytes())
    if not elf.exists():
        return None
    flash, ram = elf_usage(elf, board(EMULATED))
    return flash.used, ram.used


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def table(rows: dict[str, dict], latency: dict[str, float], params: dict[str, int]) -> str:
    lines = [
        "| model | params (paper / ours) | MACs | accuracy (paper) | float | int8 (host TFLM) | on board "
        "| board = host (bit-exact) | flash | RAM | front end / Invoke (M cycles) | host ms (paper / ours) "
        "| params vs ResNet18 | speed vs ResNet18 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        paper, base, m, conv, ev = PAPER[name], PAPER[name]["baseline"], r["metrics"], r["conversion"], r["eval"]
        on_board = agree = cycles = "n/a"
        if ev and "board" in ev:
            a, lat = ev["agreement"], ev["latency"]
            on_board = f"{_pct(ev['board']['accuracy'])} ({ev['clips']['ok']} clips)"
            agree = f"{a['bit_exact_clips']}/{a['clips']}"
            cycles = f"{lat['frontend']['cycles']['mean'] / 1e6:.1f} / {lat['invoke']['cycles']['mean'] / 1e6:.1f}"
        mem = r["memory"]
        flash, ram = (f"{mem[0] / 1024:.0f} KiB", f"{mem[1] / 1024:.0f} KiB") if mem else ("n/a", "n/a")
        lines.append(
            f"| {name} | {paper['params'] / 1e6:.2f} M / {m['params'] / 1e6:.3f} M | {m['macs'] / 1e6:.1f} M "
            f"| {paper['accuracy']:.2%} | {_pct(m['test']['accuracy'])} | {_pct(conv['int8']['accuracy'])} | {on_board} "
            f"| {agree} | {flash} | {ram} | {cycles} | {paper['ms']:.2f} / {latency[name]:.2f} "
            f"| {params[base] / m['params']:.0f}x fewer | {latency[base] / latency[name]:.1f}x faster |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = {name: _train(name, args) for name in PAPER}
    rows: dict[str, dict] = {}
    notes: list[str] = []
    for name, run in runs.items():
        conversion = _convert(run, args)
        summary, why = _evaluate(run, args)
        if summary is None:
            notes.append(f"{name}: not evaluated on the board: {why}")
        rows[name] = {
            "metrics": json.loads((run / "metrics.json").read_text()),
            "conversion": conversion,
            "eval": summary,
            "memory": _memory(run),
        }

    from train.latency import host_latency_ms
    from train.models import BUILDERS
    from train.run import default_frontend

    latency, params = {}, {}
    for name in [*PAPER, *(p["baseline"] for p in PAPER.values())]:
        model = BUILDERS[name](default_frontend(name).input_shape)
        latency[name], params[name] = host_latency_ms(model), model.count_params()
    text = table(rows, latency, params)
    where = f"the board on {args.port}" if args.port else f"the emulated board ({EMULATED}, QEMU)"
    note = (
        f"\nPaper split (stratified 80/20, seed 0); accuracy on the 240 test clips, epoch picked on validation clips "
        f"carved from the training part. int8: full-integer TFLite under TFLM on the host (QAT where post-training "
        f"quantization lost more than a point on the validation clips). On board: {where}, "
        f"streamed over serial; 'board = host' counts clips whose int8 scores equal the host TFLM reference bit for "
        f"bit. Cycles under QEMU are emulator instruction counts (-icount), not silicon cycles. Flash/RAM: the linked "
        f"firmware for {EMULATED}. Host times: float Keras, batch 1, this machine; {PAPER_RATIOS}.\n"
    )
    for line in notes:
        note += f"\n- {line}"
    print(text + "\n" + note)
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / "main_job.md").write_text("# Main job: paper table\n\n" + text + "\n" + note + "\n")
    (args.runs / "main_job.json").write_text(json.dumps({"rows": rows, "host_ms": latency, "params": params}, indent=2) + "\n")
    print(f"report: {args.runs / 'main_job.md'}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
