"""One training run end to end: split, fit, score on the test part once, and write every artifact.

Run folder (what conversion, emission and the host read):
``model.keras``, ``manifest.json`` (roles train/val/test), ``frontend.json``, ``train_config.json``,
``history.json``, ``metrics.json``, ``test_predictions.json``, ``confusion.png``, ``training.png``,
``summary.md``. Multi-fold splits write one such folder per fold plus a top-level summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from train.corpus import Clip
from train.embedding_norm import PRIOR_CLIPS, fit_and_save, probabilities
from train.fit import TrainConfig, feature_batch, fit_model, standardise
from train.frontend import FrontEndConfig, clip_features
from train.frontend import default_frontend as default_frontend  # re-exported: callers import it with train_one
from train.labels import EMOTIONS, label_index
from train.mcu_probe import ARENA_BUDGET, MACS_BUDGET, MODEL_BUDGET, probe
from train.metrics import mean_std, scores
from train.models import count_macs
from train.plots import plot_confusion, plot_training
from train.speaker_norm import (
    SPEAKER_NORM_FILE,
    Stats,
    by_speaker,
    pooled,
    save_speaker_norm,
    scoring_plan,
)
from train.splits import make_manifest, save_manifest
from train.teacher import check_same_test_clips, distilled_targets, soft_targets, teacher_run


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def train_one(
    out: Path,
    clips: list[Clip],
    pcm: list[np.ndarray],
    split: str,
    test_fold: int,
    tcfg: TrainConfig,
    frontend: FrontEndConfig,
    mcu_probe: bool = True,
    show_progress: bool = True,
    split_seed: int | None = None,
) -> dict:
    """Train on one fold's training part; the test part is touched once, after the model is fixed.

    ``split_seed`` draws the split and the validation part (default: ``tcfg.seed``); fixing it while
    ``tcfg.seed`` varies measures what initialisation and augmentation alone move on one split.
    """
    out.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(
        clips,
        split,
        test_fold,
        seed=tcfg.seed if split_seed is None else split_seed,
        validation=not tcfg.refit,
        validation_by_speaker=tcfg.validation_by_speaker,
    )
    save_manifest(manifest, out / "manifest.json")
    roles = np.array([c["role"] for c in manifest["clips"]])
    labels = np.array([label_index(c.emotion) for c in clips])
    part = {role: np.flatnonzero(roles == role) for role in ("train", "val", "test")}

    def pcm_of(role: str) -> list[np.ndarray]:
        return [pcm[i] for i in part[role]]

    speakers = np.array([c.speaker for c in clips])
    norms: dict[str, list[Stats]] = {}
    if tcfg.speaker_norm:
        if frontend.kind != "logmel":
            raise ValueError(f"--speaker-norm normalises the log-mel; {tcfg.model} takes the raw waveform")
        frontend = frontend.raw  # each speaker's statistics replace the global ones
        raw_train = [clip_features(pcm[i], frontend) for i in part["train"]]
        voices = by_speaker(list(speakers[part["train"]]), raw_train, tcfg.speaker_norm)
        held_out = sorted(set(speakers[part["val"]]) - set(voices))  # a validation speaker outside the fit
        if held_out:
            raw_val = [clip_features(pcm[i], frontend) for i in part["val"]]
            val_voices = by_speaker(list(speakers[part["val"]]), raw_val, tcfg.speaker_norm)
            voices.update({s: val_voices[s] for s in held_out})
        speaker_stats = {s: voice.stats() for s, voice in voices.items()}
        prior = pooled(raw_train, tcfg.speaker_norm)  # training part pooled: a test speaker's first clip
        norms = {role: [speaker_stats[speakers[i]] for i in part[role]] for role in ("train", "val")}
        save_speaker_norm(out / SPEAKER_NORM_FILE, tcfg.speaker_norm, prior, voices)
        frontend.with_speaker_norm(tcfg.speaker_norm, prior.mean, prior.std).save(out / "frontend.json")  # the board's
    else:
        frontend = standardise(frontend, pcm_of("train"))
        frontend.save(out / "frontend.json")
    train_cfg = asdict(tcfg)
    _write_json(out / "train_config.json", train_cfg)

    train_targets = labels[part["train"]]
    teachers = [teacher_run(Path(t), test_fold) for t in tcfg.teachers]
    if teachers:
        for teacher in teachers:
            check_same_test_clips(teacher, manifest)
        soft = np.mean(
            [soft_targets(t, pcm_of("train"), speakers[part["train"]], tcfg.distill_temperature) for t in teachers], axis=0
        )
        train_targets = distilled_targets(train_targets, soft, tcfg.distill_weight)

    started, cpu_started = time.perf_counter(), time.process_time()
    model, history, best_epoch = fit_model(
        frontend,
        tcfg,
        pcm_of("train"),
        train_targets,
        pcm_of("val"),
        labels[part["val"]],
        show_progress,
        norms.get("train"),
        norms.get("val"),
        speakers[part["train"]],
    )
    train_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started  # all threads; steadier than wall time on a shared machine
    model.save(out / "model.keras")
    _write_json(out / "history.json", {"best_epoch": best_epoch, **history})

    # The model is final from here on: score the test part once.
    protocols: dict[str, dict] = {}
    if tcfg.speaker_norm:
        probs, protocols, headline = _score_speaker_norm(
            model,
            frontend,
            tcfg.speaker_norm,
            prior,
            speaker_stats,
            pcm_of("test"),
            speakers[part["test"]],
            labels[part["test"]],
        )
    else:
        probs = model.predict(feature_batch(pcm_of("test"), frontend), verbose=0, batch_size=64)
    if tcfg.embedding_norm:  # the deployed model: the classifier on each voice's standardised embedding
        model_test = scores(labels[part["test"]], probs.argmax(axis=1))
        head = fit_and_save(
            out, model, pcm_of("train"), list(speakers[part["train"]]), labels[part["train"]], tcfg.embedding_classifier
        )
        probs = probabilities(out, model, head, pcm_of("test"), list(speakers[part["test"]]))
    predicted = probs.argmax(axis=1)
    metrics = {
        "model": tcfg.model,
        "split": split,
        "test_fold": test_fold,
        "seed": tcfg.seed,
        "split_seed": manifest["seed"],
        "best_epoch": best_epoch + 1,
        "epochs": tcfg.epochs,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "refit": tcfg.refit,
        "validation_accuracy": float(history["val_accuracy"][best_epoch]) if "val_accuracy" in history else None,
        "teachers": [str(t) for t in teachers],
        "params": int(model.count_params()),
        "macs": count_macs(model),
        "train_clips": len(part["train"]),
        "val_clips": len(part["val"]),
        "test": scores(labels[part["test"]], predicted),
    }
    if tcfg.speaker_norm:
        metrics["speaker_norm"] = {"mode": tcfg.speaker_norm, "headline": headline, "protocols": protocols}
    if tcfg.embedding_norm:
        metrics["embedding_norm"] = {
            "model_test": model_test,
            "prior_clips": PRIOR_CLIPS,
            "classifier": tcfg.embedding_classifier,
        }
    if mcu_probe:
        rng = np.random.default_rng(tcfg.seed)
        rep_idx = rng.choice(part["train"], size=min(64, len(part["train"])), replace=False)
        rep_norms = [speaker_stats[speakers[i]] for i in rep_idx] if tcfg.speaker_norm else None
        metrics["mcu"] = probe(model, feature_batch([pcm[i] for i in rep_idx], frontend, rep_norms))
    _write_test_reports(out, metrics, [clips[i] for i in part["test"]], probs)
    plot_training(history, best_epoch, out / "training.png", _title(metrics))
    return metrics


def _title(metrics: dict) -> str:
    return f"{metrics['model']}, {metrics['split']} split, test fold {metrics['test_fold']}"


def _write_test_reports(out: Path, metrics: dict, test: list[Clip], probs: np.ndarray) -> None:
    """A run folder's ``metrics.json``, ``test_predictions.json``, ``confusion.png`` and ``summary.md``."""
    _write_json(out / "metrics.json", metrics)
    _write_json(
        out / "test_predictions.json",
        [
            {"path": c.path, "true": c.emotion, "predicted": EMOTIONS[p], "probs": [round(float(v), 5) for v in pr]}
            for c, p, pr in zip(test, probs.argmax(axis=1), probs, strict=True)
        ],
    )
    title = f"{_title(metrics)}: test accuracy {metrics['test']['accuracy']:.1%}"
    plot_confusion(metrics["test"]["confusion"], out / "confusion.png", title)
    (out / "summary.md").write_text(run_summary_md(metrics))


