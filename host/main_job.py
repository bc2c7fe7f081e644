"""``ser-main``: the project's main job, one command from corpus to the paper's table, measured on a board.

For both paper models: train on the paper split, convert to int8 and verify on the host, build the
firmware for the emulated board (or use a flashed board given by ``--port``), evaluate the test clips
over serial, and print the paper's figures beside ours. Every stage reuses what a previous run of the
job finished (a trained run, a conversion, an evaluation, which resumes), so a cut-off job continues.

Each stage prints one line: what it gave and how long it took. Everything the tools print (and
TensorFlow's C++ lines, written straight to file descriptor 2) goes to ``main_job.log`` in the runs
folder; a failed stage shows the end of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from convert.tflite_file import MODEL_FILE
from host import doctor
from train.tf_env import quiet_tensorflow

quiet_tensorflow()

PAPER = {
    "audio_resnet": {"params": 0.13e6, "accuracy": 0.7333, "ms": 3.35, "baseline": "resnet18_1d"},
    "spectrogram_resnet": {"params": 0.39e6, "accuracy": 0.7167, "ms": 1.72, "baseline": "resnet18_2d"},
}
PAPER_RATIOS = "the paper: AudioResNet has 86x fewer parameters than ResNet18 and runs 7x faster"
EMULATED = "qemu-mps2-an386"
EVAL_DIR = "board-eval"
LOG_FILE = "main_job.log"
FAILED_TAIL_LINES = 25


class StageFailed(Exception):
    """A stage the job cannot go on without failed; its output is in the log."""


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
    p.add_argument("--check", action="store_true", help="only check the prerequisites (as ser-doctor does) and exit")
    return p.parse_args(argv)


# Leave one speaker out, int8 on the emulated board: what a user meets with a new voice (README: Results), per model.
_LOSO = ".venv/bin/python benchmarks/train_benchmark.py --data CASIA --splits loso --jobs 2 --on-board --embedding-norm"
LOSO_COMMANDS = {
    "spectrogram_resnet": f"{_LOSO} --models spectrogram_resnet --speaker-norm bins --speed-perturb 0.9,1.0,1.1 "
    "--embedding-classifier unit-lda:0.9",
    "audio_resnet": f"{_LOSO} --models audio_resnet --standardised-head 1 --embedding-classifier unit-lda:0.1 "
    "--classifier-on-int8",
}


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _log(args: argparse.Namespace) -> Path:
    return args.runs / LOG_FILE


def _begin(stage: str, model: str, args: argparse.Namespace) -> float:
    """Mark the stage in the log; returns when it started."""
    with _log(args).open("a") as log:
        log.write(f"\n==== {stage} {model} ({datetime.now():%Y-%m-%d %H:%M:%S})\n")
    return time.perf_counter()


def _done(stage: str, model: str, result: str, started: float) -> None:
    """The stage's one line: what it gave and how long it took."""
    print(f"{stage:<8} {model:<19} {result} ({time.perf_counter() - started:.0f} s)", flush=True)


# TensorFlow's C++ INFO and WARNING lines that come before its logging reads TF_CPP_MIN_LOG_LEVEL (on CPUs
# where it turns oneDNN's custom operations on, it says so at import whatever the level).
TF_EARLY_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} \d\d:\d\d:\d+\.\d+ )")


