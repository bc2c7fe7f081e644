"""Per-speaker standardisation of the pooled embedding, and a classifier fitted on it.

    python -m train.embedding_norm RUN [RUN ...] --data CASIA    (fits the head of finished runs)

Why: per-speaker normalisation of the log-mel (``train.speaker_norm``) removes a voice's constant
spectral offset, but the voice is still in the network's deeper features: on leave-one-speaker-out a
new voice's clips crowd into one or two classes. Standardising the pooled embedding (the output of
global average pooling, the input of the final Dense layer) by the statistics of the voice's own
embeddings removes what is constant about the voice one level up, with no label, and a linear
classifier fitted on standardised embeddings of the training clips reads it: multinomial logistic
regression, or linear discriminant analysis with a shrunk shared covariance, either optionally on
the standardised embedding scaled to unit length (``CLASSIFIER_HELP``; all give a weight matrix and a
bias, so the board's stage is the same). docs/accuracy.md has the measurements.

On the board (``firmware/app/ser_embedding_norm.h``) the int8 model ends at the embedding; the board
keeps each voice's sums of its int8 embeddings and applies the classifier itself. A voice is scored
causally: each clip by the embeddings of the clips before it in the fixed label-free order of
``train.speaker_norm.scoring_order``, its first ``PRIOR_CLIPS`` clips by the training part's pooled
statistics (one clip has no spread). Training fits the classifier with each training voice
standardised by all its training clips, its steady state.

A run with ``embedding_norm.json`` (``ser-train --embedding-norm``, or this module on a finished run)
is converted to a model that ends at the embedding, with the classifier in its metadata.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from train.speaker_norm import scoring_order

if TYPE_CHECKING:
    import keras

EMBEDDING_LAYER = "gap"  # the pooled embedding (train/models.py)
EMBEDDING_NORM_FILE = "embedding_norm.json"  # in a run folder: the classifier and the prior
PRIOR_CLIPS = 2  # a voice's first clips are standardised by the prior: one clip has no spread
C_REGULARISATION = 1.0  # the logistic regression's inverse L2 strength (scikit-learn's default)
# The linear classifiers fit_head knows: logistic regression, and LDA with a shrunk covariance (a few hundred clips per
# class against 96-168 values; by default the Ledoit-Wolf estimate of the shrinkage). A "unit-" classifier reads the
# standardised embedding divided by its length: only its direction counts, so a clip whose values all swing wide (a
# loud or unusual clip of a voice) does not push its logits to the extremes. A classifier is named "KIND[:VALUE]",
# VALUE setting its one strength (``parse_classifier``), e.g. "unit-logistic:0.03".
CLASSIFIERS = ("logistic", "lda", "unit-logistic", "unit-lda")
CLASSIFIER_HELP = (
    "KIND[:VALUE], KIND one of " + ", ".join(CLASSIFIERS) + " (LDA: linear discriminant analysis with a shrunk "
    "covariance; unit-: on the standardised embedding scaled to length 1); VALUE: logistic regression's C, its inverse "
    f"L2 strength (default {C_REGULARISATION:g}), or LDA's shrinkage in [0, 1] (default: the Ledoit-Wolf estimate)"
)


@dataclass(frozen=True, eq=False)
class Head:
    """The classifier on standardised embeddings and the prior a new voice starts from.

    Training keeps it in the float embedding's units; ``in_int8_steps`` gives what the board holds
    (the prior in steps of the int8 output; the weights read standardised values, which no affine
    change of units moves).
    """

    weights: np.ndarray  # (classes, dim) float32
    bias: np.ndarray  # (classes,)
    prior_mean: np.ndarray  # (dim,)
    prior_std: np.ndarray  # (dim,)
    prior_clips: int = PRIOR_CLIPS
    unit_length: bool = False  # the classifier reads the standardised embedding scaled to unit length

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    @property
    def classes(self) -> int:
        return int(self.weights.shape[0])

    def to_json(self, compact: bool = False) -> dict:
        """Plain lists, or (``compact``: in a model's metadata, which the board's flash carries) each array as
        base64 of its little-endian float32 bytes, a quarter of the size and exact."""
        arrays = {"weights": self.weights, "bias": self.bias, "prior_mean": self.prior_mean, "prior_std": self.prior_std}
        out = {
            "layer": EMBEDDING_LAYER,
            "prior_clips": self.prior_clips,
            "unit_length": self.unit_length,
            "classes": self.classes,
            "dim": self.dim,
        }
        if compact:
            return out | {k: base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() for k, v in arrays.items()}
        return out | {k: v.tolist() for k, v in arrays.items()}

    @classmethod
    def from_json(cls, data: dict) -> Head:
        def array(key: str) -> np.ndarray:
            value = data[key]
            if isinstance(value, str):
                return np.frombuffer(base64.b64decode(value), "<f4").astype(np.float32)
            return np.asarray(value, np.float32)

        weights, bias, mean, std = (array(k) for k in ("weights", "bias", "prior_mean", "prior_std"))
        if "classes" in data and "dim" in data and weights.size == data["classes"] * data["dim"]:
            weights = weights.reshape(data["classes"], data["dim"])
        dim = weights.shape[-1]
        if weights.ndim != 2 or bias.shape != (weights.shape[0],) or mean.shape != (dim,) or std.shape != (dim,):
            raise ValueError("embedding_norm: weights (classes, dim), bias (classes,), prior_mean and prior_std (dim,)")
        return cls(weights, bias, mean, std, int(data.get("prior_clips", PRIOR_CLIPS)), bool(data.get("unit_length", False)))

    def in_int8_steps(self, scale: float, zero_point: int) -> Head:
        """The same head for an int8 embedding ``q`` with ``value = scale * (q - zero_point)``."""
        mean = (self.prior_mean / np.float32(scale) + np.float32(zero_point)).astype(np.float32)
        std = (self.prior_std / np.float32(scale)).astype(np.float32)
        return Head(self.weights, self.bias, mean, std, self.prior_clips, self.unit_length)

    def logits(self, z: np.ndarray) -> np.ndarray:
        """The logits of standardised embeddings ``z`` (rows)."""
        return (to_unit_length(z) if self.unit_length else z) @ self.weights.T + self.bias


def to_unit_length(z: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a row of zeros stays zeros, as on the board)."""
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of rows ``x`` (a constant column keeps std 1)."""
    mean, std = x.mean(0), x.std(0)
    return mean, np.where(std > 0, std, 1.0)


def voices_in_order(speakers: Sequence[str]) -> list[np.ndarray]:
    """Each voice's clip indices in the order a board hears them (``scoring_order``: no label, no path)."""
    speakers = np.asarray(speakers)
    out = []
    for speaker in dict.fromkeys(speakers.tolist()):
        mine = np.flatnonzero(speakers == speaker)
        out.append(mine[scoring_order(len(mine))])
    return out


