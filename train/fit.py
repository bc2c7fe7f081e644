"""Fit one model on one split's training part; every selection decision sees validation clips only."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from train.adversary import ramp, speaker_targets, with_speaker_head
from train.augment import AugmentConfig, augment_pcm, spec_augment, vtlp
from train.frontend import FrontEndConfig, clip_features, clip_log_mel, features
from train.labels import NUM_CLASSES
from train.models import BUILDERS
from train.speaker_norm import Stats, apply
from train.standardised_head import with_standardised_head


@dataclass(frozen=True)
class TrainConfig:
    model: str
    epochs: int = 80  # 50 cost SpectrogramResNet 6 points on the paper split (issue 3)
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_epochs: int = 3
    weight_decay: float = 1e-2  # AdamW, decoupled
    l2: float = 0.0  # kernel L2 in the layers
    dropout: float = 0.2
    label_smoothing: float = 0.1
    seed: int = 0
    # Per-speaker normalisation (train.speaker_norm): "scalar" or "bins" replaces the global log-mel mean/std by each
    # speaker's own; None keeps the global one.
    speaker_norm: str | None = None
    # Per-speaker standardisation of the pooled embedding (train.embedding_norm): after training, fit a classifier on
    # each voice's standardised embeddings; the deployed model ends at the embedding and the board applies it.
    embedding_norm: bool = False
    embedding_classifier: str = "logistic"  # with embedding_norm: the classifier fitted (train.embedding_norm.CLASSIFIERS)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    teachers: tuple[str, ...] = ()  # run folders whose mean soft targets are mixed into the labels (train.teacher)
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    mixup_alpha: float = 0.0  # > 0: mix each training input and target with another clip's, share ~ Beta(alpha, alpha)
    average_decay: float = 0.0  # > 0: validate and keep an exponential average of the weights, updated each epoch
    # Refit: train on the whole training part, validation part included, and keep the last epoch (the schedule is
    # fixed in advance, so nothing is selected). Compared with keeping the best validation epoch by a nested
    # split of the validation clips (README: Results).
    refit: bool = False
    # LOSO only: the validation part is one whole training speaker, held out of the fit (train.splits.make_manifest),
    # instead of a 10 % sample of the training speakers' clips.
    validation_by_speaker: bool = False
    # > 0: a speaker head learns the training speaker from the pooled embedding through a gradient reversed and
    # scaled by up to this weight (train.adversary), so the convolutions learn to hide who speaks. 0: off.
    speaker_adversarial: float = 0.0
    # > 0: a second emotion head, in training only, reads the pooled embedding standardised by each speaker's clips
    # in the batch; its loss joins the network's own times this weight (train.standardised_head). 0: off.
    standardised_head: float = 0.0


def make_deterministic(seed: int) -> None:
    """Same seed, same weights: seeds Python/NumPy/TF and forces deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def standardise(cfg: FrontEndConfig, train_pcm: list[np.ndarray]) -> FrontEndConfig:
    """Log-mel mean and std from the training part only (waveform configs pass through)."""
    if cfg.kind != "logmel":
        return cfg
    values = np.concatenate([clip_log_mel(p, cfg).ravel() for p in train_pcm])
    return cfg.with_standardisation(float(values.mean()), float(values.std()))


def feature_batch(pcms: list[np.ndarray], cfg: FrontEndConfig, norms: list[Stats] | None = None) -> np.ndarray:
    """Un-augmented model inputs of many clips (evaluation); ``norms``: each clip's speaker statistics
    (``cfg`` then unstandardised)."""
    if norms is None:
        return np.stack([clip_features(p, cfg) for p in pcms])
    return np.stack([apply(clip_features(p, cfg), n) for p, n in zip(pcms, norms, strict=True)])


