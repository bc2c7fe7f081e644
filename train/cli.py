"""``ser-train``: train and score a model on CASIA under one of three leak-free protocols."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

# Light imports only (no TensorFlow): --help and every refusal of bad input are immediate.
from train.corpus import CorpusError, discover, load_corpus, resolve_root, verify_checksums
from train.embedding_norm import CLASSIFIER_HELP, classifier_arg
from train.frontend import DEFAULT_LOGMEL, FRONT_END_KIND
from train.splits import SPLITS
from train.tf_env import quiet_tensorflow

quiet_tensorflow()


def _up_to(what: str, example: str, high: float) -> Callable[[str], float]:
    """An argparse type: a number in (0, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} like {example}, got {text!r}") from None
        if not 0.0 < value <= high:
            raise argparse.ArgumentTypeError(f"{what} must lie in (0, {high:g}], got {text!r}")
        return value

    return parse


def _speeds(text: str) -> tuple[float, ...]:
    try:
        speeds = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected speeds like 0.9,1.0,1.1, got {text!r}") from None
    if not all(0.5 <= v <= 2.0 for v in speeds):
        raise argparse.ArgumentTypeError(f"speeds must lie in 0.5..2.0, got {text!r}")
    return speeds


def frontend_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The log-mel settings given on the command line; ValueError says what is wrong with them."""
    given = {k: v for k, v in {"n_fft": args.n_fft, "hop": args.hop, "n_mels": args.n_mels}.items() if v is not None}
    if not given:
        return given
    if FRONT_END_KIND[args.model] != "logmel":
        raise ValueError(f"--n-fft/--hop/--n-mels set the log-mel front end; {args.model} takes the raw waveform")
    cfg = replace(DEFAULT_LOGMEL, **given)
    if not 64 <= cfg.n_fft <= 8192 or cfg.n_fft & (cfg.n_fft - 1):
        raise ValueError(f"--n-fft must be a power of two from 64 to 8192 (the board's radix-2 FFT), got {cfg.n_fft}")
    if not 0 < cfg.hop <= cfg.n_fft:
        raise ValueError(f"--hop must be 1..n_fft ({cfg.n_fft}) so that frames cover the clip, got {cfg.hop}")
    if not 0 < cfg.n_mels <= cfg.n_fft // 4:
        raise ValueError(f"--n-mels must be 1..{cfg.n_fft // 4} for n_fft {cfg.n_fft} (or every band is a bin or less)")
    return given


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ser-train",
        description="Train a speech-emotion model on CASIA and score it on clips no selection decision has seen.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=sorted(FRONT_END_KIND), default="audio_resnet", help="architecture")
    p.add_argument("--data", help="CASIA root (<speaker>/<emotion>/<n>.wav); default $CASIA_ROOT")
    p.add_argument(
        "--split", choices=SPLITS, default="paper", help="paper: stratified 80/20; kfold: 10 folds; loso: leave one speaker out"
    )
    p.add_argument("--fold", type=int, help="train only this test fold (kfold/loso); default all folds")
    p.add_argument("--out", type=Path, help="run folder; default runs/<model>-<split>")
    # Training defaults live in train.fit.TrainConfig only; these flags override them when given.
    p.add_argument("--epochs", type=int, help="default: TrainConfig.epochs")
    p.add_argument("--batch-size", type=int, help="default: TrainConfig.batch_size")
    p.add_argument("--lr", type=float, help="peak learning rate (cosine schedule after warm-up); default: TrainConfig")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, augmentation and (unless --split-seed) the split")
    p.add_argument(
        "--split-seed",
        type=int,
        help="seed of the split and its validation part; default: --seed. Fix it and vary --seed to see "
        "how much initialisation alone moves the score on one split",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        action="append",
        help="distill from this finished run (its fold-XX for k-fold/LOSO; repeat for an ensemble); "
        "same --split and --split-seed",
    )
    p.add_argument("--distill-weight", type=float, help="share of the teacher's soft targets in the labels; default: TrainConfig")
    p.add_argument("--distill-temperature", type=float, help="softens the teacher's probabilities; default: TrainConfig")
    p.add_argument(
        "--mixup", type=float, metavar="ALPHA", help="mix training clips in pairs, share ~ Beta(ALPHA, ALPHA); default: off"
    )
    p.add_argument(
        "--average-decay",
        type=float,
        metavar="D",
        help="validate and keep an average of the weights, new = D * old + (1 - D) * epoch's; default: off",
    )
    p.add_argument(
        "--speed-perturb",
        type=_speeds,
        metavar="F,F,...",
        help="also play each training clip at one of these speeds, e.g. 0.9,1.0,1.1 (pitch moves with it); default: off",
    )
    p.add_argument(
        "--vtlp",
        type=_up_to("a warp width", "0.1", 0.3),
        metavar="W",
        help="log-mel models: warp each training clip's frequency axis by a factor drawn from 1 +- W, e.g. 0.1 "
        "(vocal tract length perturbation: formants move, tempo does not); default: off",
    )
    p.add_argument(
        "--speaker-adversarial",
        type=_up_to("a weight", "0.3", 1.0),
        metavar="W",
        help="train a speaker head on the pooled embedding through a gradient reversed and scaled by up to W, e.g. 0.3, "
        "so the convolutions learn to hide who speaks (train.adversary; the saved model has no such head); default: off",
    )
    p.add_argument(
        "--standardised-head",
        type=_up_to("a weight", "1", 4.0),
        metavar="W",
        help="also train a second emotion head on the pooled embedding standardised by each speaker's clips in the "
        "batch, its loss times W, e.g. 1, so the convolutions learn what --embedding-norm reads "
        "(train.standardised_head; the saved model has no such head); default: off",
    )
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        help="train on the whole training part, validation part included, and keep the last epoch (no selection); "
        "default: TrainConfig.refit",
    )
    p.add_argument(
        "--validation-speaker",
        action="store_true",
        help="loso only: the validation part is one whole training speaker (the one after the test speaker), held out "
        "of the fit, so the epoch kept is chosen on a voice the model never fitted; default: 10 %% of the training "
        "speakers' clips",
    )
    p.add_argument("--no-augment", action="store_true", help="train on clean clips only")
    p.add_argument(
        "--speaker-norm",
        choices=("scalar", "bins"),
        help="standardise each speaker's log-mel by that speaker's own unlabelled audio (one mean/std, or one per mel "
        "bin) instead of the training part's; a new voice is scored causally and with enrolment sets, a voice "
        "of the training part with its training clips' statistics (train.speaker_norm); default: off",
    )
    p.add_argument(
        "--embedding-norm",
        action="store_true",
        help="after training, standardise each voice's pooled embedding by that voice's own earlier clips and fit the "
        "classifier on it (train.embedding_norm); the deployed model ends at the embedding and the board applies the "
        "classifier; default: off",
    )
    p.add_argument(
        "--embedding-classifier",
        type=classifier_arg,
        metavar="KIND[:VALUE]",
        help=f"with --embedding-norm: the linear classifier, {CLASSIFIER_HELP}; default: logistic",
    )
    fe = p.add_argument_group("log-mel front end (spectrogram models; saved in frontend.json, which every later stage reads)")
    fe.add_argument("--n-fft", type=int, help=f"FFT and window length, a power of two; default {DEFAULT_LOGMEL.n_fft}")
    fe.add_argument("--hop", type=int, help=f"samples between frames; default {DEFAULT_LOGMEL.hop}")
    fe.add_argument("--n-mels", type=int, help=f"mel bands; default {DEFAULT_LOGMEL.n_mels}")
    p.add_argument("--limit-per-class", type=int, help="use only N clips per emotion and speaker (quick checks)")
    p.add_argument("--no-mcu-probe", action="store_true", help="skip the int8 + TFLM arena measurement")
    p.add_argument("--no-verify", action="store_true", help="skip SHA256SUMS verification")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--retrain", action="store_true", help="k-fold/LOSO: train folds again even when finished earlier")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        frontend_given = frontend_overrides(args)
    except ValueError as exc:
        print(f"ser-train: {exc}", file=sys.stderr)
        return 2
    if args.speaker_norm and FRONT_END_KIND[args.model] != "logmel":
        print(f"ser-train: --speaker-norm normalises the log-mel; {args.model} takes the raw waveform", file=sys.stderr)
        return 2
    if args.validation_speaker and (args.split != "loso" or args.refit):
        print(
            "ser-train: --validation-speaker holds out a training speaker: it needs --split loso and no --refit", file=sys.stderr
        )
        return 2
    for flag, given in (("--speed-perturb", args.speed_perturb), ("--vtlp", args.vtlp)):
        if args.no_augment and given:
            print(f"ser-train: {flag} is an augmentation; drop it or --no-augment", file=sys.stderr)
            return 2
    if args.embedding_classifier and not args.embedding_norm:
        print("ser-train: --embedding-classifier chooses --embedding-norm's classifier; add --embedding-norm", file=sys.stderr)
        return 2
    if args.speaker_adversarial and args.standardised_head:
        print("ser-train: --speaker-adversarial and --standardised-head do not combine; choose one", file=sys.stderr)
        return 2
    if args.vtlp and FRONT_END_KIND[args.model] != "logmel":
        print(f"ser-train: --vtlp warps the log-mel; {args.model} takes the raw waveform", file=sys.stderr)
        return 2
    try:
        root = resolve_root(args.data)
        if not args.no_verify:
            checked = verify_checksums(root)
            if checked:
                print(f"verified {checked} files against SHA256SUMS")
        clips = discover(root)
        if args.limit_per_class:
            counts: dict[tuple[str, str], int] = {}
            kept = []
            for c in clips:
                key = (c.speaker, c.emotion)
                counts[key] = counts.get(key, 0) + 1
                if counts[key] <= args.limit_per_class:
                    kept.append(c)
            clips = kept
        pcm = load_corpus(root, clips)
    except CorpusError as exc:
        print(f"ser-train: {exc}", file=sys.stderr)
        return 2

    # Heavy imports only once the data is known to be good.
    from train.fit import TrainConfig
    from train.run import budget_lines, default_frontend, summarise_folds, train_one
    from train.splits import assign_folds
    from train.teacher import TeacherError

    given = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "teachers": tuple(str(t) for t in args.teacher) if args.teacher else None,
        "distill_weight": args.distill_weight,
        "distill_temperature": args.distill_temperature,
        "mixup_alpha": args.mixup,
        "average_decay": args.average_decay,
        "refit": args.refit,
        "speaker_norm": args.speaker_norm,
        "embedding_norm": args.embedding_norm or None,
        "embedding_classifier": args.embedding_classifier,
        "validation_by_speaker": args.validation_speaker or None,
        "speaker_adversarial": args.speaker_adversarial,
        "standardised_head": args.standardised_head,
    }
    tcfg = TrainConfig(model=args.model, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    if args.no_augment:
        tcfg = replace(tcfg, augment=None)
    else:
        if args.speed_perturb:
            tcfg = replace(tcfg, augment=replace(tcfg.augment, speeds=args.speed_perturb))
        if args.vtlp:
            tcfg = replace(tcfg, augment=replace(tcfg.augment, vtlp=args.vtlp))
    out = args.out or Path("runs") / f"{args.model}-{args.split}"
    split_seed = args.seed if args.split_seed is None else args.split_seed
    _, num_folds = assign_folds(clips, args.split, split_seed)
    if args.split == "paper":
        folds, per_fold_dirs = [0], False
    elif args.fold is not None:
        if not 0 <= args.fold < num_folds:
            print(f"ser-train: --fold must be 0..{num_folds - 1} for split {args.split}", file=sys.stderr)
            return 2
        folds, per_fold_dirs = [args.fold], False
    else:
        folds, per_fold_dirs = list(range(num_folds)), True

    print(f"{len(clips)} clips from {root}; {args.model}, {args.split} split, test fold(s) {folds}; writing {out}")
    results = []
    for fold in folds:
        run_dir = out / f"fold-{fold:02d}" if per_fold_dirs else out
        finished = run_dir / "metrics.json"
        if per_fold_dirs and finished.exists() and not args.retrain:
            print(f"fold {fold}: finished earlier, reusing {finished} (--retrain to train again)")
            results.append(json.loads(finished.read_text()))
            continue
        try:
            metrics = train_one(
                run_dir,
                clips,
                pcm,
                args.split,
                fold,
                tcfg,
                replace(default_frontend(args.model), **frontend_given),
                mcu_probe=not args.no_mcu_probe,
                show_progress=not args.quiet,
                split_seed=split_seed,
            )
        except TeacherError as exc:
            print(f"ser-train: {exc}", file=sys.stderr)
            return 2
        results.append(metrics)
        t = metrics["test"]
        print(
            f"fold {fold}: test accuracy {t['accuracy']:.2%}, UA {t['unweighted_accuracy']:.2%}, "
            f"macro-F1 {t['macro_f1']:.2%} ({t['clips']} clips; "
            f"{'last' if metrics['refit'] else 'best'} epoch {metrics['best_epoch']}, {metrics['train_seconds']:.0f} s)"
        )
    first = results[0]
    print(f"{args.model}: {first['params']:,} parameters, {first['macs'] / 1e6:.1f} M MACs per clip")
    for line in budget_lines(first):
        print(line)
    if per_fold_dirs:
        summary = summarise_folds(out, results)
        acc = summary["test"]["accuracy"]
        print(f"{args.split}: accuracy {acc['mean']:.2%} +- {acc['std']:.2%} over {len(results)} folds")
    print(f"report: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
