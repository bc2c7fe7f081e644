"""Benchmark: full trainings under each protocol; prints the wall time of each training and the scores.

    python benchmarks/train_benchmark.py --data CASIA [--models audio_resnet spectrogram_resnet]
                                         [--splits paper kfold loso] [--out runs/bench] [--epochs N]
                                         [--distill audio_resnet:spectrogram_resnet ...] [--jobs 2]
                                         [--seeds 0 1 2] [--speaker-norm scalar|bins]
                                         [--speed-perturb 0.9,1.0,1.1] [--vtlp 0.1] [--speaker-adversarial 0.3]
                                         [--mixup 0.4] [--standardised-head 1] [--embedding-norm]
                                         [--embedding-classifier KIND[:VALUE]] [--validation-speaker] [--on-board]
                                         [--classifier-on-int8]

Each (model, split) trains through ``ser-train`` in its own process; finished runs (and finished
folds) are reused, so a cut-off benchmark continues where it stopped.

``--distill STUDENT:TEACHER`` also trains STUDENT distilled from TEACHER's run of the same split
(``STUDENT-from-TEACHER-SPLIT``), after that run; TEACHER may be several models joined by ``+``
(an ensemble of teachers), for example ``spectrogram_resnet:spectrogram_resnet+audio_resnet``.
Every run, teacher and student alike, takes the options given here that apply to its front end
(``--speaker-norm`` and ``--vtlp`` only to log-mel models).

``--seeds 0 1 2`` trains each (model, split) once per seed on the same split (``--split-seed 0``), so
the spread that initialisation and augmentation alone cause shows beside each score, with the mean
over seeds.

``--jobs N`` runs N trainings at once, each pinned to its own core with one TensorFlow thread (see
``train_speed.md`` for what was measured on 2 cores); each fold of a k-fold or LOSO run is then a
training of its own, so one 10-fold run alone keeps every core busy. Timings on a shared machine
are noisy, so the load average before and after each training is printed with it. Results also go
to ``<out>/benchmark.md``.

``--on-board`` then converts every run (each fold) to int8 (``ser-convert``) and evaluates it on the
emulated board (``ser-eval --board qemu``, the firmware built from ``$SER_DEPS_DIR``), and adds a
second table: int8 accuracy, unweighted accuracy and macro-F1 on the board over the folds, per test
speaker, bit-exact clips and (with ``--speaker-norm``) whether the board's statistics were the
host's, front end and Invoke instructions per clip. Finished conversions and evaluations are reused
(``--classifier-on-int8`` names its runs apart, since it changes the conversion).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.corpus import SPEAKERS
from train.embedding_norm import classifier_arg
from train.frontend import FRONT_END_KIND
from train.splits import KFOLD_FOLDS, fold_runs

FOLDS = {"kfold": KFOLD_FOLDS, "loso": len(SPEAKERS)}  # test folds of the multi-fold protocols
EVAL = Path(__file__).resolve().parents[1] / "host" / "eval_on_device.py"


@dataclass(frozen=True)
class Training:
    model: str
    split: str
    teachers: tuple[str, ...] = ()  # model names of the plain teacher runs (same split)
    seed: int = 0  # initialisation and augmentation; the split is always drawn with seed 0
    speaker_norm: str | None = None  # ser-train --speaker-norm
    speed_perturb: str | None = None  # ser-train --speed-perturb
    vtlp: str | None = None  # ser-train --vtlp
    speaker_adversarial: str | None = None  # ser-train --speaker-adversarial
    mixup: str | None = None  # ser-train --mixup
    standardised_head: str | None = None  # ser-train --standardised-head
    embedding_norm: bool = False  # ser-train --embedding-norm
    embedding_classifier: str | None = None  # ser-train --embedding-classifier
    validation_speaker: bool = False  # ser-train --validation-speaker (LOSO)
    classifier_on_int8: bool = False  # ser-convert --classifier-on-int8 (with --on-board)

    @property
    def name(self) -> str:
        base = f"{self.model}-from-{'+'.join(self.teachers)}-{self.split}" if self.teachers else f"{self.model}-{self.split}"
        base = f"{base}-speaker-norm-{self.speaker_norm}" if self.speaker_norm else base
        base = f"{base}-speed-{self.speed_perturb.replace(',', '-')}" if self.speed_perturb else base
        base = f"{base}-vtlp-{self.vtlp}" if self.vtlp else base
        base = f"{base}-adversarial-{self.speaker_adversarial}" if self.speaker_adversarial else base
        base = f"{base}-mixup-{self.mixup}" if self.mixup else base
        base = f"{base}-standardised-head-{self.standardised_head}" if self.standardised_head else base
        base = f"{base}-embedding-norm" if self.embedding_norm else base
        classifier = self.embedding_classifier  # KIND[:VALUE], named KIND[-VALUE]
        base = f"{base}-{classifier.replace(':', '-')}" if classifier not in (None, "logistic") else base
        base = f"{base}-val-speaker" if self.validation_speaker else base
        base = f"{base}-int8-classifier" if self.classifier_on_int8 else base
        return f"{base}-seed{self.seed}" if self.seed else base


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _ser_train(t: Training, args: argparse.Namespace, out: Path, fold: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "train", "--model", t.model, "--split", t.split, "--out", str(out), "--quiet"]
    cmd += ["--seed", str(t.seed), "--split-seed", "0"]
    cmd += ["--fold", str(fold)] if fold is not None else []
    cmd += ["--epochs", str(args.epochs)] if args.epochs else []
    cmd += ["--speaker-norm", t.speaker_norm] if t.speaker_norm else []
    cmd += ["--speed-perturb", t.speed_perturb] if t.speed_perturb else []
    cmd += ["--vtlp", t.vtlp] if t.vtlp else []
    cmd += ["--speaker-adversarial", t.speaker_adversarial] if t.speaker_adversarial else []
    cmd += ["--mixup", t.mixup] if t.mixup else []
    cmd += ["--standardised-head", t.standardised_head] if t.standardised_head else []
    cmd += ["--embedding-norm"] if t.embedding_norm else []
    cmd += ["--embedding-classifier", t.embedding_classifier] if t.embedding_classifier else []
    cmd += ["--validation-speaker"] if t.validation_speaker else []
    cmd += ["--data", args.data] if args.data else []
    for teacher in teachers_of(t, args):
        cmd += ["--teacher", str(args.out / teacher.name)]
    return cmd


def _run(cmd: list[str], label: str, cores: queue.Queue[int] | None) -> None:
    """One training process; with a core queue, on a core of its own with one TensorFlow thread."""
    env, core = dict(os.environ), None
    if cores is not None:
        core = cores.get()
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1")
    before = _load()
    try:
        pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
        subprocess.run(cmd, check=True, env=env, preexec_fn=pin)
    finally:
        if cores is not None:
            cores.put(core)
    where = f" on core {core}" if core is not None else ""
    print(f"{label}{where}: load average (1/5/15 min) {before} before, {_load()} after", flush=True)


def _train(t: Training, args: argparse.Namespace, cores: queue.Queue[int] | None) -> None:
    run = args.out / t.name
    if (run / "metrics.json").exists():
        return
    if cores is None or t.split not in FOLDS:
        _run(_ser_train(t, args, run), t.name, cores)
        return
    # With --jobs, the folds of one run share the cores too, so a single k-fold run keeps them all busy.
    todo = [k for k in range(FOLDS[t.split]) if not (run / f"fold-{k:02d}" / "metrics.json").exists()]
    with ThreadPoolExecutor(max_workers=args.jobs) as folds:  # the core queue shares the cores between runs
        jobs = [folds.submit(_run, _ser_train(t, args, run / f"fold-{k:02d}", k), f"{t.name} fold {k}", cores) for k in todo]
        for job in jobs:
            job.result()
    subprocess.run(_ser_train(t, args, run), check=True)  # trains nothing: reuses every fold, writes the summary


def training_seconds(run: Path) -> list[float]:
    """Wall seconds of each training in a run folder (one per fold for k-fold and LOSO)."""
    folds = sorted(run.glob("fold-*/metrics.json"))
    return [json.loads(f.read_text())["train_seconds"] for f in folds or [run / "metrics.json"]]


def result_row(t: Training, run: Path) -> str:
    m = json.loads((run / "metrics.json").read_text())
    t_ = m["test"]
    if "folds" in m:
        acc, ua, f1 = (f"{t_[k]['mean']:.2%} +- {t_[k]['std']:.2%}" for k in ("accuracy", "unweighted_accuracy", "macro_f1"))
        v = (m.get("validation") or {}).get("validation_accuracy")  # None: refit runs have no validation part
        val = f"{v['mean']:.2%} +- {v['std']:.2%}" if v else "-"
    else:
        acc, ua, f1 = (f"{t_[k]:.2%}" for k in ("accuracy", "unweighted_accuracy", "macro_f1"))
        val = "-" if m["validation_accuracy"] is None else f"{m['validation_accuracy']:.2%}"
    seconds = training_seconds(run)
    each = ", ".join(f"{s:.0f}" for s in seconds)
    model = f"{t.model} (teachers {' + '.join(t.teachers)})" if t.teachers else t.model
    return f"| {model} | {t.split} | {t.seed} | {acc} | {ua} | {f1} | {val} | {len(seconds)} | {max(seconds):.0f} max ({each}) |"


def seeds_row(group: list[Training], out: Path) -> str:
    """Mean +- std over seeds of the test and validation accuracy (the fold mean for k-fold and LOSO)."""
    metrics = [json.loads((out / t.name / "metrics.json").read_text()) for t in group]
    test = [m["test"]["accuracy"]["mean"] if "folds" in m else m["test"]["accuracy"] for m in metrics]
    val = [
        (m["validation"] or {}).get("validation_accuracy", {}).get("mean") if "folds" in m else m["validation_accuracy"]
        for m in metrics
    ]
    t = group[0]
    model = f"{t.model} (teachers {' + '.join(t.teachers)})" if t.teachers else t.model
    return (
        f"| {model} | {t.split} | mean of {len(group)} | {np.mean(test):.2%} +- {np.std(test):.2%} | | "
        f"| {'-' if None in val else f'{np.mean(val):.2%} +- {np.std(val):.2%}'} | | |"
    )


def on_board(run: Path, args: argparse.Namespace) -> list[dict]:
    """Each fold converted to int8 and evaluated on the emulated board (both reused when done): its summaries."""
    summaries = []
    for fold in fold_runs(run):
        data = ["--data", args.data] if args.data else []
        if not (fold / "model_int8.tflite").exists():
            int8 = ["--classifier-on-int8"] if args.classifier_on_int8 else []
            subprocess.run([sys.executable, "-m", "convert", str(fold), *data, "--no-report", *int8], check=True)
        report = fold / "board-eval"
        if not (report / "summary.json").exists():
            where = (
                ["--resume", str(report)] if (report / "evaluation.json").exists() else ["--run", str(fold), "--out", str(report)]
            )
            subprocess.run([sys.executable, str(EVAL), *where, "--board", "qemu", "--boards", "1", *data, "--quiet"], check=True)
        summaries.append(json.loads((report / "summary.json").read_text()))
    return summaries


def board_row(t: Training, summaries: list[dict]) -> str:
    """int8 on the board over the folds: mean +- std of accuracy, UA and macro-F1, each speaker, agreement, cost."""

    def stat(key: str) -> str:
        values = [s["board"][key] for s in summaries]
        return f"{np.mean(values):.2%} +- {np.std(values):.2%}" if len(values) > 1 else f"{values[0]:.2%}"

    speakers = {k: v for s in summaries for k, v in s["speakers"].items()} if len(summaries) > 1 else {}
    each = ", ".join(f"{k} {v['accuracy']:.1%}/{v['macro_f1']:.1%}" for k, v in speakers.items()) or "-"
    exact = sum(s["agreement"]["bit_exact_clips"] for s in summaries)
    clips = sum(s["agreement"]["clips"] for s in summaries)
    norms = [v for s in summaries for v in s.get("speaker_norm", {}).get("statistics_bit_exact", {}).values()]
    stats = f"{sum(norms)}/{len(norms)}" if norms else "-"
    fe, inv = (np.mean([s["latency"][k]["cycles"]["mean"] for s in summaries]) / 1e6 for k in ("frontend", "invoke"))
    return (
        f"| {t.model} | {t.split} | {stat('accuracy')} | {stat('unweighted_accuracy')} | {stat('macro_f1')} | {each} | "
        f"{exact}/{clips} | {stats} | {fe:.2f} M / {inv:.2f} M |"
    )


def teachers_of(t: Training, args: argparse.Namespace) -> list[Training]:
    """The runs a distilled training learns from: its teachers' plain runs of the same split and seed."""
    return [Training(m, t.split, seed=t.seed, **options(m, args)) for m in t.teachers]