def rescore_embedding_classifier(out: Path, root: Path, classifier: str) -> dict:
    """Fit a finished run folder's embedding classifier anew (``classifier``) and score its test part with it, as
    ``ser-train --embedding-norm --embedding-classifier`` would have: the network is untouched, the run's
    reports then speak of the new classifier. Returns the new metrics."""
    import keras

    from train.corpus import read_wav
    from train.embedding_norm import fit_run
    from train.splits import clips_with_role, load_manifest

    model = keras.models.load_model(out / "model.keras", compile=False)
    head = fit_run(out, root, model, classifier)
    test = [Clip.from_manifest(c) for c in clips_with_role(load_manifest(out / "manifest.json"), "test")]
    probs = probabilities(out, model, head, [read_wav(root / c.path) for c in test], [c.speaker for c in test])
    metrics = json.loads((out / "metrics.json").read_text())
    own = metrics.get("embedding_norm", {}).get("model_test", metrics["test"])  # the network's own classifier's
    metrics["test"] = scores(np.array([label_index(c.emotion) for c in test]), probs.argmax(axis=1))
    metrics["embedding_norm"] = {"model_test": own, "prior_clips": head.prior_clips, "classifier": classifier}
    _write_test_reports(out, metrics, test, probs)
    return metrics


def _score_speaker_norm(
    model,
    frontend: FrontEndConfig,
    mode: str,
    prior: Stats,
    known: dict[str, Stats],
    test_pcm: list[np.ndarray],
    speakers: np.ndarray,
    labels: np.ndarray,
) -> tuple[np.ndarray, dict[str, dict], str]:
    """Test clips scored with per-speaker statistics under every protocol of ``scoring_plan``, speaker by speaker.

    Returns the headline probabilities of every test clip, each protocol's scores and the headline's
    name: a voice the model was trained on (``known``) is scored with its training-part statistics
    (``known-voice``, as ``speaker_features`` and a board loaded through ``NORM`` do), a new voice
    causally. The statistics come from the audio alone: the labels are used only to score the predictions.
    """
    from train.speaker_norm import apply

    raw = [clip_features(p, frontend) for p in test_pcm]
    headline = np.zeros((len(raw), len(EMOTIONS)), dtype=np.float32)
    truth: dict[str, list[int]] = {}
    guess: dict[str, list[int]] = {}
    headline_names = set()
    for speaker in sorted(set(speakers)):
        mine = np.flatnonzero(speakers == speaker)
        plans = scoring_plan([raw[i] for i in mine], mode, prior, known=known.get(speaker))
        chosen = "known-voice" if speaker in known else "causal"
        headline_names.add(chosen)
        for plan in plans:
            x = np.stack([apply(raw[mine[j]], st) for j, st in zip(plan.scored, plan.stats, strict=True)])
            probs = model.predict(x, verbose=0, batch_size=64)
            truth.setdefault(plan.name, []).extend(int(labels[mine[j]]) for j in plan.scored)
            guess.setdefault(plan.name, []).extend(int(v) for v in probs.argmax(axis=1))
            if plan.name == chosen:
                headline[mine[plan.scored]] = probs
    protocols = {name: scores(np.array(truth[name]), np.array(guess[name])) for name in truth}
    return headline, protocols, " and ".join(sorted(headline_names, reverse=True))


