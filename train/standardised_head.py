"""Training with the per-speaker standardisation in the loop: a second emotion head reads the pooled
embedding standardised by the clip's speaker's clips in the same batch.

Why: ``--embedding-norm`` standardises each voice's pooled embedding by that voice's own statistics
and fits a classifier on it after training, but the convolutions were trained for the network's own
classifier, which reads the raw embedding: nothing asked them to put emotion in what varies within
a voice. This head asks it. For each batch, every speaker's clips in it give a mean and a standard
deviation per embedding channel (a speaker-wise batch norm without learnt scale), the head classifies
the standardised embedding, and its loss, times a weight, joins the network's own. The head exists
only in training: the saved model is the plain one, and ``--embedding-norm`` fits the deployed
classifier afterwards as before.

A speaker with a single clip in a batch has no spread: its standardised embedding is zero, and the
head learns nothing from that clip. Mixed clips (``--mixup``) carry mixed speaker rows, which weight
the statistics.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from train.embedding_norm import EMBEDDING_LAYER
from train.labels import NUM_CLASSES

HEAD = "standardised_classifier"
EPSILON = 1e-3  # added to each speaker's variance: a channel that never moves within a voice stays near zero


class SpeakerStandardise(layers.Layer):
    """Each row of ``embedding`` minus its speaker's mean in the batch, over its speaker's standard deviation.

    ``speakers``: one row per clip, the clip's share of each speaker (one-hot for a plain clip).
    """

    def call(self, embedding, speakers):
        count = tf.maximum(tf.reduce_sum(speakers, axis=0), 1e-6)[:, None]  # (speakers, 1)
        mean = tf.matmul(speakers, embedding, transpose_a=True) / count  # (speakers, dim)
        centred = embedding - tf.matmul(speakers, mean)
        variance = tf.matmul(speakers, tf.square(centred), transpose_a=True) / count
        return centred * tf.math.rsqrt(tf.matmul(speakers, variance) + EPSILON)


def with_standardised_head(model: keras.Model, speakers: int, dropout: float) -> keras.Model:
    """A training model: inputs (features, speaker rows), outputs the emotion model's (``classifier``) and the
    standardised head's. Shares every layer with ``model``: training it trains ``model``, which stays the one saved."""
    speaker_rows = keras.Input(shape=(speakers,), name="speaker_rows")
    x = SpeakerStandardise(name="speaker_standardise")(model.get_layer(EMBEDDING_LAYER).output, speaker_rows)
    if dropout:
        x = layers.Dropout(dropout, name="standardised_dropout")(x)
    head = layers.Dense(NUM_CLASSES, activation="softmax", name=HEAD)(x)
    return keras.Model([model.input, speaker_rows], [model.output, head], name=f"{model.name}_standardised_head")
