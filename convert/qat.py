"""Quantization-aware fine-tuning (QAT) of a trained run, before the normal int8 conversion.

Why: post-training quantization can cost a model more than a point of accuracy (AudioResNet loses
several, in its inner activations). tensorflow-model-optimization does not support Keras 3, so this
is a small explicit version of the same idea:

- batch norm is folded into the convolutions (as the converter folds it),
- weights are fake-quantized per output channel, symmetric, 8 bits, narrow range (the converter's scheme),
- every tensor the int8 model stores (input, each fused conv/ReLU output, ADD, MEAN and the logits)
  is fake-quantized on the int8 grid the converter gives it: after every epoch the current weights are
  converted with the run's calibration clips and each tensor's scale and zero point read back.

The fine-tune sees the run's training clips only (augmented as in training) and keeps the epoch
(0 = not fine-tuned) with the lowest validation loss of the fake-quantized model; test clips are
never read. The result is a plain float Keras model (fake quantization removed, batch norm folded)
that goes through the same post-training quantization as any run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from tqdm.auto import tqdm

from convert.quantize import calibration_inputs, quantize_int8
from convert.tflite_file import stored_tensors
from train.augment import AugmentConfig
from train.corpus import read_wav
from train.fit import AugmentedClips, TrainConfig, feature_batch, make_deterministic
from train.frontend import FrontEndConfig
from train.labels import NUM_CLASSES, label_index
from train.splits import clips_with_role, decision_clips, load_manifest

QAT_MODEL_FILE = "model_qat.keras"


@dataclass(frozen=True)
class QatConfig:
    epochs: int = 10
    learning_rate: float = 1e-4  # peak of a cosine decay; the run's own schedule ended near 3e-5
    batch_size: int | None = None  # None: the run's batch size


class FakeQuant(layers.Layer):
    """Asymmetric 8-bit fake quantization of an activation at a fixed [min, max] (set by ``calibrate``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lo = self.add_weight(shape=(), initializer="zeros", trainable=False, name="min")
        self.hi = self.add_weight(shape=(), initializer="ones", trainable=False, name="max")

    def call(self, x):
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, self.hi, num_bits=8, narrow_range=False)


def fake_quant_weights(kernel: tf.Tensor) -> tf.Tensor:
    """Per-output-channel (last axis) symmetric int8 with scale max|w| / 127, as the converter quantizes weights."""
    reduce = list(range(len(kernel.shape) - 1))
    m = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=reduce), 1e-12))
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -m, m, num_bits=8, narrow_range=True)


class QConv2D(layers.Conv2D):
    """Conv2D that convolves with its fake-quantized kernel."""

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, fake_quant_weights(kernel))


class QDense(layers.Dense):
    """Linear Dense layer that multiplies by its fake-quantized kernel."""

    def call(self, inputs, training=None):
        x = tf.matmul(inputs, fake_quant_weights(self.kernel))
        return x + self.bias if self.bias is not None else x


def _inputs(layer: layers.Layer) -> list:
    return layer.input if isinstance(layer.input, list) else [layer.input]


def _fold(conv: layers.Conv2D, bn: layers.BatchNormalization) -> list[np.ndarray]:
    """Kernel and bias of ``conv`` followed by ``bn`` in inference mode, in float32 (the converter's folding)."""
    kernel = conv.get_weights()[0].astype(np.float32)
    bias = conv.get_weights()[1].astype(np.float32) if conv.use_bias else np.zeros(kernel.shape[-1], np.float32)
    gamma, beta, mean, var = (w.astype(np.float32) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + np.float32(bn.epsilon))
    return [kernel * scale, (bias - mean) * scale + beta]


