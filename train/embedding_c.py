"""ctypes binding of the board's embedding stage (``firmware/app/ser_embedding_norm.c``), so the host makes the same bits.

Compiled into the same host library as the front end (``train.frontend_c.library``).
``EmbeddingStream`` does for one voice what the board does after Invoke: the statistics of the clips
heard before (the prior before ``prior_clips``), the classifier, then the clip's embedding summed.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from train.embedding_norm import Head
from train.frontend_c import library


class _Sums(ctypes.Structure):
    """Mirror of ``ser_en_sums``."""

    _fields_ = [("dim", ctypes.c_uint16), ("clips", ctypes.c_uint32), ("sum", ctypes.c_void_p), ("squares", ctypes.c_void_p)]


class _Head(ctypes.Structure):
    """Mirror of ``ser_en_head``."""

    _fields_ = [
        ("dim", ctypes.c_uint16),
        ("classes", ctypes.c_uint16),
        ("prior_clips", ctypes.c_uint16),
        ("unit_length", ctypes.c_uint16),
        ("weights", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("prior_mean", ctypes.c_void_p),
        ("prior_std", ctypes.c_void_p),
    ]


MAX_DIM = 255  # SER_EN_MAX_DIM
MAX_CLIPS = 100_000  # SER_EN_MAX_CLIPS
SCORE_SCALE = 16.0  # SER_EN_SCORE_SCALE: a RESULT's int8 scores are the logits in steps of 1/16


@dataclass(frozen=True)
class EmbedState:
    """What a board's embedding statistics hold (PROTOCOL.md 15): clips heard, the int32 sums."""

    clips: int
    sum: tuple[int, ...]
    squares: tuple[int, ...]


class EmbeddingStream:
    """One voice's embedding statistics and the classifier, in the board's arithmetic (``ser_en_*``).

    ``head`` is in int8 steps (``Head.in_int8_steps``). ``run`` classifies one int8 embedding and then
    sums it; ``reset``, ``state`` and ``load`` are the EMBED command's (PROTOCOL.md 15).
    """

    def __init__(self, head: Head) -> None:
        if not 0 < head.dim <= MAX_DIM:
            raise ValueError(f"an embedding of {head.dim} values does not fit the board's stage (at most {MAX_DIM})")
        self._lib = library()
        self.head = head
        self.sum, self.squares = np.zeros(head.dim, np.int32), np.zeros(head.dim, np.int32)
        self._sums = _Sums()
        self._arrays = [np.ascontiguousarray(a, np.float32) for a in (head.weights, head.bias, head.prior_mean, head.prior_std)]
        self._head = _Head(
            head.dim, head.classes, head.prior_clips, int(head.unit_length), *(a.ctypes.data for a in self._arrays)
        )
        self._check(self._lib.ser_en_init(self._address, head.dim, self.sum.ctypes.data, self.squares.ctypes.data))
        self.mean, self.std = np.zeros(head.dim, np.float32), np.zeros(head.dim, np.float32)
        self.logits = np.zeros(head.classes, np.float32)  # of the last clip

    @property
    def _address(self) -> int:
        return ctypes.addressof(self._sums)

    @staticmethod
    def _check(rc: int) -> None:
        if rc < 0:
            raise ValueError(f"embedding stage: {'sums full' if rc == -2 else 'bad argument'} ({rc})")

    @property
    def clips(self) -> int:
        return int(self._sums.clips)

    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """The statistics the next clip gets (copies)."""
        self._check(
            self._lib.ser_en_stats(self._address, ctypes.addressof(self._head), self.mean.ctypes.data, self.std.ctypes.data)
        )
        return self.mean.copy(), self.std.copy()

    def run(self, embedding: np.ndarray) -> np.ndarray:
        """The int8 scores of one clip's int8 embedding; the embedding then joins the voice's sums (frozen once full)."""
        e = np.ascontiguousarray(np.asarray(embedding).reshape(-1), np.int8)
        if e.size != self.head.dim:
            raise ValueError(f"embedding of {e.size} values, the head reads {self.head.dim}")
        self.current()
        scores = np.zeros(self.head.classes, np.int8)
        best = self._lib.ser_en_classify(
            ctypes.addressof(self._head), self.mean.ctypes.data, self.std.ctypes.data, e.ctypes.data,
            self.logits.ctypes.data, scores.ctypes.data,
        )  # fmt: skip
        self._check(best)
        self._lib.ser_en_add(self._address, e.ctypes.data)  # full: frozen, as on the board
        return scores

    def reset(self) -> None:
        self._lib.ser_en_clear(self._address)

    def state(self) -> EmbedState:
        return EmbedState(self.clips, tuple(map(int, self.sum)), tuple(map(int, self.squares)))

    def load(self, state: EmbedState) -> None:
        """Take over a state (a board's, or a saved one); refused if no set of embeddings has these sums."""
        if len(state.sum) != self.head.dim or len(state.squares) != self.head.dim:
            raise ValueError(f"a state of {len(state.sum)} values does not fit an embedding of {self.head.dim}")
        if not all(-(2**31) <= v < 2**31 for v in (*state.sum, *state.squares)) or not 0 <= state.clips < 2**32:
            raise ValueError("these sums do not fit the board's int32 sums")
        kept = self.state()
        self.sum[:], self.squares[:], self._sums.clips = state.sum, state.squares, state.clips
        if not self._lib.ser_en_plausible(self._address):
            self.sum[:], self.squares[:], self._sums.clips = kept.sum, kept.squares, kept.clips
            raise ValueError("these sums cannot come from real embeddings (beyond +-128 a clip, or a negative spread)")


def board_scores(embeddings: np.ndarray, speakers: list[str], head: Head) -> tuple[np.ndarray, np.ndarray]:
    """int8 scores and the class of every clip as a board gives them, each voice heard from a fresh state, its
    clips in board order (``train.embedding_norm.voices_in_order``)."""
    from train.embedding_norm import voices_in_order

    scores = np.zeros((len(embeddings), head.classes), np.int8)
    classes = np.zeros(len(embeddings), np.int64)
    for order in voices_in_order(speakers):
        stream = EmbeddingStream(head)
        for i in order:
            scores[i] = stream.run(embeddings[i])
            classes[i] = int(np.argmax(stream.logits))  # the first largest, as the board's
    return scores, classes
