"""The paper's two lightweight models and the ResNet18 baselines, built from TFLM/CMSIS-NN int8 ops only.

Every model is Conv2D + BatchNorm (folded at conversion) + ReLU + ADD + global average pooling
+ Dense. The waveform models run 1-D convolution as Conv2D with a (1, k) kernel on an
(1, samples, 1) input: Conv1D would lower to EXPAND_DIMS/RESHAPE pairs that TFLM cannot run in
place and that cost arena.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from train.labels import NUM_CLASSES


@dataclass(frozen=True)
class ConvSpec:
    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)


def _conv_bn_relu(x: keras.KerasTensor, spec: ConvSpec, name: str, l2: float, relu: bool = True):
    x = layers.Conv2D(
        spec.channels,
        spec.kernel,
        strides=spec.stride,
        dilation_rate=spec.dilation,
        padding="same",
        use_bias=False,
        kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _head(x: keras.KerasTensor, dropout: float, l2: float):
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(
        NUM_CLASSES,
        activation="softmax",
        kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
        name="classifier",
    )(x)


def _four_conv_resnet(name: str, input_shape: tuple[int, ...], specs: list[ConvSpec], dropout: float, l2: float) -> keras.Model:
    """conv1..conv3 downsample; conv4 keeps the shape and adds conv3's output back (the residual)."""
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for i, spec in enumerate(specs[:3], 1):
        x = _conv_bn_relu(x, spec, f"conv{i}", l2)
    shortcut = x
    y = _conv_bn_relu(x, specs[3], "conv4", l2, relu=False)
    x = layers.ReLU(name="res_relu")(layers.Add(name="res_add")([y, shortcut]))
    return keras.Model(inputs, _head(x, dropout, l2), name=name)


def audio_resnet(input_shape: tuple[int, ...], dropout: float = 0.2, l2: float = 0.0) -> keras.Model:
    """AudioResNet: raw 16 kHz waveform, (1, k) convolutions, ~0.13 M parameters.

    conv4 is dilated by 4: each output then sees 556 ms of sound instead of 172 ms, at no cost in
    parameters, MACs or arena (and about 1 % more board instructions in that layer). It raised
    10-fold validation accuracy (issue 3); prosody spans longer than a syllable.
    """
    specs = [
        ConvSpec(24, (1, 64), (1, 16)),
        ConvSpec(48, (1, 9), (1, 4)),
        ConvSpec(96, (1, 9), (1, 4)),
        ConvSpec(96, (1, 9), (1, 1), dilation=(1, 4)),
    ]
    return _four_conv_resnet("audio_resnet", input_shape, specs, dropout, l2)


def spectrogram_resnet(input_shape: tuple[int, ...], dropout: float = 0.2, l2: float = 0.0) -> keras.Model:
    """SpectrogramResNet: log-mel (mels, frames, 1), 3x3 convolutions, ~0.39 M parameters."""
    specs = [
        ConvSpec(24, (3, 3), (2, 2)),
        ConvSpec(64, (3, 3), (2, 2)),
        ConvSpec(168, (3, 3), (2, 4)),
        ConvSpec(168, (3, 3), (1, 1)),
    ]
    return _four_conv_resnet("spectrogram_resnet", input_shape, specs, dropout, l2)


def _resnet18(name: str, input_shape: tuple[int, ...], one_d: bool, dropout: float, l2: float) -> keras.Model:
    """Standard ResNet18 (BasicBlocks 2-2-2-2, 64..512 channels); 1-D variant uses (1, 9) kernels."""
    k = (1, 9) if one_d else (3, 3)
    s2 = (1, 2) if one_d else (2, 2)
    inputs = keras.Input(shape=input_shape, name="input")
    stem = ConvSpec(64, (1, 49) if one_d else (7, 7), (1, 4) if one_d else (2, 2))
    x = _conv_bn_relu(inputs, stem, "stem", l2)
    x = layers.MaxPooling2D((1, 3) if one_d else (3, 3), strides=s2, padding="same", name="stem_pool")(x)
    for stage, channels in enumerate((64, 128, 256, 512), 1):
        for block in range(2):
            stride = s2 if (block == 0 and stage > 1) else (1, 1)
            prefix = f"s{stage}b{block}"
            y = _conv_bn_relu(x, ConvSpec(channels, k, stride), f"{prefix}a", l2)
            y = _conv_bn_relu(y, ConvSpec(channels, k, (1, 1)), f"{prefix}b", l2, relu=False)
            if stride != (1, 1) or x.shape[-1] != channels:
                x = _conv_bn_relu(x, ConvSpec(channels, (1, 1), stride), f"{prefix}_proj", l2, relu=False)
            x = layers.ReLU(name=f"{prefix}_out")(layers.Add(name=f"{prefix}_add")([x, y]))
    return keras.Model(inputs, _head(x, dropout, l2), name=name)


def resnet18_1d(input_shape: tuple[int, ...], dropout: float = 0.2, l2: float = 0.0) -> keras.Model:
    return _resnet18("resnet18_1d", input_shape, True, dropout, l2)


def resnet18_2d(input_shape: tuple[int, ...], dropout: float = 0.2, l2: float = 0.0) -> keras.Model:
    return _resnet18("resnet18_2d", input_shape, False, dropout, l2)


BUILDERS = {
    "audio_resnet": audio_resnet,
    "spectrogram_resnet": spectrogram_resnet,
    "resnet18_1d": resnet18_1d,
    "resnet18_2d": resnet18_2d,
}


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one inference: convolutions and dense layers (what dominates on the MCU)."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            _, oh, ow, oc = layer.output.shape
            macs += oh * ow * oc * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)