def rebuild(model: keras.Model, quantize: bool) -> keras.Model:
    """``model`` with batch norm folded and a separate softmax; with ``quantize``, fake-quantized as above.

    Both forms name their layers alike (fake-quant layers are ``<producer>_fq``), so weights move between
    them by name. Only the layer types of ``train.models`` are supported; anything else is refused by name.
    """
    consumers: dict[int, list[layers.Layer]] = {}
    for layer in model.layers:
        for t in _inputs(layer) if not isinstance(layer, layers.InputLayer) else []:
            consumers.setdefault(id(t), []).append(layer)

    def only_consumer(layer: layers.Layer) -> layers.Layer | None:
        users = consumers.get(id(layer.output), [])
        return users[0] if len(users) == 1 else None

    def stored(layer: layers.Layer, t, producer: str | None = None):
        """Fake-quantize a tensor the int8 model stores: any op output not fused into a following ReLU.

        ``producer``: the rebuilt layer that computes it, when it is not ``layer`` (a folded batch norm).
        """
        if not quantize or isinstance(only_consumer(layer), layers.ReLU):
            return t
        return FakeQuant(name=f"{producer or layer.name}_fq")(t)

    new: dict[int, object] = {}
    folded: dict[str, list[np.ndarray]] = {}  # layer name -> its weights in the rebuilt model
    folded_bns: dict[str, str] = {}  # batch norm name -> the convolution it is folded into
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            t = keras.Input(shape=layer.output.shape[1:], name=layer.name)
            inputs = t
            new[id(layer.output)] = FakeQuant(name=f"{layer.name}_fq")(t) if quantize else t
            continue
        args = [new[id(t)] for t in _inputs(layer)]
        config = layer.get_config()
        if isinstance(layer, layers.Conv2D) and type(layer) is layers.Conv2D:
            if config["activation"] != "linear":
                raise ValueError(f"layer {layer.name}: QAT supports linear Conv2D (activation as a ReLU layer)")
            bn = only_consumer(layer)
            if isinstance(bn, layers.BatchNormalization):
                folded[layer.name] = _fold(layer, bn)
                folded_bns[bn.name] = layer.name
            else:
                zeros = np.zeros(layer.filters, np.float32)
                folded[layer.name] = layer.get_weights() if layer.use_bias else [*layer.get_weights(), zeros]
            config |= {"use_bias": True, "kernel_regularizer": None, "name": layer.name}
            conv = (QConv2D if quantize else layers.Conv2D).from_config(config)
            t = conv(args[0])
            new[id(layer.output)] = t if isinstance(bn, layers.BatchNormalization) else stored(layer, t)
        elif isinstance(layer, layers.BatchNormalization):
            if layer.name not in folded_bns:
                raise ValueError(f"layer {layer.name}: QAT folds batch norm only right after a Conv2D it alone reads")
            new[id(layer.output)] = stored(layer, args[0], producer=folded_bns[layer.name])
        elif isinstance(layer, layers.ReLU):
            if layer.max_value is not None or float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
                raise ValueError(f"layer {layer.name}: QAT supports plain ReLU only")
            new[id(layer.output)] = stored(layer, layers.ReLU(name=layer.name)(args[0]))
        elif isinstance(layer, layers.Add):
            new[id(layer.output)] = stored(layer, layers.Add(name=layer.name)(args))
        elif isinstance(layer, layers.GlobalAveragePooling2D):
            new[id(layer.output)] = stored(layer, layers.GlobalAveragePooling2D.from_config(config)(args[0]))
        elif isinstance(layer, layers.MaxPooling2D):  # the int8 op keeps its input's scale: nothing to add
            new[id(layer.output)] = layers.MaxPooling2D.from_config(config)(args[0])
        elif isinstance(layer, layers.Dropout):
            new[id(layer.output)] = layers.Dropout.from_config(config)(args[0])
        elif isinstance(layer, layers.Dense) and type(layer) is layers.Dense:
            if config["activation"] not in ("softmax", "linear"):
                raise ValueError(f"layer {layer.name}: QAT supports Dense with softmax or no activation")
            dense_config = config | {"activation": "linear", "kernel_regularizer": None, "name": layer.name}
            dense = (QDense if quantize else layers.Dense).from_config(dense_config)
            t = dense(args[0])
            folded[layer.name] = layer.get_weights()
            if quantize:
                t = FakeQuant(name=f"{layer.name}_fq")(t)
            if config["activation"] == "softmax":
                t = layers.Softmax(name=f"{layer.name}_softmax")(t)
            new[id(layer.output)] = t
        else:
            raise ValueError(f"layer {layer.name} ({type(layer).__name__}) is not supported by QAT")
    rebuilt = keras.Model(inputs, new[id(model.outputs[0])], name=model.name)
    for name, weights in folded.items():
        rebuilt.get_layer(name).set_weights(weights)
    return rebuilt


def strip(qat_model: keras.Model, original: keras.Model) -> keras.Model:
    """The plain float model (no fake quantization) with the fine-tuned weights of ``qat_model``."""
    plain = rebuild(original, quantize=False)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(qat_model.get_layer(layer.name).get_weights())
    return plain


def fake_quant_layers(qat_model: keras.Model) -> list[FakeQuant]:
    return [layer for layer in qat_model.layers if isinstance(layer, FakeQuant)]


def _producer(tensor_name: str) -> str:
    """The Keras layer in a converted tensor's name: ``model_1/conv1_relu_1/Relu;...`` -> ``conv1_relu_1``."""
    parts = tensor_name.split(";")[0].split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def converter_ranges(plain: keras.Model, samples: list[np.ndarray]) -> dict[str, tuple[float, int]]:
    """Scale and zero point the converter gives each stored tensor of ``plain``, by the name of the layer computing it.

    Read from a real conversion with the same calibration clips, so QAT trains at exactly the int8 grid
    of the final model (the converter does not always use a tensor's own min/max: it widened the range
    of AudioResNet's last convolution to the range of the residual ADD it feeds).
    """
    specs = stored_tensors(quantize_int8(plain, samples))
    ranges = {plain.layers[0].name: (specs[0].scale, specs[0].zero_point)}
    names = [layer.name for layer in plain.layers]
    for spec in specs[1:]:
        found = _producer(spec.name)
        matches = [n for n in names if found == n or re.fullmatch(rf"{re.escape(n)}_\d+", found)]
        if len(matches) == 1:
            ranges[matches[0]] = (spec.scale, spec.zero_point)
    return ranges


