"""What the board must answer for a clip: the project's front end and TFLM's own interpreter on the host.

The board runs the same C front end and the same TFLM kernels' arithmetic, so its int8 scores should
equal these bit for bit; the evaluation scores the board against this reference clip by clip.
"""

from __future__ import annotations

import numpy as np

from convert.interpreters import TflmRunner
from convert.tflite_file import ModelFileError, io_specs, model_frontend, model_head, read_metadata
from host.protocol import NORM_MODES, EmbedState, NormState
from train.embedding_c import EmbeddingStream
from train.embedding_c import EmbedState as EmbedSums
from train.frontend import FrontEndConfig, board_samples, model_input_int8
from train.frontend_c import SPEAKER_NORM_MODES, SpeakerStream, SumsState


def audio_frontend(tflite: bytes) -> FrontEndConfig:
    """The front end a model carries in its metadata; a model without one cannot be fed audio."""
    cfg = model_frontend(tflite)
    if cfg is None:
        raise ModelFileError(
            "the model carries no front-end metadata, so it cannot be fed CASIA audio; "
            "convert it with ser-convert (which embeds the run's frontend.json)"
        )
    return cfg


def per_voice(tflite: bytes) -> bool:
    """Whether a clip's scores depend on the voice's earlier clips: per-speaker statistics of the log-mel
    (PROTOCOL.md 14) or of the embedding (15), which the board keeps voice by voice."""
    return audio_frontend(tflite).speaker_norm != "off" or model_head(tflite) is not None


def model_labels(tflite: bytes) -> tuple[str, ...]:
    meta = read_metadata(tflite) or {}
    return tuple(meta.get("labels", ()))


def to_wire(state: SumsState) -> NormState:
    """Per-speaker sums as NORM/NORM_STATE carry them (PROTOCOL.md 14)."""
    return NormState(SPEAKER_NORM_MODES[state.mode], state.clips, state.frames, state.sum, state.squares)


def from_wire(state: NormState) -> SumsState:
    return SumsState(NORM_MODES.get(state.mode, str(state.mode)), state.clips, state.frames, state.sum, state.squares)


class HostReference:
    """int8 scores of one clip's board PCM, as the board should compute them. Not thread-safe: one per thread.

    A model with per-speaker normalisation (``speaker_norm``) is stateful, as the board is: each clip
    is standardised by the statistics of the clips before it, so clips must come in the board's order;
    ``norm_state``/``load_norm`` are the board's NORM command (PROTOCOL.md 14). So is a model that ends at
    its embedding (``embedding``): the board's classifier after it standardises the embedding by the
    voice's earlier clips; ``embed_state``/``load_embed`` are the EMBED command (PROTOCOL.md 15).
    ``reset_voice`` empties both: a new voice.
    """

    def __init__(self, tflite: bytes) -> None:
        self.cfg = audio_frontend(tflite)
        self.input_spec, self.output_spec = io_specs(tflite)
        self._tflm = TflmRunner(tflite)
        self.speaker_norm = SpeakerStream(self.cfg) if self.cfg.speaker_norm != "off" else None
        head = model_head(tflite)
        self.embedding = EmbeddingStream(head) if head is not None else None
        self.last_class = -1  # the class of the last clip scored

    @property
    def stateful(self) -> bool:
        """Whether a clip's scores depend on the voice's earlier clips."""
        return self.speaker_norm is not None or self.embedding is not None

    def model_input(self, pcm: np.ndarray) -> np.ndarray:
        scale, zero_point = self.input_spec.scale, self.input_spec.zero_point
        if self.speaker_norm is not None:
            return self.speaker_norm.run(board_samples(pcm, self.cfg), scale, zero_point)
        return model_input_int8(pcm, self.cfg, scale, zero_point)

    def norm_state(self) -> NormState:
        return to_wire(self._norm().state())

    def reset_voice(self) -> None:
        if self.speaker_norm is not None:
            self.speaker_norm.reset()
        if self.embedding is not None:
            self.embedding.reset()

    def load_norm(self, state: NormState) -> None:
        self._norm().load(from_wire(state))

    def _norm(self) -> SpeakerStream:
        if self.speaker_norm is None:
            raise ValueError("this model has no per-speaker normalisation")
        return self.speaker_norm

    def embed_state(self) -> EmbedState:
        s = self._embedding().state()
        return EmbedState(s.clips, s.sum, s.squares)

    def load_embed(self, state: EmbedState) -> None:
        self._embedding().load(EmbedSums(state.clips, state.sum, state.squares))

    def _embedding(self) -> EmbeddingStream:
        if self.embedding is None:
            raise ValueError("this model does not end at an embedding with a per-speaker classifier")
        return self.embedding

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        out = self._tflm(self.model_input(pcm)).astype(np.int8)
        if self.embedding is None:
            self.last_class = int(np.argmax(out))  # the first of equal largest scores, as the board
            return out
        scores = self.embedding.run(out)
        self.last_class = int(np.argmax(self.embedding.logits))  # the classifier's largest logit, as the board
        return scores