def options(model: str, args: argparse.Namespace) -> dict:
    """The benchmark's ser-train options that apply to ``model``: the log-mel ones only to log-mel models."""
    logmel = FRONT_END_KIND[model] == "logmel"
    return {
        "speaker_norm": args.speaker_norm if logmel else None,
        "speed_perturb": args.speed_perturb,
        "vtlp": args.vtlp if logmel else None,
        "speaker_adversarial": args.speaker_adversarial,
        "mixup": args.mixup,
        "standardised_head": args.standardised_head,
        "embedding_norm": args.embedding_norm,
        "embedding_classifier": args.embedding_classifier,
        "validation_speaker": args.validation_speaker,
        "classifier_on_int8": args.classifier_on_int8,
    }


def plan(args: argparse.Namespace) -> list[Training]:
    """Plain trainings first, then distilled ones (each after its teacher's run); every run takes the options
    that apply to it, a teacher as its plain run does."""
    trainings = [Training(m, s, seed=n, **options(m, args)) for n in args.seeds for m in args.models for s in args.splits]
    for pair in args.distill:
        student, _, joined = pair.partition(":")
        if not joined:
            raise SystemExit(f"--distill takes STUDENT:TEACHER[+TEACHER...], got {pair!r}")
        teachers = tuple(joined.split("+"))
        for n in args.seeds:
            students = [Training(student, s, teachers, seed=n, **options(student, args)) for s in args.splits]
            trainings += [t for t in (u for s in students for u in teachers_of(s, args)) if t not in trainings]
            trainings += students
    return trainings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--models", nargs="*", default=["audio_resnet", "spectrogram_resnet"])
    p.add_argument("--splits", nargs="+", default=["paper", "kfold", "loso"])
    p.add_argument("--distill", nargs="*", default=[], metavar="STUDENT:TEACHER", help="also train distilled students")
    p.add_argument("--epochs", type=int, help="default: ser-train's (TrainConfig)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="train each run once per seed, on split seed 0")
    p.add_argument(
        "--speaker-norm", choices=("scalar", "bins"), help="ser-train --speaker-norm for every run (log-mel models only)"
    )
    p.add_argument("--speed-perturb", metavar="SPEEDS", help="ser-train --speed-perturb for every run, e.g. 0.9,1.0,1.1")
    p.add_argument("--vtlp", metavar="W", help="ser-train --vtlp for every run (log-mel models only), e.g. 0.1")
    p.add_argument("--speaker-adversarial", metavar="W", help="ser-train --speaker-adversarial for every run, e.g. 0.3")
    p.add_argument("--mixup", metavar="ALPHA", help="ser-train --mixup for every run, e.g. 0.4")
    p.add_argument("--standardised-head", metavar="W", help="ser-train --standardised-head for every run, e.g. 1")
    p.add_argument("--embedding-norm", action="store_true", help="ser-train --embedding-norm for every run (a teacher's too)")
    p.add_argument(
        "--embedding-classifier",
        type=classifier_arg,
        metavar="KIND[:VALUE]",
        help="ser-train --embedding-classifier for every run, e.g. unit-logistic:0.03",
    )
    p.add_argument(
        "--validation-speaker", action="store_true", help="ser-train --validation-speaker for every run (loso splits only)"
    )
    p.add_argument("--on-board", action="store_true", help="also convert every run and evaluate it on the emulated board")
    p.add_argument("--classifier-on-int8", action="store_true", help="with --on-board: ser-convert --classifier-on-int8")
    p.add_argument("--jobs", type=int, default=1, help="trainings (or folds) at once, one core and one thread each (when > 1)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    return p


def main() -> int:
    args = parser().parse_args()

    trainings = plan(args)
    cores: queue.Queue[int] | None = None
    if args.jobs > 1:
        cores = queue.Queue()
        for core in sorted(os.sched_getaffinity(0))[: args.jobs]:
            cores.put(core)
    started: dict[Training, Future] = {}

    def after_teacher(t: Training) -> None:
        for teacher in teachers_of(t, args):
            started[teacher].result()  # submitted earlier, so it runs before or beside this one
        _train(t, args, cores)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for t in trainings:
            started[t] = pool.submit(after_teacher, t)
        for future in started.values():
            future.result()

    rows = [
        "| model | split | seed | accuracy | UA | macro-F1 | validation acc. | trainings | seconds per training (each) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[tuple, list[Training]] = {}
    for t in trainings:
        groups.setdefault((t.model, t.split, t.teachers), []).append(t)
    for group in groups.values():
        rows += [result_row(t, args.out / t.name) for t in group]
        rows += [seeds_row(group, args.out)] if len(group) > 1 else []
    if args.on_board:
        rows += [
            "",
            "int8 on the emulated board (accuracy / macro-F1 per test speaker; cycles are QEMU instructions per clip):",
            "",
            "| model | split | accuracy | UA | macro-F1 | per speaker | bit-exact clips | statistics bit-exact "
            "| front end / Invoke |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        rows += [board_row(t, on_board(args.out / t.name, args)) for t in trainings]
    table = "\n".join(rows)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.md").write_text("# Training benchmark\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
