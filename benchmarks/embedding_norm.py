"""Analysis: per-speaker standardisation of the pooled embedding, with the classifier refitted on it.

    python benchmarks/embedding_norm.py RUN [RUN ...] --data CASIA [--classifier KIND[:VALUE] | --sweep]
                                        [--role test|val] [--out DIR]

Why: per-speaker normalisation of the log-mel (``--speaker-norm``) removes a voice's constant
spectral offset, but the voice is still in the network's deeper features. This standardises the
168-value pooled embedding (the input of the final Dense layer) by the statistics of the voice's own
embeddings, as the input normalisation does one level up, and fits a new classifier (``--classifier``:
multinomial logistic regression or shrinkage LDA, each also on the embedding scaled to unit length,
``train.embedding_norm.CLASSIFIER_HELP``) on the standardised embeddings of the training clips. Nothing
is retrained in the network; no test label is used.

A test voice is scored as training scores it: a voice of the training part (10-fold) by the
statistics of its training clips' embeddings; a new voice (LOSO) causally, each clip in the fixed
label-free order (``train.speaker_norm.scoring_order``) standardised by the embeddings of the clips
before it (its first ``PRIOR_CLIPS`` clips by the training part's pooled statistics). ``all clips``
standardises a new voice by all its clips, the scored one included: a ceiling, not an honest figure.

``--role val`` scores the validation clips instead of the test clips: for a run trained with
``--validation-speaker`` that is a training speaker held out of the network's fit and of the
classifier's, so classifiers can be compared there without the test speaker (nested).
``--sweep`` scores, instead of one classifier's four measures, the ``per-speaker`` measure of every
classifier kind over a grid of its strength (``SWEEP``), per run and averaged over the runs given
(seeds): with ``--role val`` the highest mean is the classifier chosen without a test voice.

Each RUN is a ``ser-train`` run folder (its ``fold-*`` folders for LOSO and 10-fold). Prints one
Markdown table; with ``--out``, writes ``embedding_norm.json`` and ``embedding_norm.md`` there.
Float only (the host's Keras model). ``per-speaker`` is the classifier ``ser-train --embedding-norm``
fits and the board applies (``train.embedding_norm``), measured here on any trained run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.corpus import Clip, load_corpus, resolve_root
from train.embedding_norm import (
    CLASSIFIER_HELP,
    CLASSIFIERS,
    EMBEDDING_LAYER,
    causal,
    classifier_arg,
    classifier_input,
    linear_classifier,
    moments,
)
from train.frontend import FrontEndConfig
from train.labels import label_index
from train.metrics import mean_std, scores
from train.speaker_norm import run_model_inputs
from train.splits import fold_runs, load_manifest

MEASURES = ("model", "refit", "per-speaker", "all-clips")
# --sweep: every classifier kind at its default and a grid of strengths (logistic C; LDA shrinkage)
SWEEP = [
    f"{kind}{value}"
    for kind in CLASSIFIERS
    for value in (
        ("", ":0.01", ":0.03", ":0.1", ":0.2", ":0.3", ":0.5", ":0.7", ":0.9")
        if kind.endswith("lda")
        else ("", ":0.01", ":0.03", ":0.1", ":0.3", ":3", ":10", ":30", ":100")
    )
]
DESCRIBED = {
    "model": "the trained model as it is",
    "refit": "classifier refitted on the raw embeddings (control)",
    "per-speaker": "classifier refitted, embeddings standardised per speaker (causal for a new voice)",
    "all-clips": "the same, a new voice by all its clips (ceiling, not honest)",
}


def per_speaker(emb: np.ndarray, speakers: np.ndarray, roles: np.ndarray, ceiling: bool) -> np.ndarray:
    """Each clip's embedding standardised by its voice's statistics, as this analysis scores it (module doc): a voice
    with training clips by theirs, any other voice (a test or held-out validation speaker) as a new one."""
    out = np.empty_like(emb)
    training = roles == "train"
    new = np.zeros(len(emb), bool)
    for speaker in dict.fromkeys(speakers):
        mine = speakers == speaker
        heard = mine & training
        if not heard.any():
            new |= mine
            continue
        mean, std = moments(emb[heard])  # a voice of the training part: its training clips' statistics, for all its clips
        out[mine] = (emb[mine] - mean) / std
    rows = np.flatnonzero(new)
    if ceiling:
        for speaker in set(speakers[rows]):
            mine = rows[speakers[rows] == speaker]
            mean, std = moments(emb[mine])
            out[mine] = (emb[mine] - mean) / std
    else:
        out[rows] = causal(emb[rows], list(speakers[rows]), moments(emb[training]))
    return out


@dataclass(frozen=True)
class FoldEmbeddings:
    """One fold's clips as its network meets them: pooled embeddings and the network's own probabilities."""

    fold: Path
    emb: np.ndarray
    probabilities: np.ndarray
    roles: np.ndarray
    speakers: np.ndarray
    labels: np.ndarray

    def scored(self, role: str) -> np.ndarray:
        scored = self.roles == role
        if not scored.any():
            raise ValueError(f"{self.fold}: no {role} clips to score")
        return scored

    def refit(self, classifier: str, z: np.ndarray, role: str) -> np.ndarray:
        """Predictions for the clips of ``role`` by ``classifier`` fitted on the training clips' ``z``."""
        train, z = self.roles == "train", classifier_input(classifier, z)
        return linear_classifier(classifier).fit(z[train], self.labels[train]).predict(z[self.scored(role)])