def calibrate(qat_model: keras.Model, original: keras.Model, samples: list[np.ndarray]) -> dict[str, tuple[float, int]]:
    """Set every fake-quant range to the int8 grid the converter gives its tensor for the current weights.

    Returns producer layer name -> (scale, zero point).
    """
    ranges = converter_ranges(strip(qat_model, original), samples)
    for fq in fake_quant_layers(qat_model):
        producer = fq.name.removesuffix("_fq")
        if producer not in ranges:
            raise ValueError(f"no int8 tensor for layer {producer} in the converted model: cannot place its fake quantization")
        scale, zero_point = ranges[producer]
        fq.lo.assign((-128 - zero_point) * scale)
        fq.hi.assign((127 - zero_point) * scale)
    return {fq.name.removesuffix("_fq"): ranges[fq.name.removesuffix("_fq")] for fq in fake_quant_layers(qat_model)}


def train_config(run: Path) -> TrainConfig:
    """The run's training configuration (``train_config.json``), for its augmentation, batch size and loss."""
    raw = json.loads((run / "train_config.json").read_text())
    aug = raw.pop("augment")
    if aug is not None:
        aug = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
    raw["teachers"] = tuple(raw.get("teachers", ()))
    return TrainConfig(**raw, augment=aug)


def fine_tune(run: Path, root: Path, qcfg: QatConfig = QatConfig(), show_progress: bool = True) -> tuple[keras.Model, dict]:
    """QAT of the run's model on its training clips; the epoch kept has the lowest validation loss.

    A refit run has no validation part: a fixed sample of its training clips takes its place
    (``decision_clips``), so the kept epoch tracks quantization damage rather than generalisation.

    Loss, not accuracy: on a validation part of about a hundred clips accuracy moves in steps of a
    point and rarely sees what int8 costs; the loss of the fake-quantized model does.

    Returns the plain float model to quantize and a history (validation accuracy and loss per epoch,
    the epoch kept, the final ranges).
    """
    tcfg = train_config(run)
    cfg = FrontEndConfig.load(run / "frontend.json")
    manifest = load_manifest(run / "manifest.json")
    train, (val, val_role) = clips_with_role(manifest, "train"), decision_clips(manifest)
    make_deterministic(tcfg.seed)
    original = keras.models.load_model(run / "model.keras")
    model = rebuild(original, quantize=True)
    calibration = calibration_inputs(run, root)

    batch = qcfg.batch_size or tcfg.batch_size
    data = AugmentedClips(
        [read_wav(root / c["path"]) for c in train],
        [label_index(c["emotion"]) for c in train],
        cfg,
        replace(tcfg, batch_size=batch),
    )
    x_val = feature_batch([read_wav(root / c["path"]) for c in val], cfg)
    y_val = keras.utils.to_categorical([label_index(c["emotion"]) for c in val], NUM_CLASSES)
    steps = max(1, qcfg.epochs * len(data))
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(qcfg.learning_rate, steps, alpha=0.0)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=tcfg.label_smoothing),
        metrics=["accuracy"],
    )

    def score() -> tuple[float, float]:
        calibrate(model, original, calibration)
        loss, acc = model.evaluate(x_val, y_val, verbose=0, batch_size=64)
        return float(acc), float(loss)

    acc, loss = score()
    history = {"val_accuracy": [acc], "val_loss": [loss]}
    best = ((-loss, acc), 0, model.get_weights())
    progress = tqdm(total=qcfg.epochs, desc="QAT fine-tune", unit="epoch", disable=not show_progress)
    for epoch, (x, y) in enumerate(data.epochs(qcfg.epochs), 1):
        model.fit(x, y, batch_size=batch, shuffle=False, epochs=1, verbose=0)
        acc, loss = score()
        history["val_accuracy"].append(acc)
        history["val_loss"].append(loss)
        if (-loss, acc) > best[0]:
            best = ((-loss, acc), epoch, model.get_weights())
        progress.update(1)
        progress.set_postfix(val_loss=f"{loss:.4f}", val_acc=f"{acc:.3f}", best=f"{-best[0][0]:.4f}@{best[1]}")
    progress.close()
    model.set_weights(best[2])
    ranges = calibrate(model, original, calibration)
    history |= {
        "best_epoch": best[1],
        "epochs": qcfg.epochs,
        "learning_rate": qcfg.learning_rate,
        "batch_size": batch,
        "train_clips": len(train),
        "val_clips": len(val),
        "val_role": val_role,
        "ranges": ranges,
    }
    return strip(model, original), history
