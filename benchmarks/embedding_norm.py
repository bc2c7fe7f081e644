"""Analysis: per-speaker standardisation of the pooled embedding, with the classifier refitted on it.

    python benchmarks/embedding_norm.py RUN [RUN ...] --data CASIA [--classifier logistic|lda] [--role test|val] [--out DIR]

Why: per-speaker normalisation of the log-mel (``--speaker-norm``) removes a voice's constant
spectral offset, but the voice is still in the network's deeper features. This standardises the
168-value pooled embedding (the input of the final Dense layer) by the statistics of the voice's own
embeddings, as the input normalisation does one level up, and fits a new classifier (``--classifier``:
multinomial logistic regression or shrinkage LDA, each also on the embedding scaled to unit length,
``train.embedding_norm.CLASSIFIERS``) on the standardised embeddings of the training clips. Nothing
is retrained in the network; no test label is used.

A test voice is scored as training scores it: a voice of the training part (10-fold) by the
statistics of its training clips' embeddings; a new voice (LOSO) causally, each clip in the fixed
label-free order (``train.speaker_norm.scoring_order``) standardised by the embeddings of the clips
before it (its first ``PRIOR_CLIPS`` clips by the training part's pooled statistics). ``all clips``
standardises a new voice by all its clips, the scored one included: a ceiling, not an honest figure.

``--role val`` scores the validation clips instead of the test clips: for a run trained with
``--validation-speaker`` that is a training speaker held out of the network's fit and of the
classifier's, so classifiers can be compared there without the test speaker (nested).

Each RUN is a ``ser-train`` run folder (its ``fold-*`` folders for LOSO and 10-fold). Prints one
Markdown table; with ``--out``, writes ``embedding_norm.json`` and ``embedding_norm.md`` there.
Float only (the host's Keras model). ``per-speaker`` is the classifier ``ser-train --embedding-norm``
fits and the board applies (``train.embedding_norm``), measured here on any trained run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from train.corpus import Clip, load_corpus, resolve_root
from train.embedding_norm import CLASSIFIERS, EMBEDDING_LAYER, causal, classifier_input, linear_classifier, moments
from train.frontend import FrontEndConfig
from train.labels import label_index
from train.metrics import mean_std, scores
from train.speaker_norm import run_model_inputs
from train.splits import fold_runs, load_manifest

MEASURES = ("model", "refit", "per-speaker", "all-clips")
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


def score_fold(fold: Path, root: Path, classifier: str = "logistic", role: str = "test") -> dict[str, dict]:
    """Every measure of ``MEASURES`` on one fold's clips of ``role``."""
    import keras

    manifest = load_manifest(fold / "manifest.json")["clips"]
    clips = [Clip.from_manifest(c) for c in manifest]
    roles = np.array([c["role"] for c in manifest])
    speakers = np.array([c.speaker for c in clips])
    labels = np.array([label_index(c.emotion) for c in clips])
    cfg = FrontEndConfig.load(fold / "frontend.json")
    inputs = np.stack(run_model_inputs(fold, cfg, load_corpus(root, clips), list(speakers)))
    model = keras.models.load_model(fold / "model.keras", compile=False)
    both = keras.Model(model.input, [model.get_layer(EMBEDDING_LAYER).output, model.output])  # one pass for both
    emb, probabilities = both.predict(inputs, batch_size=64, verbose=0)
    scored, train = roles == role, roles == "train"
    if not scored.any():
        raise ValueError(f"{fold}: no {role} clips to score")

    def refit(z: np.ndarray) -> np.ndarray:
        z = classifier_input(classifier, z)
        return linear_classifier(classifier).fit(z[train], labels[train]).predict(z[scored])

    predicted = {
        "model": probabilities[scored].argmax(1),
        "refit": refit(emb),
        "per-speaker": refit(per_speaker(emb, speakers, roles, ceiling=False)),
        "all-clips": refit(per_speaker(emb, speakers, roles, ceiling=True)),
    }
    return {k: {key: v for key, v in scores(labels[scored], p).items() if key != "confusion"} for k, p in predicted.items()}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="ser-train run folders")
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="logistic", help="the refitted classifier; default: logistic")
    p.add_argument(
        "--role",
        choices=("test", "val"),
        default="test",
        help="score the test clips, or the validation clips (a --validation-speaker run's held-out speaker); default: test",
    )
    p.add_argument("--out", type=Path, help="write embedding_norm.json and embedding_norm.md here")
    args = p.parse_args(argv)
    root = resolve_root(args.data)
    missing = [str(r) for r in args.runs if not (fold_runs(r)[0] / "model.keras").exists()]
    if missing:
        p.error(f"not a ser-train run folder (no model.keras): {', '.join(missing)}")
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