def causal(
    emb: np.ndarray, speakers: Sequence[str], prior: tuple[np.ndarray, np.ndarray], prior_clips: int = PRIOR_CLIPS
) -> np.ndarray:
    """Every clip's embedding standardised by its voice's earlier clips (in board order); the first
    ``prior_clips`` of a voice by ``prior``. Float: the host's twin of the board's stage."""
    out = np.empty_like(emb)
    for order in voices_in_order(speakers):
        for k, i in enumerate(order):
            mean, std = moments(emb[order[:k]]) if k >= prior_clips else prior
            out[i] = (emb[i] - mean) / std
    return out


def by_own_voice(emb: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Every clip's embedding standardised by all of its voice's clips here (a training voice's steady state)."""
    speakers = np.asarray(speakers)
    out = np.empty_like(emb)
    for speaker in set(speakers.tolist()):
        mine = speakers == speaker
        mean, std = moments(emb[mine])
        out[mine] = (emb[mine] - mean) / std
    return out


def parse_classifier(spec: str) -> tuple[str, float | None]:
    """A classifier's name ``KIND[:VALUE]`` (``CLASSIFIER_HELP``) as its kind and its strength (None: the default)."""
    kind, colon, text = spec.partition(":")
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown embedding classifier {kind!r}; choose one of {', '.join(CLASSIFIERS)}, optionally :VALUE")
    if not colon:
        return kind, None
    lda = kind.removeprefix("unit-") == "lda"
    wanted = "a shrinkage from 0 to 1" if lda else "a C above 0"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"embedding classifier {spec!r}: {text!r} is not a number; {kind} takes {wanted}") from None
    if not (0.0 <= value <= 1.0 if lda else 0.0 < value < float("inf")):
        raise ValueError(f"embedding classifier {spec!r}: {kind} takes {wanted}")
    return kind, value


def classifier_arg(spec: str) -> str:
    """argparse ``type`` for a classifier's name: refused with ``parse_classifier``'s message."""
    try:
        parse_classifier(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


def linear_classifier(spec: str):
    """An unfitted scikit-learn classifier named ``KIND[:VALUE]`` (for a "unit-" kind, fit it on ``classifier_input``)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    kind, value = parse_classifier(spec)
    if kind.removeprefix("unit-") == "lda":
        return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto" if value is None else value)
    return LogisticRegression(C=C_REGULARISATION if value is None else value, max_iter=5000)


def classifier_input(kind: str, z: np.ndarray) -> np.ndarray:
    """What a classifier of ``kind`` reads of standardised embeddings ``z``."""
    return to_unit_length(z) if kind.startswith("unit-") else z


def fit_head(
    emb: np.ndarray, labels: np.ndarray, speakers: Sequence[str], classifier: str = "logistic", prior_clips: int = PRIOR_CLIPS
) -> Head:
    """The classifier (``KIND[:VALUE]``, ``CLASSIFIER_HELP``) on the training clips' embeddings, each voice
    standardised by its own clips. Either gives logits ``weights @ z + bias`` (LDA's are its log posteriors up to a constant)."""
    fit = linear_classifier(classifier).fit(classifier_input(classifier, by_own_voice(emb, speakers)), labels)
    if list(fit.classes_) != list(range(fit.coef_.shape[0])):
        raise ValueError("every emotion must have training clips to fit the embedding classifier")
    mean, std = moments(emb)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return Head(f32(fit.coef_), f32(fit.intercept_), f32(mean), f32(std), prior_clips, classifier.startswith("unit-"))


def run_classifier(run: Path) -> str:
    """The classifier (``KIND[:VALUE]``) a finished ``--embedding-norm`` run fitted, as its ``metrics.json`` records it."""
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    return metrics.get("embedding_norm", {}).get("classifier") or "logistic"


def save_head(path: Path, head: Head) -> None:
    Path(path).write_text(json.dumps(head.to_json()) + "\n")


def load_head(path: Path) -> Head:
    return Head.from_json(json.loads(Path(path).read_text()))


def embedding_model(model: keras.Model) -> keras.Model:
    """The network up to its pooled embedding."""
    import keras

    return keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _embeddings(run: Path, model: keras.Model, pcms: Sequence[np.ndarray], speakers: Sequence[str]) -> np.ndarray:
    """Pooled embeddings of clips as the run's model meets them (``run_model_inputs``: the run's front end, and
    for a speaker-normalised run its training voices' statistics, any other voice causal)."""
    from train.frontend import FrontEndConfig
    from train.speaker_norm import run_model_inputs

    inputs = np.stack(run_model_inputs(run, FrontEndConfig.load(run / "frontend.json"), pcms, list(speakers)))
    return embedding_model(model).predict(inputs, batch_size=64, verbose=0)


def fit_and_save(
    run: Path,
    model: keras.Model,
    pcms: Sequence[np.ndarray],
    speakers: Sequence[str],
    labels: np.ndarray,
    classifier: str = "logistic",
) -> Head:
    """Fit the classifier on a run's training clips and save it there (``embedding_norm.json``)."""
    head = fit_head(_embeddings(run, model, pcms, speakers), labels, speakers, classifier)
    save_head(run / EMBEDDING_NORM_FILE, head)
    return head


def probabilities(run: Path, model: keras.Model, head: Head, pcms: Sequence[np.ndarray], speakers: Sequence[str]) -> np.ndarray:
    """Class probabilities of clips, each voice scored causally in board order (float: the host's twin of the board)."""
    logits = head.logits(
        causal(_embeddings(run, model, pcms, speakers), speakers, (head.prior_mean, head.prior_std), head.prior_clips)
    )
    return softmax(logits)


def training_part(run: Path, root: Path) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """A finished run folder's training clips, what its classifier is fitted on: audio, speakers, label indices."""
    from train.corpus import read_wav
    from train.labels import label_index
    from train.splits import clips_with_role, load_manifest

    train = clips_with_role(load_manifest(run / "manifest.json"), "train")
    pcms = [read_wav(root / c["path"]) for c in train]
    return pcms, [c["speaker"] for c in train], np.array([label_index(c["emotion"]) for c in train])


def fit_run(run: Path, root: Path, model: keras.Model, classifier: str = "logistic") -> Head:
    """Fit and save the classifier of one finished run folder (one fold) and its ``model``, as
    ``ser-train --embedding-norm`` does."""
    pcms, speakers, labels = training_part(run, root)
    return fit_and_save(run, model, pcms, speakers, labels, classifier)


def main(argv: list[str] | None = None) -> int:
    from train.corpus import resolve_root
    from train.run import rescore_embedding_classifier, summarise_folds
    from train.splits import fold_runs
    from train.tf_env import quiet_tensorflow

    p = argparse.ArgumentParser(
        prog="python -m train.embedding_norm",
        description="Fit the per-speaker embedding classifier of finished ser-train runs (each fold): writes "
        "embedding_norm.json beside model.keras, so ser-convert makes a model that ends at the embedding, and "
        "scores the test part with it (metrics.json, test_predictions.json, summary.md, as ser-train --embedding-norm).",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="ser-train run folders")
    p.add_argument("--data", help="CASIA root; default $CASIA_ROOT")
    p.add_argument(
        "--classifier",
        type=classifier_arg,
        metavar="KIND[:VALUE]",
        default="logistic",
        help=f"the linear classifier: {CLASSIFIER_HELP}; default: logistic",
    )
    args = p.parse_args(argv)
    quiet_tensorflow()
    root = resolve_root(args.data)
    missing = [str(f) for run in args.runs for f in fold_runs(run) if not (f / "metrics.json").exists()]
    if missing:
        p.error(f"not a finished ser-train run (no metrics.json): {', '.join(missing)}")
    for run in args.runs:
        folds, per_fold = fold_runs(run), []
        for fold in folds:
            per_fold.append(rescore_embedding_classifier(fold, root, args.classifier))
            print(f"{fold}: {EMBEDDING_NORM_FILE} ({args.classifier}), test accuracy {per_fold[-1]['test']['accuracy']:.2%}")
        if folds != [run]:
            acc = summarise_folds(run, per_fold)["test"]["accuracy"]
            print(f"{run}: test accuracy {acc['mean']:.2%} +- {acc['std']:.2%} over {len(per_fold)} folds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