def fold_embeddings(fold: Path, root: Path) -> FoldEmbeddings:
    import keras

    manifest = load_manifest(fold / "manifest.json")["clips"]
    clips = [Clip.from_manifest(c) for c in manifest]
    speakers = np.array([c.speaker for c in clips])
    cfg = FrontEndConfig.load(fold / "frontend.json")
    inputs = np.stack(run_model_inputs(fold, cfg, load_corpus(root, clips), list(speakers)))
    model = keras.models.load_model(fold / "model.keras", compile=False)
    both = keras.Model(model.input, [model.get_layer(EMBEDDING_LAYER).output, model.output])  # one pass for both
    emb, probabilities = both.predict(inputs, batch_size=64, verbose=0)
    roles = np.array([c["role"] for c in manifest])
    return FoldEmbeddings(fold, emb, probabilities, roles, speakers, np.array([label_index(c.emotion) for c in clips]))


def _scores(labels: np.ndarray, predicted: np.ndarray) -> dict:
    return {key: v for key, v in scores(labels, predicted).items() if key != "confusion"}


def score_fold(fold: Path, root: Path, classifier: str = "logistic", role: str = "test") -> dict[str, dict]:
    """Every measure of ``MEASURES`` on one fold's clips of ``role``."""
    f = fold_embeddings(fold, root)
    scored = f.scored(role)
    predicted = {
        "model": f.probabilities[scored].argmax(1),
        "refit": f.refit(classifier, f.emb, role),
        "per-speaker": f.refit(classifier, per_speaker(f.emb, f.speakers, f.roles, ceiling=False), role),
        "all-clips": f.refit(classifier, per_speaker(f.emb, f.speakers, f.roles, ceiling=True), role),
    }
    return {k: _scores(f.labels[scored], p) for k, p in predicted.items()}


def sweep_fold(fold: Path, root: Path, classifiers: list[str], role: str) -> dict[str, dict]:
    """The ``per-speaker`` measure of every classifier of ``classifiers`` on one fold's clips of ``role``."""
    f = fold_embeddings(fold, root)
    z, truth = per_speaker(f.emb, f.speakers, f.roles, ceiling=False), f.labels[f.scored(role)]
    return {c: _scores(truth, f.refit(c, z, role)) for c in classifiers}


def summarise(run: Path, root: Path, classifier: str = "logistic", role: str = "test") -> dict:
    """Each fold's scores and their mean +- std, per measure."""
    folds = {f.name if f != run else "run": score_fold(f, root, classifier, role) for f in fold_runs(run)}
    return {
        "run": str(run),
        "folds": folds,
        "mean": {m: mean_std([f[m] for f in folds.values()]) for m in MEASURES},
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| run | measure | accuracy | macro-F1 | accuracy per fold |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for m in MEASURES:
            acc, f1 = r["mean"][m]["accuracy"], r["mean"][m]["macro_f1"]
            each = ", ".join(f"{f[m]['accuracy']:.1%}" for f in r["folds"].values())
            lines.append(
                f"| {Path(r['run']).name} | {m}: {DESCRIBED[m]} | {acc['mean']:.2%} +- {acc['std']:.2%} "
                f"| {f1['mean']:.2%} +- {f1['std']:.2%} | {each} |"
            )
    return "\n".join(lines) + "\n"


def sweep(runs: list[Path], root: Path, role: str) -> dict:
    """Every classifier of ``SWEEP`` on every run (``per-speaker``): accuracy per fold, per run and over the runs,
    and the best by that mean (a tie goes to the one listed first)."""
    per_run = {}
    for run in runs:
        folds = [sweep_fold(f, root, SWEEP, role) for f in fold_runs(run)]
        per_run[run.name] = {c: [f[c]["accuracy"] for f in folds] for c in SWEEP}
    mean = {c: float(np.mean([np.mean(r[c]) for r in per_run.values()])) for c in SWEEP}
    return {"role": role, "runs": per_run, "mean": mean, "best": max(SWEEP, key=lambda c: mean[c])}


def sweep_markdown(result: dict) -> str:
    runs = list(result["runs"])
    lines = [
        "| classifier | " + " | ".join(runs) + " | mean over runs |",
        "| --- | " + " | ".join("---" for _ in runs) + " | --- |",
    ]
    for c in SWEEP:
        each = [f"{np.mean(result['runs'][r][c]):.2%}" for r in runs]
        mean = f"{result['mean'][c]:.2%}"
        name, mean = (f"**{c}**", f"**{mean}**") if c == result["best"] else (c, mean)
        lines.append(f"| {name} | " + " | ".join(each) + f" | {mean} |")
    return "\n".join(lines) + f"\n\nhighest mean ({result['role']} clips, per-speaker, causal): {result['best']}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="ser-train run folders")
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument(
        "--classifier",
        type=classifier_arg,
        metavar="KIND[:VALUE]",
        default="logistic",
        help=f"the refitted classifier: {CLASSIFIER_HELP}; default: logistic",
    )
    p.add_argument(
        "--role",
        choices=("test", "val"),
        default="test",
        help="score the test clips, or the validation clips (a --validation-speaker run's held-out speaker); default: test",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="instead: the per-speaker accuracy of every classifier kind over a grid of strengths, each run and their "
        "mean (with --role val on --validation-speaker runs of several seeds: the classifier chosen without the test voice)",
    )
    p.add_argument("--out", type=Path, help="write embedding_norm.json and embedding_norm.md here")
    args = p.parse_args(argv)
    root = resolve_root(args.data)
    missing = [str(r) for r in args.runs if not (fold_runs(r)[0] / "model.keras").exists()]
    if missing:
        p.error(f"not a ser-train run folder (no model.keras): {', '.join(missing)}")
    if args.sweep:
        results = sweep(args.runs, root, args.role)
        table = sweep_markdown(results)
    else:
        results = [summarise(run, root, args.classifier, args.role) for run in args.runs]
        table = markdown(results)
    print(table, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "embedding_norm.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "embedding_norm.md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