def _run_logged(cmd: list[str], args: argparse.Namespace) -> int:
    """Run one of the pipeline's tools with its stdout and stderr (file descriptors 1 and 2) in the log."""
    with _log(args).open("a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as child:
            for line in child.stdout:
                if not TF_EARLY_LOG.match(line):
                    log.write(line)
                    log.flush()
        return child.returncode


def _train(model: str, args: argparse.Namespace) -> Path:
    run, started = args.runs / f"{model}-paper", _begin("train", model, args)
    reused = not args.retrain and (run / "metrics.json").exists()
    if not reused:
        cmd = _python("train", "--model", model, "--split", "paper", "--out", str(run), "--quiet")
        cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        if _run_logged(cmd + (["--data", args.data] if args.data else []), args):
            raise StageFailed(f"training {model} failed")
    m = json.loads((run / "metrics.json").read_text())
    kept = f"{'last' if m['refit'] else 'best'} epoch {m['best_epoch']} of {m['epochs']}"
    result = f"float {m['test']['accuracy']:.2%} on {m['test']['clips']} test clips ({kept})"
    _done("train", model, result + (f", reused from {run} (--retrain to train again)" if reused else ""), started)
    return run


def _convert(run: Path, args: argparse.Namespace) -> dict:
    """int8 conversion; when post-training quantization loses more than a point on the validation clips, QAT takes over.

    The test clips never decide it: they are scored after the choice, like every other choice's.
    """
    from convert.verify import summary

    report = run / "conversion.json"
    earlier = json.loads(report.read_text()) if report.exists() else None
    stale = (
        earlier is None
        or report.stat().st_mtime < (run / "model.keras").stat().st_mtime
        or "validation" not in earlier  # written before QAT was decided on validation
        or (earlier["qat_advised"] and "qat" not in earlier)  # QAT was advised but not done
    )
    model = run.name.removesuffix("-paper")
    started = _begin("convert", model, args)
    if stale:
        report.unlink(missing_ok=True)
        cmd = _python("convert", str(run), "--quiet", "--no-report", "--qat-if-advised")
        if _run_logged(cmd + (["--data", args.data] if args.data else []), args) or not report.exists():
            raise StageFailed(f"conversion of {run} failed")
    conversion = json.loads(report.read_text())
    _done("convert", model, summary(conversion) + ("" if stale else ", reused"), started)
    return conversion


def _evaluate(run: Path, args: argparse.Namespace) -> tuple[dict | None, str]:
    """The run's on-board summary (resuming an earlier evaluation), or None and the reason there is none.

    It runs in this process: its printed lines go to the log, its progress bars (on a terminal) stay.
    """
    model = run.name.removesuffix("-paper")
    started = _begin("board", model, args)
    with _log(args).open("a") as log, contextlib.redirect_stdout(log):
        summary, why = _evaluate_quietly(run, args)
    if summary is None:
        result = f"not evaluated: {why.splitlines()[0]} (all of it in {_log(args)})"
    elif "board" in summary:
        a, c, host = summary["agreement"], summary["clips"], summary["host_tflm"]["accuracy"]
        result = f"{summary['board']['accuracy']:.2%} on {c['ok']} test clips (host TFLM {host:.2%}), "
        result += f"bit-exact with the host {a['bit_exact_clips']}/{a['clips']}"
        result += f", {c['failed']} clips failed" if c["failed"] else ""
    else:
        result = f"no clip evaluated ({summary['clips']['failed']} failed)"
    _done("board", model, result, started)
    return summary, why


def _evaluate_quietly(run: Path, args: argparse.Namespace) -> tuple[dict | None, str]:
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
        a += [] if sys.stderr.isatty() else ["--quiet"]  # progress bars only where they redraw in place
        return a + (["--deps-dir", args.deps_dir] if args.deps_dir else [])

    try:
        try:
            _, summary = eval_on_device.evaluate(eval_on_device.parse_args(argv()))
        except eval_on_device.FirmwareChanged:  # the firmware was rebuilt since: evaluate anew
            started = json.loads((out / "evaluation.json").read_text()).get("firmware", {}).get("elf_sha256", "unknown")
            out.rename(out.with_name(f"{EVAL_DIR}-firmware-{started[:12]}"))
            _, summary = eval_on_device.evaluate(eval_on_device.parse_args(argv()))
    except (eval_on_device.EvalError, FatalBoardError, CorpusError, ModelFileError) as exc:
        print(f"ser-main: {exc}")  # into the log, in full
        return None, str(exc)
    return summary, ""


def _host_latency(args: argparse.Namespace) -> dict[str, dict]:
    """Both paper models and their baselines, float Keras on the host (train.latency: one thread, in rounds)."""
    from train.latency import ROUNDS, THREADS, host_latency

    names = [*PAPER, *(p["baseline"] for p in PAPER.values())]
    started = _begin("latency", f"{len(names)} models", args)
    with _log(args).open("a") as log:
        latency = host_latency(names, log=log)
    calls = min(r["calls"] for r in latency.values())
    result = f"float Keras, batch 1, {THREADS} thread: {ROUNDS} rounds, {calls}+ calls each (in the table)"
    _done("latency", f"{len(names)} models", result, started)
    return latency


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


def _range(r: dict, unit: str = "") -> str:
    return f"{r['median']:.{_digits(r['median'])}f}{unit} ({r['p10']:.{_digits(r['p10'])}f}-{r['p90']:.{_digits(r['p90'])}f})"


def _digits(x: float) -> int:
    return 2 if x < 10 else 1 if x < 100 else 0


def table(rows: dict[str, dict], latency: dict[str, dict]) -> str:
    """The paper's table beside ours; host times and speed ratios as median (p10-p90) (train.latency)."""
    from train.latency import ratio

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
        ours = {k: latency[name][f"{k}_ms"] for k in ("median", "p10", "p90")}
        lines.append(
            f"| {name} | {paper['params'] / 1e6:.2f} M / {m['params'] / 1e6:.3f} M | {m['macs'] / 1e6:.1f} M "
            f"| {paper['accuracy']:.2%} | {_pct(m['test']['accuracy'])} | {_pct(conv['int8']['accuracy'])} | {on_board} "
            f"| {agree} | {flash} | {ram} | {cycles} | {paper['ms']:.2f} / {_range(ours)} "
            f"| {latency[base]['params'] / m['params']:.0f}x fewer | {_range(ratio(latency[base], latency[name]), 'x')} faster |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checks = doctor.run_checks(args.data, args.deps_dir, args.port)
    if args.check or not all(c.ok for c in checks):
        # Before any training: a missing piece found at the firmware build would waste minutes of work.
        print(doctor.report(checks))
        return 0 if all(c.ok for c in checks) else 1
    args.runs.mkdir(parents=True, exist_ok=True)
    print(f"ser-main: every tool's output goes to {_log(args)}", flush=True)
    try:
        return _job(args)
    except StageFailed as exc:
        lines = _log(args).read_text(errors="replace").splitlines()[-FAILED_TAIL_LINES:]
        print(f"ser-main: {exc}; the end of {_log(args)}:", *(f"  {line}" for line in lines), sep="\n", file=sys.stderr)
        return 2


def _job(args: argparse.Namespace) -> int:
    runs = {name: _train(name, args) for name in PAPER}
    rows: dict[str, dict] = {}
    notes: list[str] = []
    for name, run in runs.items():
        conversion = _convert(run, args)
        summary, why = _evaluate(run, args)
        if summary is None:
            notes.append(f"{name}: not evaluated on the board: {why}".replace("\n", " "))
        rows[name] = {
            "metrics": json.loads((run / "metrics.json").read_text()),
            "conversion": conversion,
            "eval": summary,
            "memory": _memory(run),
        }
    latency = _host_latency(args)
    text = table(rows, latency)
    where = f"the board on {args.port}" if args.port else f"the emulated board ({EMULATED}, QEMU)"
    note = (
        f"\nPaper split (stratified 80/20, seed 0); accuracy on the 240 test clips, epoch picked on validation clips "
        f"carved from the training part. int8: full-integer TFLite under TFLM on the host (QAT where post-training "
        f"quantization lost more than a point on the validation clips). On board: {where}, "
        f"streamed over serial; 'board = host' counts clips whose int8 scores equal the host TFLM reference bit for "
        f"bit. Cycles under QEMU are emulator instruction counts (-icount), not silicon cycles. Flash/RAM: the linked "
        f"firmware for {EMULATED}. Host times: float Keras, batch 1, on one thread of this machine, CPU time of a call "
        f"(its wall time when nothing else runs), median (p10-p90) of calls taken in rounds that visit every model in "
        f"turn; speed ratios are taken round by round; {PAPER_RATIOS}.\n"
    )
    note += (
        f"\nThe paper split tests the four voices the models trained on. On a voice a model never heard (leave one "
        f"speaker out) they score far lower; that figure is measured on the board by {' and by '.join(LOSO_COMMANDS.values())} "
        "(README: Results).\n"
    )
    for line in notes:
        note += f"\n- {line}"
    (args.runs / "main_job.md").write_text("# Main job: paper table\n\n" + text + "\n" + note + "\n")
    (args.runs / "main_job.json").write_text(json.dumps({"rows": rows, "host_ms": latency}, indent=2) + "\n")
    print("\n" + text + "\n")
    print("On a voice the models never heard (leave one speaker out) they score far lower; measured on the board by:")
    for command in LOSO_COMMANDS.values():
        print(f"  {command}")
    each = ", ".join(f"{run}/{{summary,conversion,{EVAL_DIR}/summary}}.md" for run in runs.values())
    print(f"report: {args.runs / 'main_job.md'} (and main_job.json); per model: {each}; log: {_log(args)}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