def budget_lines(metrics: dict) -> list[str]:
    """Human-readable budget verdicts (MACs always; arena and model size when probed)."""
    lines = [_verdict("MACs per clip", metrics["macs"], MACS_BUDGET, "")]
    if "mcu" in metrics:
        lines.append(_verdict("TFLM arena", metrics["mcu"]["tflm_arena_bytes"] / 1024, ARENA_BUDGET / 1024, " KB"))
        lines.append(_verdict("int8 model", metrics["mcu"]["int8_model_bytes"] / 1024, MODEL_BUDGET / 1024, " KB"))
    return lines


def _verdict(what: str, value: float, budget: float, unit: str) -> str:
    ok = "within" if value <= budget else "OVER"
    shown = f"{value:,.1f}" if unit else f"{value:,.0f}"
    return f"- {what}: {shown}{unit} ({ok} budget {budget:,.0f}{unit})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def run_summary_md(m: dict) -> str:
    t = m["test"]
    recall = " | ".join(f"{t['per_class_recall'][e]:.1%}" for e in EMOTIONS)
    kept = (
        f"the last epoch of {m['epochs']} kept, trained on all {m['train_clips']} training clips (refit: no validation part)"
        if m.get("refit")
        else f"best epoch {m['best_epoch']} of {m['epochs']} picked on {m['val_clips']} validation clips carved from "
        "the training part"
    )
    scored = ""
    if "embedding_norm" in m:
        own = m["embedding_norm"]["model_test"]["accuracy"]
        scored = (
            " Scored by the classifier on each voice's standardised embedding (`--embedding-norm`, each test voice "
            f"causally); the network's own classifier scored {own:.2%}."
        )
    return "\n".join(
        [
            f"# {m['model']} - {m['split']} split, test fold {m['test_fold']}",
            "",
            f"Test clips: {t['clips']} (never used for any selection); {kept}.{scored}",
            "",
            "| accuracy | unweighted accuracy | macro-F1 | validation accuracy | params | MACs | train time |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {t['accuracy']:.2%} | {t['unweighted_accuracy']:.2%} | {t['macro_f1']:.2%} | {_pct(m['validation_accuracy'])} "
            f"| {m['params']:,} | {m['macs'] / 1e6:.1f} M | {m['train_seconds']:.0f} s |",
            "",
            "Per-class recall:",
            "",
            "| " + " | ".join(EMOTIONS) + " |",
            "|" + " --- |" * len(EMOTIONS),
            f"| {recall} |",
            "",
            "MCU budget (Cortex-M4, 128 KB RAM):",
            "",
            *budget_lines(m),
            "",
            "![confusion](confusion.png)",
            "",
            "![training](training.png)",
            "",
        ]
    )