class AugmentedClips:
    """Training batches, re-augmented every epoch, built a whole epoch at a time.

    ``labels`` are class indices, or one target distribution per clip (distillation). ``norms``: each
    clip's speaker statistics (train.speaker_norm), applied after the front end (``cfg`` then
    unstandardised) and before the SpecAugment masks.

    Each batch's clips and random draws follow from (seed, epoch, batch) alone, so an epoch can be
    built in any thread, ahead of time, and the same seed always gives the same batches. Whole-epoch
    NumPy arrays go to ``model.fit``: a ``keras.utils.PyDataset`` (a generator bridge into tf.data)
    added about half again to the CPU time of the train step, which is most of a run's time.
    """

    def __init__(self, pcms, labels, cfg: FrontEndConfig, tcfg: TrainConfig, norms: list[Stats] | None = None) -> None:
        self.pcms, self.cfg, self.tcfg, self.norms = pcms, cfg, tcfg, norms
        labels = np.asarray(labels)
        self.targets = labels.astype(np.float32) if labels.ndim == 2 else keras.utils.to_categorical(labels, NUM_CLASSES)

    def __len__(self) -> int:
        return math.ceil(len(self.pcms) / self.tcfg.batch_size)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``: inputs and target distributions."""
        order = np.random.default_rng([self.tcfg.seed, epoch]).permutation(len(self.pcms))
        idx = order[index * self.tcfg.batch_size : (index + 1) * self.tcfg.batch_size]
        rng = np.random.default_rng([self.tcfg.seed, epoch, index])
        aug = self.tcfg.augment
        xs = []
        for i in idx:
            if aug is None:
                feat = clip_features(self.pcms[i], self.cfg)
                xs.append(feat if self.norms is None else apply(feat, self.norms[i]))
                continue
            feat = features(augment_pcm(self.pcms[i], self.cfg, aug, rng), self.cfg)
            if self.cfg.kind == "logmel":
                feat = vtlp(feat, self.cfg, aug, rng)
            if self.norms is not None:
                feat = apply(feat, self.norms[i])
            xs.append(spec_augment(feat, aug, rng) if self.cfg.kind == "logmel" else feat)
        x, y = np.stack(xs), self.targets[idx]
        return mixup(x, y, self.tcfg.mixup_alpha, rng) if self.tcfg.mixup_alpha > 0 else (x, y)

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All batches of ``epoch`` in training order, concatenated (fit them with shuffle=False)."""
        xs, ys = zip(*(self.batch(epoch, b) for b in range(len(self))), strict=True)
        return np.concatenate(xs), np.concatenate(ys)

    def epochs(self, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Epochs 0 .. count-1; the next is built in a thread while the caller trains (the C front end runs without the GIL)."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.epoch, 0)
            for e in range(count):
                ready = pending.result()
                if e + 1 < count:
                    pending = pool.submit(self.epoch, e + 1)
                yield ready


def mixup(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mixes each clip with another clip of the batch (inputs and targets alike).

    The clip's own share is ``max(l, 1 - l)`` with ``l ~ Beta(alpha, alpha)``, so it stays the
    dominant one. Both front ends are mixed after feature extraction: for the waveform that is
    mixing the sounds; for the log-mel it is the usual mix of spectrograms.
    """
    share = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    share = np.maximum(share, 1 - share)
    partner = rng.permutation(len(x))
    sx = share.reshape((-1,) + (1,) * (x.ndim - 1))
    sy = share[:, None]
    return sx * x + (1 - sx) * x[partner], sy * y + (1 - sy) * y[partner]


class KeepBest:
    """Keeps the weights of the epoch with the best validation accuracy (ties: lower validation loss)."""

    def __init__(self) -> None:
        self.best_key = (-1.0, 0.0)
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None

    def see(self, epoch: int, val_accuracy: float, val_loss: float, weights: list[np.ndarray]) -> None:
        key = (val_accuracy, -val_loss)
        if key > self.best_key:
            self.best_key, self.best_epoch, self.best_weights = key, epoch, weights


class WeightAverage:
    """Exponential moving average of the weights, one update per epoch.

    The average of the last few epochs of a cosine schedule sits nearer the middle of a flat
    minimum than any single epoch, and its validation accuracy moves less from epoch to epoch.
    Batch-norm statistics are averaged like the weights.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.weights: list[np.ndarray] | None = None

    def update(self, weights: list[np.ndarray]) -> list[np.ndarray]:
        if self.weights is None:
            self.weights = [w.copy() for w in weights]
        else:
            self.weights = [self.decay * a + (1 - self.decay) * w for a, w in zip(self.weights, weights, strict=True)]
        return self.weights


def _schedule(tcfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    total = tcfg.epochs * steps_per_epoch
    warmup = min(tcfg.warmup_epochs * steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=tcfg.learning_rate / 10,
        decay_steps=max(1, total - warmup),
        warmup_target=tcfg.learning_rate,
        warmup_steps=warmup,
        alpha=0.01,
    )


def fit_model(
    cfg: FrontEndConfig,
    tcfg: TrainConfig,
    train_pcm: list[np.ndarray],
    train_targets: np.ndarray,
    val_pcm: list[np.ndarray],
    val_labels: np.ndarray,
    show_progress: bool = True,
    train_norms: list[Stats] | None = None,
    val_norms: list[Stats] | None = None,
    train_speakers: np.ndarray | None = None,
) -> tuple[keras.Model, dict[str, list[float]], int]:
    """Train; returns the model at its best validation epoch, the history and that epoch (0-based).

    ``train_norms``/``val_norms``: each clip's speaker statistics (per-speaker normalisation).
    ``train_speakers``: each training clip's speaker, needed by ``tcfg.speaker_adversarial`` and
    ``tcfg.standardised_head``.

    ``train_targets``: class indices, or one target distribution per clip (distillation).
    No validation clips (a refit run): nothing is validated and the last epoch is kept.
    """
    make_deterministic(tcfg.seed)
    model = BUILDERS[tcfg.model](cfg.input_shape, dropout=tcfg.dropout, l2=tcfg.l2)
    emotion_loss = keras.losses.CategoricalCrossentropy(label_smoothing=tcfg.label_smoothing)
    trainer, reversal = model, None
    two_heads = tcfg.speaker_adversarial > 0 or tcfg.standardised_head > 0
    if tcfg.speaker_adversarial > 0 and tcfg.standardised_head > 0:
        raise ValueError("speaker-adversarial training and the standardised head do not combine; choose one")
    if two_heads:
        if train_speakers is None:
            raise ValueError("the speaker head and the standardised head need each training clip's speaker")
        targets = np.asarray(train_targets)
        emotions = targets.astype(np.float32) if targets.ndim == 2 else keras.utils.to_categorical(targets, NUM_CLASSES)
        speakers, count = speaker_targets(train_speakers)
        train_targets = np.hstack([emotions, speakers])  # one target row per clip: mixup mixes both alike
        if tcfg.speaker_adversarial > 0:  # its second output names the speaker, at full weight (the reversal scales)
            trainer, reversal = with_speaker_head(model, count)
            second_loss, second_weight = keras.losses.CategoricalCrossentropy(), 1.0
        else:  # its second output is an emotion too
            trainer = with_standardised_head(model, count, tcfg.dropout)
            second_loss, second_weight = emotion_loss, tcfg.standardised_head
    data = AugmentedClips(train_pcm, train_targets, cfg, tcfg, train_norms)
    optimizer = keras.optimizers.AdamW(learning_rate=_schedule(tcfg, len(data)), weight_decay=tcfg.weight_decay)
    if not two_heads:
        model.compile(optimizer=optimizer, loss=emotion_loss, metrics=["accuracy"])
    else:
        trainer.compile(
            optimizer=optimizer,
            loss=[emotion_loss, second_loss],
            loss_weights=[1.0, second_weight],
            metrics=[["accuracy"], ["accuracy"]],
        )
        model.compile(loss=emotion_loss, metrics=["accuracy"])  # validation only: the trainer fits it
        model.optimizer.build(model.trainable_variables)  # saved built, so model.keras loads without a mismatch warning
    validate = len(val_pcm) > 0
    if validate:
        x_val = feature_batch(val_pcm, cfg, val_norms)
        y_val = keras.utils.to_categorical(val_labels, NUM_CLASSES)
    keep = KeepBest()
    average = WeightAverage(tcfg.average_decay) if tcfg.average_decay > 0 else None
    history: dict[str, list[float]] = {}
    progress = tqdm(total=tcfg.epochs, desc=f"train {tcfg.model}", unit="epoch", disable=not show_progress)
    for epoch, (x, y) in enumerate(data.epochs(tcfg.epochs)):
        if reversal is not None:
            reversal.scale.assign(ramp(tcfg.speaker_adversarial, epoch, tcfg.epochs))
            y = (y[:, :NUM_CLASSES], y[:, NUM_CLASSES:])
        elif two_heads:  # the standardised head: the speaker rows are an input, both heads learn the emotion
            x, y = [x, y[:, NUM_CLASSES:]], (y[:, :NUM_CLASSES], y[:, :NUM_CLASSES])
        fitted = trainer.fit(
            x,
            y,
            batch_size=tcfg.batch_size,
            shuffle=False,  # the batches are already drawn from (seed, epoch)
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=0,
        )
        trained = candidate = model.get_weights()
        if average:  # validate the average, then train on from the epoch's own weights
            candidate = average.update(trained)
        for k, vals in fitted.history.items():
            history.setdefault(_history_key(k), []).extend(float(v) for v in vals)
        progress.update(1)
        if not validate:
            progress.set_postfix(loss=f"{history['loss'][-1]:.3f}", acc=f"{history['accuracy'][-1]:.3f}")
            continue
        if average:
            model.set_weights(candidate)
        val_loss, val_accuracy = model.evaluate(x_val, y_val, batch_size=tcfg.batch_size, verbose=0)
        if average:
            model.set_weights(trained)
        keep.see(epoch, val_accuracy, val_loss, candidate)
        history.setdefault("val_loss", []).append(float(val_loss))
        history.setdefault("val_accuracy", []).append(float(val_accuracy))
        progress.set_postfix(
            loss=f"{history['loss'][-1]:.3f}",
            val_acc=f"{val_accuracy:.3f}",
            best=f"{keep.best_key[0]:.3f}@{keep.best_epoch + 1}",
        )
    progress.close()
    if not validate:
        model.set_weights(candidate)
        return model, history, tcfg.epochs - 1
    model.set_weights(keep.best_weights)
    return model, history, keep.best_epoch


def _history_key(key: str) -> str:
    """The emotion output's figures under the plain names (``accuracy``), the speaker head's as ``speaker_*``."""
    return {"classifier_accuracy": "accuracy", "classifier_loss": "emotion_loss"}.get(key, key)
