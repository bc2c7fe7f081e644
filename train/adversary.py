"""Speaker-adversarial training: a speaker head on the pooled embedding, trained through a reversed gradient.

Why: on leave-one-speaker-out the model meets a voice it never heard, and whatever in the embedding
tells the training voices apart is of no use on it. A small head learns to name the training speaker
from the embedding (global average pooling's output) while the gradient it sends back into the
convolutions is reversed and scaled (Ganin and Lempitsky 2015): the convolutions learn to hide the
speaker. The head exists only in training; the emotion model saved, converted and run on the board
is unchanged, layer for layer.

The reversal's scale ramps from 0 to its weight over training, ``2 / (1 + exp(-10 p)) - 1`` at the
fraction ``p`` of the epochs done (the paper's schedule), so the emotion classifier forms first.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from train.embedding_norm import EMBEDDING_LAYER

SPEAKER_HEAD = "speaker"
HIDDEN_UNITS = 64


class GradientReversal(layers.Layer):
    """Identity forward; backward, the gradient times ``-scale`` (a variable, set each epoch by ``ramp``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = self.add_weight(shape=(), initializer="zeros", trainable=False, name="scale")

    def call(self, x):
        scale = tf.convert_to_tensor(self.scale)

        @tf.custom_gradient
        def reverse(v):
            return tf.identity(v), lambda g: -scale * g

        return reverse(x)


def ramp(weight: float, epoch: int, epochs: int) -> float:
    """The reversal's scale during ``epoch`` (0-based) of ``epochs``: 0 at the start, near ``weight`` at the end."""
    done = epoch / max(1, epochs)
    return weight * (2.0 / (1.0 + math.exp(-10.0 * done)) - 1.0)


def with_speaker_head(model: keras.Model, speakers: int) -> tuple[keras.Model, GradientReversal]:
    """A training model with two outputs, the emotion model's (``classifier``) and the speaker head's.

    Shares every layer with ``model``: training it trains ``model``, which stays the one saved.
    """
    reversed_embedding = GradientReversal(name="reverse_gradient")
    x = reversed_embedding(model.get_layer(EMBEDDING_LAYER).output)
    x = layers.Dense(HIDDEN_UNITS, activation="relu", name="speaker_hidden")(x)
    speaker = layers.Dense(speakers, activation="softmax", name=SPEAKER_HEAD)(x)
    return keras.Model(model.input, [model.output, speaker], name=f"{model.name}_speaker_adversarial"), reversed_embedding


def speaker_targets(speakers: np.ndarray) -> tuple[np.ndarray, int]:
    """One-hot targets of each training clip's speaker (any labels; sorted), and the number of speakers."""
    names, index = np.unique(np.asarray(speakers), return_inverse=True)
    return keras.utils.to_categorical(index, len(names)).astype(np.float32), len(names)