REFIT_NO_VALIDATION = (
    "These are refit runs (every training clip trained, the last epoch kept): they have no validation part. "
    "Compare configurations on runs that keep one (without --refit), never on the test folds."
)
LOSO_VALIDATION_CAVEAT = (
    " Under LOSO the validation clips come from the training speakers: this figure measures speaker-dependent"
    " accuracy and overstates the speaker-independent accuracy that the test folds measure."
)


def summarise_folds(out: Path, per_fold: list[dict]) -> dict:
    """Top-level metrics.json and summary.md over the folds of a k-fold or LOSO run."""
    tests = [m["test"] for m in per_fold]
    validated = [m for m in per_fold if m["validation_accuracy"] is not None]
    summary = {
        "model": per_fold[0]["model"],
        "split": per_fold[0]["split"],
        "folds": len(per_fold),
        "params": per_fold[0]["params"],
        "macs": per_fold[0]["macs"],
        "test": mean_std(tests),
        # What every configuration choice may be compared on: the test folds must not steer them.
        "validation": mean_std(validated, keys=("validation_accuracy",)) if validated else None,
        "per_fold": [
            {
                "test_fold": m["test_fold"],
                "accuracy": m["test"]["accuracy"],
                "validation_accuracy": m["validation_accuracy"],
                "best_epoch": m["best_epoch"],
            }
            for m in per_fold
        ],
        "pooled_confusion": np.sum([t["confusion"] for t in tests], axis=0).tolist(),
        "train_seconds": round(sum(m["train_seconds"] for m in per_fold), 1),
    }
    if "speaker_norm" in per_fold[0]:
        every = [m["speaker_norm"]["protocols"] for m in per_fold]
        names = [n for n in every[0] if all(n in protocols for protocols in every)]  # known-voice: known voices only
        summary["speaker_norm"] = {
            "mode": per_fold[0]["speaker_norm"]["mode"],
            "headline": " and ".join(sorted({m["speaker_norm"]["headline"] for m in per_fold}, reverse=True)),
            "protocols": {n: mean_std([protocols[n] for protocols in every]) for n in names},
        }
    _write_json(out / "metrics.json", summary)
    plot_confusion(
        summary["pooled_confusion"], out / "confusion.png", f"{summary['model']}, {summary['split']}: all folds pooled"
    )
    s = summary["test"]
    rows = "\n".join(
        f"| {f['test_fold']} | {f['accuracy']:.2%} | {_pct(f['validation_accuracy'])} | {f['best_epoch']} |"
        for f in summary["per_fold"]
    )
    if summary["validation"] is None:
        validation = REFIT_NO_VALIDATION
    else:
        v = summary["validation"]["validation_accuracy"]
        validation = (
            f"Validation accuracy at the chosen epochs {v['mean']:.2%} +- {v['std']:.2%}: compare configurations on this "
            f"figure, never on the test folds.{LOSO_VALIDATION_CAVEAT if summary['split'] == 'loso' else ''}"
        )
    (out / "summary.md").write_text(
        f"# {summary['model']} - {summary['split']}, {summary['folds']} folds\n\n"
        f"Accuracy {s['accuracy']['mean']:.2%} +- {s['accuracy']['std']:.2%}, "
        f"unweighted accuracy {s['unweighted_accuracy']['mean']:.2%} +- {s['unweighted_accuracy']['std']:.2%}, "
        f"macro-F1 {s['macro_f1']['mean']:.2%} +- {s['macro_f1']['std']:.2%} (mean +- std over folds).\n\n"
        f"{validation}\n\n"
        f"| test fold | accuracy | validation accuracy | best epoch |\n| --- | --- | --- | --- |\n{rows}\n\n"
        "![confusion](confusion.png)\n"
    )
    return summary
